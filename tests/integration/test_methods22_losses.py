"""Preference losses beyond DPO's default (issue 22): each DPO loss type reaches TRL's trainer and gives its
own loss on the same batch; CPO and SimPO train through TRL's CPO trainer with no reference model; a loss
setting the chosen objective would ignore is refused with a sentence."""
from __future__ import annotations

import pytest
import torch

from backend.core.catalog import PREFERENCE_LOSSES
from backend.core.config import RunConfig
from backend.objectives.validate import validate_objective
from backend.runs import rundir
from tests.samples import small_copy

pytestmark = pytest.mark.timeout(600)


def config(model_dir, data, objective: str = "dpo", **alignment) -> RunConfig:
    return RunConfig.model_validate({
        "model": str(model_dir), "objective": objective, "early_stopping": {"patience": None},
        "method": {"name": "lora", "r": 4, "dropout": 0.0},
        "alignment": {"beta": 0.5, **alignment},
        "data": {"path": str(data), "validation_split": 0.0, "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "gradient_checkpointing": False, "learning_rate": 1e-2, "warmup_ratio": 0.0,
                  "scheduler": "constant"}})


_BATCH: dict = {}


def first_batch_loss(tmp_path, cfg: RunConfig) -> tuple[float, object]:
    """The trainer the run builds, and its loss on one fixed batch with the same policy, moved off the
    reference (seeded LoRA A, seeded B), so only the loss type differs between calls."""
    from backend.core.models import load_tokenizer
    from backend.objectives.trainers import load_objective_model
    from backend.training.run import build_datasets, build_trainer

    run_dir = rundir.create_run(tmp_path / cfg.alignment.loss_type, cfg)
    tokenizer = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model = load_objective_model(cfg)
    train_ds, val_ds = build_datasets(cfg, tokenizer)
    trainer, _, _ = build_trainer(cfg, run_dir, model, tokenizer, train_ds, val_ds, {})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero (policy = reference); give every loss a margin to work on
        for name, p in trainer.model.named_parameters():
            if "lora_B.default." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    key = (cfg.objective, str(cfg.data.path))
    batch = _BATCH.setdefault(key, next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return float(loss), trainer.args


def test_each_dpo_loss_type_reaches_the_trainer_and_gives_its_own_loss(tiny_model_dir, tmp_path):
    data = small_copy(tmp_path, "preference.jsonl")
    losses = {}
    for name, info in PREFERENCE_LOSSES.items():
        smoothing = 0.2 if name == "robust" else 0.0
        loss, args = first_batch_loss(tmp_path, config(tiny_model_dir, data, loss_type=name, label_smoothing=smoothing))
        assert args.loss_type == [name] and args.label_smoothing == smoothing
        losses[name] = loss
    # Robust DPO's label smoothing really changes its loss (0 would be plain sigmoid).
    robust0, _ = first_batch_loss(tmp_path / "r0", config(tiny_model_dir, data, loss_type="robust"))
    assert robust0 == pytest.approx(losses["sigmoid"], abs=1e-6) and abs(robust0 - losses["robust"]) > 1e-3
    values = sorted(losses.values())
    assert all(b - a > 1e-4 for a, b in zip(values, values[1:])), losses


@pytest.mark.parametrize("objective", ["cpo", "simpo"])
def test_cpo_and_simpo_train_without_a_reference(tiny_model_dir, tmp_path, objective):
    from backend.training.run import run

    data = small_copy(tmp_path, "preference.jsonl")
    cfg = config(tiny_model_dir, data, objective, simpo_gamma=0.7, cpo_alpha=0.5)
    _, args = first_batch_loss(tmp_path / "args", cfg)
    if objective == "simpo":
        assert (args.loss_type, args.cpo_alpha, args.simpo_gamma) == ("simpo", 0.0, 0.7)
    else:
        assert (args.loss_type, args.cpo_alpha) == ("sigmoid", 0.5)
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    assert run(run_dir) == 0, rundir.read_status(run_dir).get("error")
    events = rundir.read_events(run_dir)[0]
    assert [e["step"] for e in events if e["type"] == "train"] == [1, 2]
    assert any("rewards/margins" in e for e in events if e["type"] == "alignment")
    assert (rundir.adapter_dir(run_dir) / "adapter_model.safetensors").is_file()


def test_a_loss_setting_the_objective_would_ignore_is_a_sentence(tiny_model_dir, tmp_path):
    data = tmp_path / "x.jsonl"
    assert "alignment.loss_type" in validate_objective(config(tiny_model_dir, data, "orpo", loss_type="ipo"))
    assert "alignment.loss_type" in validate_objective(config(tiny_model_dir, data, "sft", loss_type="hinge"))
    for loss in ("hinge", "sigmoid"):  # TRL's sigmoid ignores label smoothing: refused, not silently dropped
        refused = validate_objective(config(tiny_model_dir, data, loss_type=loss, label_smoothing=0.1))
        assert "label smoothing" in refused["alignment.label_smoothing"]
    assert validate_objective(config(tiny_model_dir, data, loss_type="robust", label_smoothing=0.1)) == {}
    assert validate_objective(config(tiny_model_dir, data, "simpo")) == {}
