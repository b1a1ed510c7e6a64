"""The run store: written, listed, read back, deleted; concurrent writers lose nothing."""

from __future__ import annotations

import threading

from merging.store.runs import RunStore


def test_add_list_get_delete(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    first = store.add({"method": "ties"}, {"average": {"merged": 0.7}}, device="cpu", seconds=1.5)
    second = store.add({"method": "task_arithmetic"}, {"average": {"merged": 0.6}}, kind="sweep")
    assert [r.id for r in store.list()] == [second, first]  # newest first
    assert [r.id for r in store.list(kind="sweep")] == [second]
    record = store.get(first)
    assert record.recipe == {"method": "ties"} and record.results["average"]["merged"] == 0.7
    assert record.seconds == 1.5
    assert store.delete([first]) == 1
    assert store.get(first) is None
    # a second store object on the same file sees the same runs (another browser tab)
    assert [r.id for r in RunStore(tmp_path / "runs.sqlite").list()] == [second]


def test_concurrent_writers_keep_every_run(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path)

    def write(worker: int) -> None:
        store = RunStore(path)
        for index in range(20):
            store.add({"worker": worker, "index": index}, {})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    runs = RunStore(path).list()
    assert len(runs) == 80
    assert {(r.recipe["worker"], r.recipe["index"]) for r in runs} == {(w, i) for w in range(4) for i in range(20)}
