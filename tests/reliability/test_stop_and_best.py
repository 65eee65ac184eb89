"""A graceful stop that waits for a slow step, "Stop now", messages that stay, and the best checkpoint
that is kept and offered first (issue 24 items 4 and 12). Stand-in trainers and hand-made run folders."""
from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backend.core.config import RunConfig
from backend.runs import rundir, runner
from tests.reliability.conftest import REPO, wait_until
from tests.reliability.test_run_files import make_checkpoint

pytestmark = pytest.mark.timeout(120)

# Finishes a slow "step" (SLOW seconds) after the stop request, then stops on its own; "stubborn" never does.
SLOW_TRAINER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from backend.runs import rundir
    run_dir, mode = Path(sys.argv[1]), sys.argv[2]
    rundir.write_status(run_dir, state="running")
    rundir.write_heartbeat(run_dir, 3, {step_time})
    while not rundir.stop_requested(run_dir):
        time.sleep(0.05)
    if mode == "stubborn":
        while True:
            time.sleep(0.05)
    time.sleep({step_time})  # the step under way when Stop came
    rundir.write_status(run_dir, state="stopped", ended=rundir.now_iso(),
                        note="Stopped on request at step 4; the checkpoint and adapter are saved.")
""")


def _start(tmp_path: Path, monkeypatch, mode: str, step_time: float) -> Path:
    script = tmp_path / "slow.py"
    script.write_text(SLOW_TRAINER.format(repo=str(REPO), step_time=step_time))
    monkeypatch.setattr(runner, "_launch_command",
                        lambda run_dir, cfg, resume: [sys.executable, str(script), str(run_dir), mode])
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    run_dir = runner.start_run(tmp_path / "ws", RunConfig.model_validate({"name": mode, "data": {"path": str(data)}}))
    wait_until(lambda: rundir.read_heartbeat(run_dir), 30)
    return run_dir


def test_the_stop_grace_follows_the_measured_step_time(tmp_path):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="grace"))
    assert runner.stop_grace(run_dir) == runner.STOP_GRACE_MIN_S, "before any step: the minimum"
    rundir.write_heartbeat(run_dir, 9, 35.0)  # the 35-s steps: 30 s was too short
    grace = runner.stop_grace(run_dir)
    assert grace == pytest.approx(runner.STOP_GRACE_STEPS * 35.0 + runner.STOP_SAVE_S) and grace > 2 * 35.0


def test_a_graceful_stop_waits_for_a_step_longer_than_the_old_fixed_wait(tmp_path, monkeypatch):
    from studio.tabs import train as tab

    # Scaled down: a 30-s minimum and 30-s saves become 0.5 s and 0, a 35-s step a 1.5-s one.
    monkeypatch.setattr(runner, "STOP_GRACE_MIN_S", 0.5)
    monkeypatch.setattr(runner, "STOP_SAVE_S", 0.0)
    run_dir = _start(tmp_path, monkeypatch, "graceful", step_time=1.5)
    t0 = time.monotonic()
    grace = runner.stop_in_background(run_dir)
    assert time.monotonic() - t0 < 1.0, "the studio's Stop returns at once"
    assert grace == pytest.approx(3.75)
    status = rundir.read_raw_status(run_dir)
    assert status["state"] == "stopping" and status["stop_grace_s"] == pytest.approx(3.75, abs=0.1)
    shown = tab.state_sentence(run_dir.name, status, run_dir)
    assert "finishing its current step" in shown and "stopped by force in **0:0" in shown and "Stop now" in shown

    final = wait_until(lambda: (s := rundir.read_raw_status(run_dir))["state"] == "stopped" and s, 30)
    assert "saved" in final["note"] and not final.get("error"), "it stopped on its own, not by force"


def test_stop_now_ends_the_run_at_once_with_a_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "KILL_GRACE_S", 1.0)
    run_dir = _start(tmp_path, monkeypatch, "stubborn", step_time=60.0)
    make_checkpoint(run_dir, 2)
    t0 = time.monotonic()
    status = runner.stop_now(run_dir)
    assert time.monotonic() - t0 < 10
    assert status["state"] == "stopped"
    assert "stopped at once on request (Stop now)" in status["error"] and "checkpoint-2" in status["error"]


def test_a_resume_error_stays_on_the_train_tab_until_the_user_acts(tmp_path):
    from studio.tabs import train as tab

    ws = tmp_path / "ws"
    run_dir = rundir.create_run(ws, RunConfig(name="nockpt"))
    rundir.write_status(run_dir, state="failed", error="killed")
    out = tab.on_resume(ws, tab.new_live(str(run_dir)))
    lv = out[0]
    assert "no complete checkpoint" in out[1]
    for _ in range(3):  # the 1-s timer redraws the state line: the sentence is still there
        out = tab.on_tick(ws, lv)
        lv = out[0]
        # A tick with nothing new sends no change (issue 24 item 19), which leaves the sentence on screen.
        assert out[1] == {"__type__": "update"} or "no complete checkpoint" in out[1]
    assert "no complete checkpoint" not in tab.view_row(ws, [run_dir.name], lv)[1], "gone once the user acts"


# ---- issue 24 item 12: the best checkpoint ------------------------------------------------------------

def _with_best(run_dir: Path, best: int, val: float, steps: list[int]) -> None:
    for step in steps:
        ckpt = make_checkpoint(run_dir, step)
        (ckpt / "trainer_state.json").write_text(json.dumps({
            "global_step": step, "log_history": [], "best_metric": val, "best_global_step": best,
            "best_model_checkpoint": str(rundir.checkpoints_dir(run_dir) / f"checkpoint-{best}")}))


def test_the_best_checkpoint_is_offered_first_in_chat_with_its_validation_loss(tmp_path):
    from backend.inference.chat import chat_choices

    ws = tmp_path / "ws"
    run_dir = rundir.create_run(ws, RunConfig(name="best"))
    _with_best(run_dir, 30, 0.1662, [30, 50, 60])
    rundir.adapter_dir(run_dir).mkdir()
    (rundir.adapter_dir(run_dir) / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    rundir.write_status(run_dir, state="completed", best_val_loss=0.1662)
    assert rundir.best_checkpoint(run_dir)[:2] == (30, rundir.checkpoints_dir(run_dir) / "checkpoint-30")

    choices = [c for c in chat_choices(ws) if c[0].startswith("run:")]
    assert choices[0][0].endswith("· best (val 0.166, step 30)")
    assert choices[0][1] == str(rundir.checkpoints_dir(run_dir) / "checkpoint-30")
    paths = [p for _, p in choices]
    assert len(paths) == len(set(paths)) == 4, "final, best, 60, 50: the best is not listed twice"


def test_the_checkpoint_limit_never_deletes_the_best_checkpoint(tmp_path):
    from transformers.trainer_utils import rotate_checkpoints

    from backend.training.run import training_args
    from tests.integration.test_train_runner import tiny_config

    cfg = tiny_config(tmp_path / "no-model", tmp_path, with_validation=True, patience=None)
    args = training_args(cfg, rundir.create_run(tmp_path / "ws", cfg), has_eval=True)
    # Tracked without early stopping too, so the Trainer's rotation knows which checkpoint to keep.
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    assert args.load_best_model_at_end is False and args.save_total_limit == 2
    folder = tmp_path / "ckpts"
    for step in (30, 40, 50, 60):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        time.sleep(0.01)
    rotate_checkpoints(output_dir=str(folder), save_total_limit=args.save_total_limit,
                       best_model_checkpoint=str(folder / "checkpoint-30"), use_mtime=True)
    assert (folder / "checkpoint-30").is_dir() and (folder / "checkpoint-60").is_dir()
