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


SCRIPT = """
from alignmesh.clients.client import Event
from alignmesh.clients.progress import print_events
events = [Event("j", 1, 0.0, "state", state="running")]
events += [Event("j", 2 + s, 10.0 + s, "step", stage="main", step=s, metrics={"reward_mean": 0.1 * s})
           for s in range(1, 6)]
events += [Event("j", 9, 16.0, "eval", stage="main", step=5, metrics={"accuracy": 0.42})]
events += [Event("j", 10, 16.0, "step", stage="main", step=6, metrics={"reward_mean": 0.6})]
print_events(events, total=10)
"""


def _run(script: str, tty: bool) -> str:
    import os
    import pty
    import subprocess
    import sys

    if not tty:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(60)
    os.close(master)
    return b"".join(chunks).decode()


def test_on_a_terminal_the_bar_is_redrawn_in_place_with_eta_reward_and_accuracy():
    out = _run(SCRIPT, tty=True)
    assert "\r" in out and "ETA 4s" in out  # 1 s per step since step 1, 4 steps to go after step 6
    last = out.replace("\r\n", "\n").split("\r")[-1]
    assert "6/10" in last and "reward 0.600" in last and "accuracy 0.420" in last
    assert "eval at step 5: accuracy 0.420" in out


def test_piped_output_stays_plain_lines():
    out = _run(SCRIPT, tty=False)
    assert "\r" not in out and "\x1b" not in out
    assert len([line for line in out.splitlines() if "step" in line and "reward" in line]) == 6
