"""The event-type constants (backend.runs.events) and the one flock helper (backend.core.locks)."""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from backend.core.config import RunConfig
from backend.core.locks import file_lock
from backend.runs import events, rundir


@pytest.fixture()
def run_dir(tmp_path):
    return rundir.create_run(tmp_path, RunConfig())


@pytest.mark.parametrize("bad", [{"type": "trian", "step": 1}, {"type": "Train"}, {"type": None}, {"step": 1},
                                 {"type": ["train"]}])
def test_an_unknown_or_missing_event_type_is_refused(run_dir, bad):
    with pytest.raises(ValueError, match="unknown event type"):
        rundir.append_event(run_dir, bad)
    assert not (run_dir / rundir.EVENTS_FILE).exists(), "nothing is written for a refused event"


def test_the_constants_are_the_event_types():
    names = {k: v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)}
    assert set(names.values()) == events.EVENT_TYPES and len(names) == len(events.EVENT_TYPES) == 13
    assert set(events.EVENT_SHAPES) == events.EVENT_TYPES
    for kind, shape in events.EVENT_SHAPES.items():
        assert {"type", "time"} <= set(shape.__annotations__), kind


def test_every_event_type_round_trips_through_the_events_file(run_dir):
    kinds = sorted(events.EVENT_TYPES)
    for i, kind in enumerate(kinds):
        rundir.append_event(run_dir, {"type": kind, "step": i})
    got, _ = rundir.read_events(run_dir)
    assert [(e["type"], e["step"]) for e in got] == [(k, i) for i, k in enumerate(kinds)]
    assert all(isinstance(e["time"], float) for e in got)


def test_the_on_disk_line_is_unchanged(run_dir, monkeypatch):
    monkeypatch.setattr(rundir.time, "time", lambda: 1.5)
    rundir.append_event(run_dir, {"type": events.TRAIN, "step": 3, "loss": 0.25, "lr": None})
    assert (run_dir / rundir.EVENTS_FILE).read_bytes() == \
        b'{"time": 1.5, "type": "train", "step": 3, "loss": 0.25, "lr": null}\n'
    assert json.loads((run_dir / rundir.EVENTS_FILE).read_text())["type"] == "train"


def _try_lock(path: str, shared: bool, out) -> None:
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            out.put("blocked")
        else:
            out.put("acquired")
            fcntl.flock(fh, fcntl.LOCK_UN)


def _other_process_tries(path: Path, shared: bool = False) -> str:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_try_lock, args=(str(path), shared, out))
    proc.start()
    proc.join(60)
    return out.get(timeout=5)


def test_the_lock_excludes_a_second_holder_until_released(tmp_path):
    path = tmp_path / ".x.lock"
    with file_lock(path):
        assert _other_process_tries(path) == "blocked"
        assert _other_process_tries(path, shared=True) == "blocked"
    assert _other_process_tries(path) == "acquired"
    assert path.read_bytes() == b"", "the lock file is never written into"


def test_a_shared_lock_admits_readers_but_not_a_writer(tmp_path):
    path = tmp_path / ".x.lock"
    with file_lock(path, shared=True):
        assert _other_process_tries(path, shared=True) == "acquired"
        assert _other_process_tries(path) == "blocked"


def test_a_second_holder_in_another_thread_waits(tmp_path):
    path = tmp_path / ".x.lock"
    order: list[str] = []

    def second() -> None:
        # flock locks belong to the open file, so a second open in another thread waits too.
        with file_lock(path):
            order.append("second")

    with file_lock(path):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first released")
    t.join(10)
    assert order == ["first released", "second"]


def test_parent_directories_are_made_only_when_asked(tmp_path):
    with pytest.raises(FileNotFoundError):
        with file_lock(tmp_path / "gone" / ".status.lock"):
            pass
    assert not (tmp_path / "gone").exists()
    with file_lock(tmp_path / "a" / "b" / ".l.lock", make_parents=True):
        assert (tmp_path / "a" / "b" / ".l.lock").is_file()


def test_the_four_users_lock_the_same_files_as_before(tmp_path, run_dir):
    from backend.runs import queue, runner

    ws = tmp_path / "ws2"
    for ctx, path in [(rundir._status_lock(run_dir), run_dir / ".status.lock"),
                      (runner._start_lock(ws), rundir.runs_root(ws) / ".start.lock"),
                      (queue._locked(ws), ws / ".queue.lock")]:
        with ctx:
            assert _other_process_tries(path) == "blocked"
        assert _other_process_tries(path) == "acquired"
