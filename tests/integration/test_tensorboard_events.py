"""Every run writes TensorBoard event files into RUN_DIR/tb holding the losses it logged."""
from __future__ import annotations

import pytest

from backend.runs import runner
from backend.runs import rundir
from tests.integration.test_train_runner import tiny_config

pytestmark = pytest.mark.timeout(300)


def test_tensorboard_event_files_hold_the_logged_training_losses(tmp_path, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, patience=None, max_steps=4)
    assert cfg.report_to == ["tensorboard"]  # the default
    run_dir = runner.start_run(tmp_path / "ws", cfg)
    assert runner.wait_for_run(run_dir, timeout=240)["state"] == "completed"
    files = list((run_dir / "tb").rglob("events.out.tfevents.*"))
    assert files, f"no event files under {run_dir / 'tb'}"
    logged = {e["step"]: e["loss"] for e in rundir.read_events(run_dir)[0]
              if e.get("type") == "train" and e.get("loss") is not None}
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"], acc.Tags()
    tb = {s.step: s.value for s in acc.Scalars("train/loss")}
    assert set(tb) == set(logged) and len(tb) == 4
    for step, loss in logged.items():
        assert tb[step] == pytest.approx(loss, rel=1e-4)
