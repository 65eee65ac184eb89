"""DPO, ORPO and KTO through the training subprocess's code path on the tiny model (in-process):
they train with or without LoRA, log reward margins/accuracies as chart events, and save an
adapter (or model) where only the method's parameters moved."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.runs import rundir
from backend.core.config import RunConfig
from backend.core.models import load_causal_lm
from backend.core.catalog import OBJECTIVES
from backend.objectives.validate import validate_objective

from tests.samples import small_copy

pytestmark = pytest.mark.timeout(600)


def config(model_dir, data: Path, objective: str, method: str) -> RunConfig:
    return RunConfig.model_validate({
        "model": str(model_dir), "objective": objective, "early_stopping": {"patience": None},
        "method": {"name": method, "r": 4, "dropout": 0.0, "num_layers": 1, "compute_dtype": "fp32"},
        "alignment": {"beta": 0.2},
        "data": {"path": str(data), "validation_split": 0.0, "max_length": 48},
        "train": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "gradient_checkpointing": False, "learning_rate": 1e-2, "eval_steps": 50, "warmup_ratio": 0.0,
                  "scheduler": "constant"}})


def train(tmp_path: Path, cfg: RunConfig) -> tuple[Path, list[dict]]:
    from backend.training.run import run

    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    code = run(run_dir)
    assert code == 0, rundir.read_status(run_dir).get("error")
    return run_dir, rundir.read_events(run_dir)[0]


@pytest.mark.parametrize("objective,method", [("dpo", "qlora"), ("orpo", "lora"), ("kto", "lora"),
                                              ("dpo", "last_layers")])
def test_alignment_objective_trains_and_logs_rewards(tiny_model_dir, tmp_path, objective, method):
    data = small_copy(tmp_path, "kto.jsonl" if objective == "kto" else "preference.jsonl")
    run_dir, events = train(tmp_path, config(tiny_model_dir, data, objective, method))
    alignment = [e for e in events if e["type"] == "alignment"]
    assert len(alignment) == 2 and all(any(k.startswith("rewards/") for k in e) for e in alignment)
    if objective == "kto":  # KTO logs margins only when a batch holds both labels
        assert all("kl" in e for e in alignment)
    else:
        assert all("rewards/margins" in e and "rewards/accuracies" in e for e in alignment)
    assert [e["step"] for e in events if e["type"] == "train"] == [1, 2]

    adapter = rundir.adapter_dir(run_dir)
    base = load_causal_lm(str(tiny_model_dir), dtype=torch.float32)
    if method in ("lora", "qlora"):
        from safetensors.torch import load_file

        weights = load_file(str(adapter / "adapter_model.safetensors"))
        assert weights and all("lora_" in k for k in weights)
        assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B moved off zero
    else:
        tuned = dict(load_causal_lm(str(adapter), dtype=torch.float32).named_parameters())
        moved = {n for n, p in base.named_parameters() if not torch.equal(p, tuned[n])}
        assert moved and all(n.startswith(("model.layers.1.", "model.norm.")) for n in moved)


def test_preference_objective_on_sft_data_says_what_to_pick(tiny_model_dir, tmp_path):
    from backend.training.run import run

    data = small_copy(tmp_path, "instructions.jsonl")
    run_dir = rundir.create_run(tmp_path / "ws", config(tiny_model_dir, data, "dpo", "lora"))
    assert run(run_dir) == 1
    error = rundir.read_status(run_dir)["error"]
    assert "prompt/chosen/rejected" in error and "Dataset tab" in error


def test_prompt_methods_cannot_be_aligned_and_every_objective_has_help(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path / "x.jsonl", "dpo", "prompt_tuning")
    assert "method.name" in validate_objective(cfg)
    assert validate_objective(config(tiny_model_dir, tmp_path / "x.jsonl", "dpo", "qlora")) == {}
    aligned = [spec for spec in OBJECTIVES.values() if spec.alignment]
    assert [s.name for s in aligned] == ["dpo", "orpo", "cpo", "simpo", "kto", "reward", "grpo", "rloo"]
    for spec in aligned:
        assert 20 < len(spec.help) < 300 and spec.data_format in ("preference", "kto", "prompts")


def test_reward_model_trains_a_score_head_with_lora(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    data = small_copy(tmp_path, "preference.jsonl")
    cfg = config(tiny_model_dir, data, "reward", "lora")
    # The reward trainer drops pairs longer than max_length (SmolLM2's template adds a system turn).
    cfg.data.max_length = 128
    run_dir, events = train(tmp_path, cfg)
    alignment = [e for e in events if e["type"] == "alignment"]
    assert len(alignment) == 2 and all("accuracy" in e and "margin" in e for e in alignment)
    adapter = rundir.adapter_dir(run_dir)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(".score." in k for k in weights) and any("lora_B" in k for k in weights)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    scorer = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        assert scorer(input_ids=torch.arange(10, 20).unsqueeze(0)).logits.shape == (1, 1)
    bad = config(tiny_model_dir, data, "reward", "ia3")
    assert "method.name" in validate_objective(bad)
