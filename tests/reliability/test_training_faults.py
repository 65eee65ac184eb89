"""Real training of the tiny model under faults: SIGKILL at a random (seeded) step, then resume; a full disk
while checkpointing, then resume. Each time the last good checkpoint is kept, the resumed run continues
from it, and the loss curve joins at the checkpoint. The weights written are safetensors only."""
from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from backend.runs import runner
from backend.runs import rundir
from backend.training import run as train
from studio.plots import RunSeries
from tests.integration.test_train_runner import tiny_config
from tests.reliability.conftest import wait_until

pytestmark = pytest.mark.timeout(400)

SEED = 20261125
MAX_STEPS = 8
PICKLED = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
# The Trainer's own resumable state (optimizer, scheduler, RNG, arguments) is pickled by transformers
# and only ever read back from a checkpoint this run wrote; model weights are never pickled.
TRAINER_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "scaler.pt"}


def train_steps(events: list[dict]) -> list[int]:
    return [e["step"] for e in events if e.get("type") == "train"]


def assert_curve_joins(run_dir: Path, resumed_from: int, total: int) -> None:
    events = rundir.read_events(run_dir)[0]
    at = max(i for i, e in enumerate(events) if e["type"] == "resume")
    before, after = train_steps(events[:at]), train_steps(events[at:])
    assert set(range(1, resumed_from + 1)) <= set(before), "nothing up to the checkpoint was lost"
    assert after == list(range(resumed_from + 1, total + 1)), "the resumed run continues right after it"
    series = RunSeries()
    series.add(events)
    assert series.steps == list(range(1, total + 1)), "the plotted curve has no gap and no doubling back"
    assert series.resumes[-1] == resumed_from


def assert_safetensors_only(*folders: Path) -> None:
    for folder in folders:
        weights = [p for p in folder.rglob("*") if p.is_file() and ("model" in p.name or "adapter" in p.name)
                   and p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
        assert weights and all(p.suffix == ".safetensors" for p in weights), weights
        pickled = {p.name for pat in PICKLED for p in folder.rglob(pat)}
        assert pickled <= TRAINER_STATE_FILES, pickled - TRAINER_STATE_FILES


def test_sigkill_at_a_random_step_keeps_the_checkpoint_and_resume_joins_the_curve(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    kill_at = random.Random(SEED).randint(3, MAX_STEPS - 2)
    monkeypatch.setenv("FTSTUDIO_FAULT", "slow@250")
    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=MAX_STEPS)
    run_dir = runner.start_run(tmp_path / "ws", cfg)
    wait_until(lambda: [s for s in train_steps(rundir.read_events(run_dir)[0]) if s >= kill_at], 240)
    os.killpg(rundir.read_status(run_dir)["pgid"], signal.SIGKILL)

    status = wait_until(lambda: (s := rundir.read_status(run_dir))["state"] == "failed" and s, 30)
    checkpoint = rundir.last_checkpoint(run_dir)
    assert checkpoint is not None and rundir.checkpoint_problem(checkpoint) is None
    assert "killed or crashed" in status["error"] and f"({checkpoint.name}, kept)" in status["error"]
    resumed_from = int(checkpoint.name.split("-")[1])
    assert resumed_from >= 2

    monkeypatch.delenv("FTSTUDIO_FAULT")
    runner.resume_run(run_dir)
    status = runner.wait_for_run(run_dir, timeout=300)
    assert status["state"] == "completed", (run_dir / "train.log").read_text()[-3000:]
    assert status["step"] == MAX_STEPS
    assert_curve_joins(run_dir, resumed_from, MAX_STEPS)

    from backend.export.merge import merge_adapter
    merged = tmp_path / "merged"
    merge_adapter(run_dir, merged)
    assert_safetensors_only(rundir.adapter_dir(run_dir), rundir.checkpoints_dir(run_dir), merged)
    # The Trainer's pickled state stays in checkpoints/: the final adapter and the merge hold none.
    for folder in (rundir.adapter_dir(run_dir), merged):
        assert not [p for pat in PICKLED for p in folder.rglob(pat)], folder


def test_disk_full_while_checkpointing_keeps_the_previous_one_and_resume_finishes(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("FTSTUDIO_FAULT", "disk_full@save2")
    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=6)
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    try:
        assert train.run(run_dir) == 1
        status = rundir.read_status(run_dir)
        assert status["state"] == "failed" and "disk is full" in status["error"]
        assert "checkpoint-2" in status["error"] and "resume" in status["error"].lower()
        bad = rundir.checkpoints_dir(run_dir) / "checkpoint-4"
        assert bad.is_dir() and rundir.checkpoint_problem(bad), "the cut-short save is recognised as such"
        assert rundir.last_checkpoint(run_dir).name == "checkpoint-2"

        monkeypatch.delenv("FTSTUDIO_FAULT")
        assert train.run(run_dir, resume=True) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    status = rundir.read_status(run_dir)
    assert status["state"] == "completed" and status["step"] == 6
    assert_curve_joins(run_dir, 2, 6)
    assert rundir.checkpoint_problem(rundir.checkpoints_dir(run_dir) / "checkpoint-6") is None


def test_a_full_disk_at_the_final_save_leaves_no_partial_and_resume_saves_without_training_past_the_end(
        tmp_path, tiny_model_dir, monkeypatch):
    from backend.core import io as core_io

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")
    previous = signal.getsignal(signal.SIGTERM)
    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=4, eval_steps=2)
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    # Room for the checkpoints, none left for the final adapter.
    monkeypatch.setattr(core_io, "free_bytes", lambda folder: 0 if Path(folder) == run_dir else 10**12)
    try:
        assert train.run(run_dir) == 1
        status = rundir.read_status(run_dir)
        assert status["state"] == "failed" and "Not enough disk space" in status["error"], status
        assert "final adapter" in status["error"] and "checkpoint-4" in status["error"]
        assert not (run_dir / "adapter.partial").exists() and not rundir.adapter_dir(run_dir).exists()

        monkeypatch.undo()
        monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")
        assert train.run(run_dir, resume=True) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    status = rundir.read_status(run_dir)
    assert status["state"] == "completed" and status["step"] == 4, status
    events = rundir.read_events(run_dir)[0]
    at = max(i for i, e in enumerate(events) if e["type"] == "resume")
    assert train_steps(events[at:]) == [], "every step was trained: the resume only saves, no step 5"
    assert max(train_steps(events)) == 4
    adapter = rundir.adapter_dir(run_dir)
    assert (adapter / "adapter_model.safetensors").is_file()
    pickled = sorted(p.name for pat in PICKLED for p in adapter.rglob(pat))
    assert pickled == [], f"the final adapter holds pickles: {pickled}"


def test_train_more_is_a_new_run_that_starts_from_the_completed_runs_adapter(tmp_path, tiny_model_dir, capsys):
    import torch
    from peft import get_peft_model_state_dict

    from backend import cli
    from backend.core.errors import UserError
    from backend.methods.loading import load_trainable_model

    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=4)
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    model = load_trainable_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.5)
    model.save_pretrained(str(rundir.adapter_dir(run_dir)))
    trained = get_peft_model_state_dict(model)
    rundir.write_status(run_dir, state="completed", step=4, total_steps=4, ended=rundir.now_iso())

    with pytest.raises(UserError, match="ftstudio train --more"):
        runner.resume_run(run_dir)
    more = runner.train_more_config(run_dir, 6)
    assert more.train.max_steps == 6 and more.init_adapter == str(rundir.adapter_dir(run_dir))
    assert more.model == cfg.model and more.method == cfg.method
    again = get_peft_model_state_dict(load_trainable_model(more))
    assert set(again) == set(trained)
    assert all(torch.equal(again[k], trained[k]) for k in trained), "the new run starts from the saved weights"

    code = cli.main(["train", "--more", str(run_dir), "--steps", "6", "--workspace", str(tmp_path / "ws"),
                     "--print-config"])
    out = capsys.readouterr().out
    assert code == 0 and f"init_adapter: {rundir.adapter_dir(run_dir)}" in out and "max_steps: 6" in out
    assert cli.main(["train", "--more", str(run_dir)]) == 2, "--steps is required"
