"""Bottleneck adapters (Houlsby, Pfeiffer) on the tiny model: start as the identity, only adapter weights
train, saved adapters reload onto a fresh base with the same logits, and they refuse to merge."""
from __future__ import annotations

import json

import pytest
import torch

from backend.runs import rundir
from backend.core.config import RunConfig
from backend.methods import count_parameters, get_method, load_trainable_model
from backend.methods.adapters import CONFIG_FILE, WEIGHTS_FILE, load_bottleneck_adapter
from backend.core.models import load_causal_lm

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
PROBE = torch.arange(10, 30).unsqueeze(0)
POSITIONS = {"adapter_houlsby": 2, "adapter_pfeiffer": 1}


def cfg_for(model_dir, name: str) -> RunConfig:
    return RunConfig(model=str(model_dir), method={"name": name, "bottleneck": 8, "adapter_activation": "gelu"},
                     train={"precision": "fp32", "gradient_checkpointing": False, "max_steps": 3},
                     data={"max_length": 64})


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits


@pytest.mark.parametrize("name", list(POSITIONS))
def test_bottleneck_adapter_trains_only_itself_and_reloads(tiny_model_dir, tmp_path, name):
    from backend.estimator import estimate

    cfg = cfg_for(tiny_model_dir, name)
    base_logits = logits(load_causal_lm(str(tiny_model_dir), dtype=torch.float32))
    model = load_trainable_model(cfg)
    # Zero-initialized up-projections: the untrained adapter computes exactly what the base does.
    assert torch.equal(logits(model), base_logits)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter_" in n for n in trainable)
    h, b = 64, 8
    assert count_parameters(model)[0] == 2 * POSITIONS[name] * (2 * h * b + b + h)
    assert estimate(cfg).trainable_params == count_parameters(model)[0]

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the down-projection gets a gradient once the up-projection is non-zero
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
    assert {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())} == trainable

    expected = logits(model)
    assert not torch.allclose(expected, base_logits)
    model.ftstudio_save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / WEIGHTS_FILE).exists()
    settings = json.loads((tmp_path / "adapter" / CONFIG_FILE).read_text())
    assert settings["method"] == name and settings["bottleneck"] == 8 and settings["activation"] == "gelu"
    again = load_bottleneck_adapter(load_causal_lm(str(tiny_model_dir), dtype=torch.float32), tmp_path / "adapter")
    assert torch.allclose(logits(again), expected, atol=1e-6)

    ok, reason = get_method(name).can_merge(cfg)
    assert not ok and "cannot be merged" in reason


def test_trainer_saves_the_adapter_not_the_base_model(tiny_model_dir, tmp_path):
    from backend.training.run import run

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "completion": "apple pie"}) + "\n" for i in range(8)))
    cfg = RunConfig.model_validate({
        "model": str(tiny_model_dir), "method": {"name": "adapter_pfeiffer", "bottleneck": 8},
        "early_stopping": {"patience": None},
        "data": {"path": str(data), "validation_split": 0.0, "max_length": 32},
        "train": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "gradient_checkpointing": True, "learning_rate": 1e-2, "eval_steps": 50}})
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    assert run(run_dir) == 0, rundir.read_status(run_dir)
    out = rundir.adapter_dir(run_dir)
    assert (out / CONFIG_FILE).exists() and (out / "tokenizer_config.json").exists()
    assert not (out / "model.safetensors").exists()
    model = load_bottleneck_adapter(load_causal_lm(str(tiny_model_dir), dtype=torch.float32), out)
    ups = [p for n, p in model.named_parameters() if n.endswith("adapter_ffn.up.weight")]
    assert ups and all(p.abs().sum() > 0 for p in ups)  # trained away from the zero start
