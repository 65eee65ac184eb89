"""The Train tab's live view without a browser: re-attach, incremental tailing, faults in the run directory."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import gradio as gr

from backend.runs import rundir
from backend.core.config import RunConfig
from studio.context import StudioContext, default_run_config
from studio.plots import RunSeries, smooth
from studio.tabs import train as tab


def fake_running_run(workspace: Path) -> Path:
    run_dir = rundir.create_run(workspace, RunConfig(name="live"))
    rundir.write_status(run_dir, state="running", pid=os.getpid(), pid_start=rundir.process_start_time(os.getpid()),
                      started=rundir.now_iso())
    rundir.append_event(run_dir, {"type": "train_begin", "step": 0, "total_steps": 10})
    for step, loss in ((1, 3.0), (2, 2.5)):
        rundir.append_event(run_dir, {"type": "train", "step": step, "epoch": step / 10, "loss": loss,
                                    "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 100.0})
    return run_dir


def test_the_tab_builds_with_the_elements_browser_tests_use(tmp_path):
    with gr.Blocks() as demo:
        tab.build(StudioContext(workspace=tmp_path, run_config=gr.State(default_run_config())))
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"train-start", "train-stop", "train-resume", "train-state", "train-loss-plot", "runs-table"} <= ids


def test_the_config_summary_names_model_dataset_and_method():
    md, yml = tab.config_summary(default_run_config())
    assert "smollm2-135m-instruct" in md and "instructions.jsonl" in md and "lora" in md
    assert "learning_rate" in yml
    md, yml = tab.config_summary({**default_run_config(), "bogus": 1})
    assert "ft-error" in md and "bogus" in md and yml == ""


def test_a_restarted_ui_finds_the_running_run_and_tails_only_new_events(tmp_path):
    run_dir = fake_running_run(tmp_path)
    live, changed, status = tab.refresh_live(tab.new_live(None), tmp_path)
    assert live["run_dir"] == str(run_dir) and changed and status["state"] == "running"
    assert live["series"].loss == [3.0, 2.5]
    offset = live["offset"]
    live, changed, _ = tab.refresh_live(live, tmp_path)
    assert not changed and live["offset"] == offset
    rundir.append_event(run_dir, {"type": "train", "step": 3, "loss": 2.0})
    rundir.append_event(run_dir, {"type": "eval", "step": 3, "val_loss": 2.2, "best_val_loss": 2.2, "best_step": 3})
    live, changed, _ = tab.refresh_live(live, tmp_path)
    assert changed and live["series"].loss == [3.0, 2.5, 2.0] and live["series"].val_loss == [2.2]
    assert "step 3 / 10" in tab.progress_html(live["series"], status)


def test_a_malformed_events_line_is_skipped_and_the_view_keeps_going(tmp_path):
    run_dir = fake_running_run(tmp_path)
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write("{{{ not json\n")
    rundir.append_event(run_dir, {"type": "train", "step": 3, "loss": 1.0})
    live, _, _ = tab.refresh_live(tab.new_live(str(run_dir)), tmp_path)
    assert live["series"].steps == [1, 2, 3]


def test_a_run_directory_deleted_while_viewed_says_so_and_leaves_the_list(tmp_path):
    run_dir = fake_running_run(tmp_path)
    live, _, _ = tab.refresh_live(tab.new_live(str(run_dir)), tmp_path)
    shutil.rmtree(run_dir)
    live, changed, status = tab.refresh_live(live, tmp_path)
    assert status["state"] == rundir.MISSING and not changed
    assert "no longer exists" in tab.state_sentence(run_dir.name, status)
    assert tab.runs_rows(tmp_path) == []


def test_final_states_read_as_sentences():
    oom = tab.state_sentence("r1", {"state": "out_of_memory", "error": "The GPU ran out of memory. To fit: x."})
    assert "ran out of GPU memory" in oom and "To fit" in oom and "ft-error" in oom
    assert "completed" in tab.state_sentence("r2", {"state": "completed", "adapter": "/a"})


def test_the_loss_chart_marks_early_stop_and_the_best_checkpoint():
    s = RunSeries()
    s.add([{"type": "train", "step": i, "loss": 3.0 - i * 0.1} for i in range(1, 7)] +
          [{"type": "eval", "step": 2, "val_loss": 2.0, "best_val_loss": 2.0, "best_step": 2},
           {"type": "eval", "step": 4, "val_loss": 2.5, "best_val_loss": 2.0, "best_step": 2},
           {"type": "early_stop", "step": 4, "best_step": 2},
           {"type": "train", "step": 7, "loss": float("nan")}])
    fig = tab.loss_figure(s)
    names = [t.name for t in fig.data]
    assert "best checkpoint" in names and "train loss (smoothed)" in names
    assert any(sh.x0 == 4 for sh in fig.layout.shapes), "early stop line at step 4"
    assert s.steps[-1] == 6, "a NaN loss is dropped, not plotted"
    assert smooth([1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]
