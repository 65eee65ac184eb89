"""The run queue file: order, edits, a nonsense file set aside, entries that cannot start (no training here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.runs import queue as q
from backend.runs import runner
from backend.runs import rundir
from backend.core.config import RunConfig
from backend.core.errors import UserError


def cfg(tmp_path: Path, name: str, model: str | None = None) -> RunConfig:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    return RunConfig.model_validate({"model": model or str(model_dir), "name": name, "data": {"path": str(data)}})


def names(ws: Path) -> list[str]:
    return [e["label"] for e in q.read_queue(ws)["entries"]]


def test_add_move_remove_and_clear_keep_the_order_in_the_workspace_file(tmp_path):
    ws = tmp_path / "ws"
    ids = [q.add_to_queue(ws, cfg(tmp_path, n))["id"] for n in ("a", "b", "c")]
    assert names(ws) == ["a", "b", "c"]
    assert json.loads((ws / "queue.json").read_text())["entries"][0]["config"]["name"] == "a"
    q.move_entry(ws, ids[2], -1)
    assert names(ws) == ["a", "c", "b"]
    q.move_entry(ws, ids[0], -5)  # already first: stays
    q.move_entry(ws, ids[0], +1)
    assert names(ws) == ["c", "a", "b"]
    q.remove_entry(ws, ids[0])
    assert names(ws) == ["c", "b"]
    with pytest.raises(UserError, match="no longer in the queue"):
        q.remove_entry(ws, ids[0])
    assert q.clear_queue(ws) == 2 and names(ws) == []


def test_a_nonsense_queue_file_is_moved_aside_with_a_sentence(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "queue.json").write_text("{this is not json")
    data = q.read_queue(ws)
    assert data["entries"] == []
    assert "could not be read" in data["notice"] and "queue.json.bad-" in data["notice"]
    aside = list(ws.glob("queue.json.bad-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{this is not json"
    q.add_to_queue(ws, cfg(tmp_path, "after"))  # the queue works again
    assert names(ws) == ["after"]
    q.dismiss_notice(ws)
    assert q.read_queue(ws)["notice"] is None


def test_a_list_instead_of_a_queue_is_moved_aside(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "queue.json").write_text("[1, 2, 3]")
    assert q.read_queue(ws)["notice"] and list(ws.glob("queue.json.bad-*"))


def test_bad_entries_are_dropped_and_the_good_ones_kept(tmp_path):
    ws = tmp_path / "ws"
    good = q.add_to_queue(ws, cfg(tmp_path, "good"))
    data = json.loads((ws / "queue.json").read_text())
    data["entries"] += ["garbage", {"id": 3}]
    (ws / "queue.json").write_text(json.dumps(data))
    after = q.read_queue(ws)
    assert [e["id"] for e in after["entries"]] == [good["id"]]
    assert "2 entries" in after["notice"]
    assert "garbage" in list(ws.glob("queue.json.bad-*"))[0].read_text()


def test_an_entry_whose_model_is_gone_fails_with_a_sentence_and_the_next_starts(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    started = []

    def fake_start(workspace, c):
        run_dir = rundir.create_run(workspace, c)
        started.append(c.name)
        return run_dir

    monkeypatch.setattr(runner, "start_run", fake_start)
    monkeypatch.setattr(runner, "find_active_runs", lambda ws: [])
    q.add_to_queue(ws, cfg(tmp_path, "gone", model=str(tmp_path / "deleted-model")))
    q.add_to_queue(ws, cfg(tmp_path, "next"))
    events = q.queue_step(ws)
    entries = q.read_queue(ws)["entries"]
    assert entries[0]["state"] == "failed" and "deleted-model" in entries[0]["error"]
    assert entries[1]["state"] == "running" and started == ["next"]
    assert [e["kind"] for e in events] == ["run_end", "run_start"]


def test_a_busy_device_keeps_the_entry_queued(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    monkeypatch.setattr(runner, "find_active_runs", lambda ws: [{"id": "by-hand", "dir": str(tmp_path / "by-hand")}])
    monkeypatch.setattr(runner, "start_run", lambda *a: pytest.fail("must not start while busy"))
    q.add_to_queue(ws, cfg(tmp_path, "waits"))
    assert q.queue_step(ws) == []
    assert q.read_queue(ws)["entries"][0]["state"] == "queued"


def test_a_running_entry_is_marked_with_its_runs_final_state_and_the_queue_end_reported(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    monkeypatch.setattr(runner, "find_active_runs", lambda ws: [])
    monkeypatch.setattr(runner, "start_run", lambda workspace, c: rundir.create_run(workspace, c))
    q.add_to_queue(ws, cfg(tmp_path, "one"))
    q.queue_step(ws)
    entry = q.read_queue(ws)["entries"][0]
    with pytest.raises(UserError, match="stop its run first"):
        q.remove_entry(ws, entry["id"])
    rundir.write_status(Path(entry["run_dir"]), state="out_of_memory", error="The GPU ran out of memory.")
    events = q.queue_step(ws)
    assert [e["kind"] for e in events] == ["run_end", "queue_end"]
    assert events[0]["state"] == "out_of_memory"
    assert events[1] == {"kind": "queue_end", "completed": 0, "not_completed": 1}
    assert q.read_queue(ws)["entries"][0]["state"] == "out_of_memory"
