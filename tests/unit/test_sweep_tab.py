"""The sweep section and table handlers without a browser, and the studio built with them."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.runs import queue as q
from backend.runs import sweep as sw
from studio.tabs import train_sweep as ts
from tests.unit.test_sweep import fake_run


def rc(**more) -> dict:
    return RunConfig.model_validate({"name": "tiny", **more}).model_dump(mode="json")


def test_plan_lists_the_runs_or_says_why_not():
    md = ts.plan_markdown(rc(), [("train.learning_rate", "1e-4, 3e-4"), ("method.r", "8,16"), (None, "")])
    assert md.startswith("**4 runs:**") and "`lr=0.0001 r=8`" in md and "`lr=0.0003 r=16`" in md
    assert ts.plan_markdown(rc(), [(None, None)] * 3) == ""
    bad = ts.plan_markdown(rc(), [("train.learning_rate", "fast, 1e-4")])
    assert "ft-error" in bad and "train.learning_rate=fast cannot be used" in bad
    assert "have no field" in ts.plan_markdown(rc(), [(None, "1, 2")])


def test_queue_from_the_studio_checks_paths_then_queues_every_run(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    record = ts.queue_from_studio(ws, rc(), [("method.r", "4, 8"), ("train.seed", "1,2")], prune=True)
    entries = q.read_queue(ws)["entries"]
    assert len(entries) == 4 and record["prune"] == "median"
    assert [e["config"]["method"]["r"] for e in entries] == [4, 4, 8, 8]
    outside = rc(data={"path": "/etc/passwd"})
    with pytest.raises(UserError):
        ts.queue_from_studio(ws, outside, [("method.r", "4, 8")], prune=False)
    with pytest.raises(UserError, match="/etc/passwd"):  # a swept path gets the studio's path policy too
        ts.queue_from_studio(ws, rc(), [("data.path", "assets/samples/instructions.jsonl, /etc/passwd")], prune=False)
    assert len(q.read_queue(ws)["entries"]) == 4  # nothing more queued
    assert "ft-error" in ts.on_queue(ws, rc(), "method.r", "4", None, None, None, None, False)


def test_the_table_stars_the_winner_and_loads_its_settings(tmp_path):
    ws = tmp_path / "ws"
    record = ts.queue_from_studio(_ws(ws), rc(), [("method.r", "4, 8")], prune=False)
    entries = q.read_queue(ws)["entries"]
    a = fake_run(ws, "a", "completed", [(2, 0.9)], peak=2**30)
    b = fake_run(ws, "b", "completed", [(2, 0.4)])
    for e, d in zip(entries, (a, b)):
        e.update(run_dir=str(d), state="completed")
    sw.watch_queue(ws, entries)
    choices, shown, rows, note = ts.sweep_view(ws, None)
    assert shown == record["id"] and choices[0][1] == record["id"]
    assert [r[0] for r in rows] == ["", "★ winner"]
    assert rows[0][1] == "r=4" and rows[0][3] == 0.9 and rows[0][8] == "1.00 GB" and rows[1][-1] == b.name
    assert "Winner: r=8" in note
    new, said = ts.settings_of(ws, shown, None)
    assert new["name"] == "b" and "the winner" in said  # the winner's own config.yaml
    new, said = ts.settings_of(ws, shown, a.name)
    assert new["name"] == "a" and "the chosen run" in said
    with pytest.raises(UserError, match="not one of the sweep"):
        ts.settings_of(ws, shown, "someone-else")
    rc_out, msg = ts.on_load(ws, None, None)
    assert "Choose a sweep" in msg


def _ws(ws: Path) -> Path:
    ws.mkdir(parents=True, exist_ok=True)
    return ws


def test_no_winner_yet_is_a_sentence(tmp_path):
    ws = _ws(tmp_path / "ws")
    record = ts.queue_from_studio(ws, rc(), [("method.r", "4, 8")], prune=False)
    with pytest.raises(UserError, match="no winner yet"):
        ts.settings_of(ws, record["id"], None)
    assert ts.sweep_view(tmp_path / "empty", None)[3] == ts.TEXT["none"]


def test_the_studio_builds_with_the_sweep_section_and_table(tmp_path):
    from studio.app import build_app
    demo = build_app(_ws(tmp_path / "ws"))
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"sweep-section", "sweep-queue", "sweep-table", "sweep-load", "sweep-picker"} <= ids


def test_the_timer_fills_an_empty_picker_and_then_leaves_it_alone(tmp_path):
    import gradio as gr
    ws = _ws(tmp_path / "ws")
    record = ts.queue_from_studio(ws, rc(), [("method.r", "4, 8")], prune=False)
    picker, rows, _ = ts.on_tick(ws, None)
    assert picker["value"] == record["id"] and len(rows) == 2
    picker, rows, _ = ts.on_tick(ws, record["id"])
    assert isinstance(picker, type(gr.skip())) and len(rows) == 2
