from alignmesh.clients.client import Event
from alignmesh.clients.progress import progress, step_line


def test_progress_bar():
    assert progress(5, 20, width=4) == "/20 [#...]"
    assert progress(20, 20, width=4) == "/20 [####]"
    assert progress(3, 0) == ""


def test_step_line_shows_reward_throughput_and_phase_split():
    ev = Event("j", 1, 0.0, "step", stage="main", step=10,
               metrics={"reward_mean": 0.25, "completion_tokens": 500.0, "time_generate": 0.1, "time_train": 0.15})
    line = step_line(ev, total_steps=40)
    assert line.startswith("[main] step   10/40 [#####...............]  reward 0.250")
    assert "tok/s    2000" in line and "gen  100" in line and "tra  150" in line


def test_step_line_of_an_asynchronous_step_counts_wall_time_and_shows_the_lag():
    """Phases overlap when experience is collected ahead: throughput is per step of wall time, not per phase sum."""
    ev = Event("j", 1, 0.0, "step", stage="main", step=3,
               metrics={"completion_tokens": 500.0, "time_generate": 0.2, "time_train": 0.3, "time_step": 0.32,
                        "version_lag": 0.75, "version_lag_max": 1.0})
    line = step_line(ev)
    assert "tok/s    1562" in line and "lag 0.75/1" in line and line.endswith("step  320")
