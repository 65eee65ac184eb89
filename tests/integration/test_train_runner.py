"""Real LoRA training of the tiny model on the CPU through the runner: loss, early stopping, best adapter,
stop (graceful and forced), kill from outside, resume, re-attach."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from backend.runs import runner
from backend.runs import rundir
from backend.core.config import RunConfig

pytestmark = pytest.mark.timeout(600)


def write_overfit_data(folder: Path) -> tuple[Path, Path]:
    """Training answers one word; validation asks the same questions but expects another, so the
    better the model learns the training set, the worse its validation loss gets."""
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Say the secret word {i % 2}.", "completion": "apple"}) + "\n"
                             for i in range(8)))
    val.write_text("".join(json.dumps({"prompt": f"Say the secret word {i}.", "completion": "banana"}) + "\n"
                           for i in range(2)))
    return train, val


def tiny_config(model_dir: Path, data_dir: Path, with_validation: bool = True, patience=2, **train) -> RunConfig:
    train_path, val_path = write_overfit_data(data_dir)
    t = {"max_steps": 30, "batch_size": 4, "gradient_accumulation": 1, "eval_steps": 2, "learning_rate": 0.01,
         "gradient_checkpointing": False, "warmup_ratio": 0.0, "scheduler": "constant", **train}
    return RunConfig.model_validate({
        "model": str(model_dir), "name": "tiny",
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"path": str(train_path), "validation_path": str(val_path) if with_validation else None,
                 "validation_split": 0.0, "max_length": 32},
        "train": t, "early_stopping": {"patience": patience},
    })


def wait_until(predicate, timeout: float = 240.0, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def events_of(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in rundir.read_events(run_dir)[0] if e.get("type") == kind]


def group_gone(pgid: int) -> bool:
    return not runner._group_alive(pgid)


def test_lora_loss_falls_early_stopping_triggers_and_the_best_adapter_loads(tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, tmp_path)
    run_dir = runner.start_run(tmp_path / "ws", cfg)
    status = runner.wait_for_run(run_dir, timeout=400)
    assert status["state"] == "completed", (status, (run_dir / "train.log").read_text()[-3000:])

    losses = [e["loss"] for e in events_of(run_dir, "train")]
    assert losses[-1] < losses[0]
    stop = events_of(run_dir, "early_stop")
    assert stop and stop[0]["best_step"] < stop[0]["step"] < 30
    assert status["early_stopped"] is True and status["best_step"] == stop[0]["best_step"]
    evals = events_of(run_dir, "eval")
    assert status["best_val_loss"] == pytest.approx(min(e["val_loss"] for e in evals))
    assert all(e["tokens_per_s"] is None or e["tokens_per_s"] > 0 for e in events_of(run_dir, "train"))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    adapter = rundir.adapter_dir(run_dir)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter))
    assert any("lora_A" in n for n, _ in model.named_parameters())

    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["seed"] == 42 and meta["versions"]["transformers"] and "ftstudio train" in meta["command"]
    assert list((run_dir / "tb").rglob("events.out.tfevents*")), "TensorBoard event files are written"
    row = rundir.list_runs(tmp_path / "ws")[0]
    assert row["state"] == "completed" and row["best_val_loss"] == status["best_val_loss"]


def test_graceful_stop_after_a_ui_restart_saves_checkpoint_and_adapter(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("FTSTUDIO_FAULT", "slow@300")
    ws = tmp_path / "ws"
    run_dir = runner.start_run(ws, tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=200))
    wait_until(lambda: [e for e in events_of(run_dir, "train") if e["step"] >= 3])
    # The UI restarted: it knows nothing but the workspace.
    active = runner.find_active_runs(ws)
    assert [a["id"] for a in active] == [run_dir.name]
    pgid = rundir.read_status(run_dir)["pgid"]
    status = runner.stop_run(Path(active[0]["dir"]), timeout=120)
    assert status["state"] == "stopped" and "error" not in status, status
    assert status["step"] < 200
    assert rundir.last_checkpoint(run_dir).name == f"checkpoint-{status['step']}"
    assert (rundir.adapter_dir(run_dir) / "adapter_model.safetensors").is_file()
    assert wait_until(lambda: group_gone(pgid), 10)


def test_forced_stop_kills_a_hung_trainer_and_its_children_keeping_the_checkpoint(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    monkeypatch.setenv("FTSTUDIO_FAULT", "hang@3")
    monkeypatch.setattr(runner, "KILL_GRACE_S", 2.0)
    run_dir = runner.start_run(tmp_path / "ws", tiny_config(tiny_model_dir, tmp_path, with_validation=False))
    child_file = run_dir / "fault_child.pid"
    wait_until(child_file.exists)
    child, pgid = int(child_file.read_text()), rundir.read_status(run_dir)["pgid"]
    status = runner.stop_run(run_dir, timeout=2)
    assert status["state"] == "stopped" and "killed" in status["error"] and "checkpoint-2" in status["error"]
    assert rundir.last_checkpoint(run_dir).name == "checkpoint-2"
    assert wait_until(lambda: not rundir.pid_alive(child) and group_gone(pgid), 10)


def test_killed_from_outside_reads_failed_then_resume_continues_from_the_checkpoint(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    monkeypatch.setenv("FTSTUDIO_FAULT", "slow@300")
    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=8)
    run_dir = runner.start_run(tmp_path / "ws", cfg)
    wait_until(lambda: events_of(run_dir, "checkpoint"))
    os.killpg(rundir.read_status(run_dir)["pgid"], signal.SIGKILL)
    status = wait_until(lambda: (s := rundir.read_status(run_dir))["state"] == "failed" and s)
    assert "killed or crashed" in status["error"]
    checkpoint = rundir.last_checkpoint(run_dir)
    assert checkpoint is not None
    resumed_from = int(checkpoint.name.split("-")[1])

    monkeypatch.delenv("FTSTUDIO_FAULT")
    assert runner.resume_run(run_dir) == run_dir.resolve()
    status = runner.wait_for_run(run_dir, timeout=300)
    assert status["state"] == "completed", (run_dir / "train.log").read_text()[-3000:]
    assert status["step"] == 8
    events = rundir.read_events(run_dir)[0]
    resume_at = next(i for i, e in enumerate(events) if e["type"] == "resume")
    after = [e["step"] for e in events[resume_at:] if e["type"] == "train"]
    assert after and min(after) == resumed_from + 1
