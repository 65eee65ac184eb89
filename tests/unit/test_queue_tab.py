"""The Train tab's queue, preview, evaluation-report and notification helpers, without a browser."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from backend.runs import queue as q
from backend.runs import rundir
from backend.core.config import RunConfig, load_config
from backend.core.errors import UserError
from studio.tabs import eval_report as er
from studio.tabs import train_queue as tq


def test_preview_shows_a_command_whose_yaml_file_holds_the_full_config(tmp_path):
    rc = RunConfig(name="Night run", train={"max_steps": 7}).model_dump(mode="json")
    md, text = tq.preview_command(tmp_path, rc)
    cmd = md.split("```bash\n")[1].split("\n```")[0]
    argv = shlex.split(cmd)
    assert argv[:4] == ["ftstudio", "train", "--workspace", str(tmp_path.resolve())]
    saved = load_config(argv[4])
    assert saved.train.max_steps == 7 and saved.name == "Night run"
    assert Path(argv[4]).read_text() == text
    assert tq.preview_command(tmp_path, rc)[0] == md  # the same config, the same file


def test_preview_of_a_bad_config_is_a_sentence(tmp_path):
    md, text = tq.preview_command(tmp_path, {"train": {"learning_rate": -1}})
    assert "ft-error" in md and "learning_rate" in md and text == ""


def test_queue_rows_and_the_nonsense_notice(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "queue.json").write_text("garbage")
    rows, notice = tq.queue_rows(ws)
    assert rows == [] and "moved aside" in notice
    entry = q.add_to_queue(ws, RunConfig(name="a"))
    rows, _ = tq.queue_rows(ws)
    assert rows == [[1, "a", "queued", "", "", entry["id"]]]


def _fake_run(ws: Path, name: str) -> Path:
    return rundir.create_run(ws, RunConfig(name=name))


def test_report_view_and_eval_columns_read_eval_json(tmp_path):
    run_dir = _fake_run(tmp_path, "r")
    assert "no evaluation report yet" in er.report_view(run_dir)[0]
    assert er.eval_numbers(run_dir) == (None, None)
    (run_dir / "eval.json").write_text(json.dumps({
        "base": {"loss": 3.0, "perplexity": 20.09}, "adapter": {"loss": 1.0, "perplexity": 2.72}, "rows": 4,
        "data": "validation split",
        "samples": [{"prompt": "p", "reference": "r", "base": "b", "adapter": "a"}]}))
    md, rows = er.report_view(run_dir)
    # 4 rows are too few for a verdict: the report says so instead of claiming one.
    assert "No verdict: 4 row(s)" in md and "better" not in md.split("|")[0]
    assert "-2.0000" in md and rows == [["p", "r", "b", "a"]]
    assert er.eval_numbers(run_dir) == (1.0, -2.0)
    (run_dir / "eval.json").write_text("{broken")
    assert er.eval_numbers(run_dir) == (None, None)


def test_notifications_fire_once_when_a_run_ends_and_when_the_queue_empties(tmp_path):
    ws = tmp_path / "ws"
    old = _fake_run(ws, "old")
    rundir.write_status(old, state="completed")
    live = _fake_run(ws, "live")  # "starting", within the grace period: active
    entry = q.add_to_queue(ws, RunConfig(name="queued"))
    watch, msgs = tq.notifications({}, ws)
    assert msgs == []  # the first look only takes note
    rundir.write_status(live, state="failed", error="x")
    q.remove_entry(ws, entry["id"])
    watch, msgs = tq.notifications(watch, ws)
    assert msgs == [f"Run {live.name} failed.", "The queue has finished: 0 of 0 run(s) completed."]
    assert tq.notifications(watch, ws)[1] == []


def test_evaluating_a_run_without_an_adapter_in_a_child_process_gives_the_sentence(tmp_path):
    run_dir = _fake_run(tmp_path, "untrained")
    with pytest.raises(UserError, match="no trained adapter yet"):
        er.run_eval_process(run_dir, 2, timeout=120)


def test_the_train_tab_builds_with_the_queue_and_report(tmp_path):
    import gradio as gr

    from studio.context import StudioContext, default_run_config
    from studio.tabs import train

    with gr.Blocks() as demo:
        ctx = StudioContext(workspace=tmp_path, run_config=gr.State(default_run_config()))
        train.build(ctx)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"train-add-queue", "train-preview", "queue-table", "queue-up", "queue-down", "queue-remove",
            "queue-clear", "eval-run", "eval-samples-table", "notify-text"} <= ids
    assert q.ensure_worker(tmp_path).alive
    q.ensure_worker(tmp_path).stop()


def test_trackers_offer_only_installed_packages_and_say_how_to_get_the_rest(monkeypatch):
    from studio.tabs import trackers

    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: None if n in ("mlflow", "wandb") else real(n))
    avail = trackers.installed_trackers()
    assert avail == ["tensorboard"]
    note = trackers.tracker_note(avail)
    assert "pip install mlflow / wandb" in note and "are not installed" in note
    assert trackers.chosen({"report_to": ["tensorboard", "wandb"]}, avail) == ["tensorboard"]
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: object())
    assert trackers.installed_trackers() == ["tensorboard", "mlflow", "wandb"]


def test_queueing_a_config_with_a_malformed_webhook_or_bad_field_is_refused_with_a_sentence(tmp_path):
    with pytest.raises(UserError, match="not an http"):
        tq.queue_config(tmp_path, RunConfig(notify={"webhook": "ftp//nowhere"}).model_dump(mode="json"))
    with pytest.raises(Exception, match="learning_rate"):
        tq.queue_config(tmp_path, {"train": {"learning_rate": -1}})
    assert q.read_queue(tmp_path)["entries"] == []
    entry = tq.queue_config(tmp_path, RunConfig(name="ok").model_dump(mode="json"))
    assert [e["id"] for e in q.read_queue(tmp_path)["entries"]] == [entry["id"]]
