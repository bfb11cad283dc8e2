"""Durable writes: a directory is swapped in with no moment where it is missing; files are replaced whole."""

from __future__ import annotations

import threading

from alignmesh.services.common import durable


def test_replace_dir_never_leaves_a_moment_without_the_directory(tmp_path):
    path = tmp_path / "final"
    path.mkdir()
    (path / "state.json").write_text("0")
    missing, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if not (path / "state.json").exists():
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(1, 300):
            tmp = tmp_path / f".final.tmp-{i}"
            tmp.mkdir()
            (tmp / "state.json").write_text(str(i))
            durable.replace_dir(tmp, path)
    finally:
        stop.set()
        watcher.join()
    assert (path / "state.json").read_text() == "299"
    assert missing == []  # the exchange is one step (renameat2); a rename pair leaves gaps a watcher sees
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no old or temporary directory left


def test_write_text_replaces_whole_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "latest.json"
    for i in range(5):
        durable.write_text(target, "x" * (i + 1))
    assert target.read_text() == "xxxxx"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.json"]
