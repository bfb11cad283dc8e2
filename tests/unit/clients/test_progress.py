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
