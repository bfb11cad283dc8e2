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


def test_jobs_are_listed_a_page_at_a_time_by_token(tmp_path):
    import pytest

    from alignmesh.coordinator import convert
    from alignmesh.protos.coordinator.v1 import coordinator_pb2
    from alignmesh.services.common.errors import InvalidArgument

    store = JobStore(tmp_path / "jobs.db")
    t0 = 1_000_000.0
    for i in range(250):  # two jobs share each timestamp: ties are broken by id
        store.create(JobRecord(f"j{i:03d}", "x", "cancelled" if i % 3 else "succeeded", "", t0 + i // 2))
    seen, token, pages = [], "", 0
    while True:
        size, after, state = convert.list_request_from_proto(
            coordinator_pb2.ListJobsRequest(page_size=100, page_token=token))
        page = store.page(size + 1, after, state)
        seen += [r.id for r in page[:size]]
        pages += 1
        token = convert.page_token(page[size - 1]) if len(page) > size else ""
        if not token:
            break
    assert pages == 3 and seen == [f"j{i:03d}" for i in range(250)]  # each once, oldest first
    assert [r.id for r in store.page(5, None, "succeeded")] == ["j000", "j003", "j006", "j009", "j012"]
    assert store.counts() == {"succeeded": 84, "cancelled": 166}
    for bad, field in ((coordinator_pb2.ListJobsRequest(page_token="%%%"), "page_token"),
                       (coordinator_pb2.ListJobsRequest(page_size=-1), "page_size"),
                       (coordinator_pb2.ListJobsRequest(state="done"), "state")):
        with pytest.raises(InvalidArgument, match=field):
            convert.list_request_from_proto(bad)
    assert convert.list_request_from_proto(coordinator_pb2.ListJobsRequest(page_size=10 ** 6))[0] == 1000
