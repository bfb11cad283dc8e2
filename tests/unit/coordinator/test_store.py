import time

from alignmesh.coordinator.store import JobRecord, JobStore


def test_jobs_and_events_persist_across_reopen(tmp_path):
    db = tmp_path / "jobs.db"
    store = JobStore(db)
    store.create(JobRecord("j1", "demo", "queued", "algorithm: grpo\n", time.time(), run_dir="/r/j1"))
    store.append_event("j1", "state", {"state": "running"})
    store.append_event("j1", "step", {"step": 1, "metrics": {"reward_mean": 0.5}})
    store.update("j1", state="running", step=1, metrics={"reward_mean": 0.5})
    store.close()
    again = JobStore(db)
    rec = again.get("j1")
    assert (rec.state, rec.step, rec.metrics, rec.run_dir) == ("running", 1, {"reward_mean": 0.5}, "/r/j1")
    events = again.events("j1")
    assert [e.seq for e in events] == [1, 2] and events[1].payload["metrics"]["reward_mean"] == 0.5
    assert [e.seq for e in again.events("j1", after_seq=1)] == [2]
    assert again.get("nope") is None
    mode = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
