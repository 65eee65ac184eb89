"""Selective methods on tiny models: feature extraction, gradual unfreezing, BitFit, Fish Mask.
Exactly the intended weights change, the saved model reloads to the same logits, the estimator
counts what the method trains, and the trainer-side schedules (unfreezing, Fisher mask) run."""
from __future__ import annotations

import json

import pytest
import torch

from backend.runs import rundir
from backend.core.config import RunConfig
from backend.methods import count_parameters, load_trainable_model, validate_for_model
from backend.methods.selective import UnfreezeSchedule, fisher_mask, install_mask
from backend.core.models import load_causal_lm, load_model_config

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
PROBE = torch.arange(10, 30).unsqueeze(0)


def run_cfg(model_dir, name: str, method: dict | None = None, **train) -> RunConfig:
    return RunConfig(model=str(model_dir), method={"name": name, **(method or {})},
                     train={"precision": "fp32", "gradient_checkpointing": False, "learning_rate": 1e-2,
                            "weight_decay": 0.0, "max_steps": 3, **train},
                     data={"max_length": 64})


def step(model, n: int = 1, opt=None):
    opt = opt or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(n):
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def assert_reloads(model, tmp_path):
    expected = logits(model)
    model.save_pretrained(str(tmp_path / "out"))
    again = load_causal_lm(str(tmp_path / "out"), dtype=torch.float32)
    assert torch.allclose(logits(again), expected, atol=1e-6)


def assert_estimator_agrees(cfg, model):
    from backend.estimator import estimate
    assert estimate(cfg).trainable_params == count_parameters(model)[0]


@pytest.fixture(scope="module")
def tiny_biased_dir(tmp_path_factory, bundled_dir):
    """A tiny Qwen2: attention projections with biases, the kind of model BitFit is for."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen2")
    tok = AutoTokenizer.from_pretrained(str(bundled_dir))
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 max_position_embeddings=256)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_feature_extraction_trains_only_the_head(tiny_model_dir, tmp_path):
    cfg = run_cfg(tiny_model_dir, "feature_extraction")
    model = load_trainable_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = model.get_output_embeddings().weight
    # The tiny model ties the head to the input embeddings: one tensor, listed once.
    assert len(trainable) == 1 and dict(model.named_parameters())[trainable.pop()] is head
    assert_estimator_agrees(cfg, model)
    before = snapshot(model)
    step(model, 2)
    assert changed(before, model) == {n for n, p in model.named_parameters() if p is head}
    assert_reloads(model, tmp_path)


def test_gradual_unfreezing_trains_the_top_block_first_then_the_next(tiny_model_dir, tmp_path):
    cfg = run_cfg(tiny_model_dir, "gradual_unfreezing", method={"unfreeze_every": 1})
    model = load_trainable_model(cfg)
    assert_estimator_agrees(cfg, model)  # the final (largest) trainable set: both blocks and the norm
    assert count_parameters(model)[0] == sum(p.numel() for n, p in model.named_parameters()
                                             if n.startswith(("model.layers.", "model.norm.")))
    schedule = UnfreezeSchedule(model)
    schedule.start()
    opt = torch.optim.AdamW([p for p in model.parameters()], lr=1e-2)  # like the Trainer: built with all
    before = snapshot(model)
    step(model, 1, opt)
    first = changed(before, model)
    assert first and all(n.startswith(("model.layers.1.", "model.norm.")) for n in first)
    assert schedule.advance() == 1 and schedule.advance() is None
    before = snapshot(model)
    step(model, 1, opt)
    assert any(n.startswith("model.layers.0.") for n in changed(before, model))
    assert not any(n.startswith("model.embed_tokens") for n in changed(before, model))
    assert_reloads(model, tmp_path)


def test_bitfit_says_it_is_not_applicable_to_a_model_without_biases(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, "bitfit")
    errors = validate_for_model(cfg, load_model_config(cfg.model))
    assert "not applicable" in errors["method.name"] and "no bias" in errors["method.name"]


def test_bitfit_trains_only_biases(tiny_biased_dir, tmp_path):
    cfg = run_cfg(tiny_biased_dir, "bitfit")
    assert validate_for_model(cfg, load_model_config(cfg.model)) == {}
    model = load_trainable_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".bias") for n in trainable)
    assert_estimator_agrees(cfg, model)
    before = snapshot(model)
    step(model, 2)
    assert changed(before, model) == trainable
    assert_reloads(model, tmp_path)


def test_fish_mask_updates_only_the_selected_weights(tiny_model_dir, tmp_path):
    cfg = run_cfg(tiny_model_dir, "fish_mask", method={"fish_mask_density": 0.01})
    model = load_trainable_model(cfg)
    assert_estimator_agrees(cfg, model)
    masks = fisher_mask(model, [{"input_ids": IDS, "labels": IDS}], 0.01)
    total = sum(m.numel() for m in masks.values())
    selected = install_mask(model, masks)
    assert 0 < selected <= total * 0.01 * 1.05 + 1
    before = snapshot(model)
    step(model, 2, torch.optim.AdamW([p for p in model.parameters()], lr=1e-2, weight_decay=0.0))
    moved = sum(int((before[n] != p.detach()).sum()) for n, p in model.named_parameters())
    outside = sum(int(((before[n] != p.detach()) & ~masks[n]).sum()) for n, p in model.named_parameters())
    assert outside == 0 and moved > selected // 2
    assert "train.weight_decay" in validate_for_model(run_cfg(tiny_model_dir, "fish_mask", weight_decay=0.1),
                                                      load_model_config(cfg.model))
    assert_reloads(model, tmp_path)


def _train_run(tmp_path, model_dir, method: dict) -> tuple:
    from backend.training.run import run

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "completion": "apple pie"}) + "\n" for i in range(8)))
    cfg = RunConfig.model_validate({
        "model": str(model_dir), "method": method, "early_stopping": {"patience": None},
        "data": {"path": str(data), "validation_split": 0.0, "max_length": 32},
        "train": {"max_steps": 3, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "gradient_checkpointing": False, "learning_rate": 1e-2, "weight_decay": 0.0, "eval_steps": 50},
    })
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    assert run(run_dir) == 0, rundir.read_status(run_dir)
    return run_dir, rundir.read_events(run_dir)[0]


def test_trainer_marks_each_unfreeze_on_the_chart(tiny_model_dir, tmp_path):
    run_dir, events = _train_run(tmp_path, tiny_model_dir, {"name": "gradual_unfreezing", "unfreeze_every": 1})
    unfreeze = [e for e in events if e["type"] == "unfreeze"]
    assert [e["layer"] for e in unfreeze] == [1, 0] and unfreeze[1]["step"] == 1
    assert (rundir.adapter_dir(run_dir) / "config.json").exists()


def test_trainer_measures_the_fish_mask_before_training(tiny_model_dir, tmp_path):
    run_dir, events = _train_run(tmp_path, tiny_model_dir, {"name": "fish_mask", "fish_mask_density": 0.01})
    mask = [e for e in events if e["type"] == "fish_mask"]
    assert len(mask) == 1 and mask[0]["selected"] > 0
    base = load_causal_lm(str(tiny_model_dir), dtype=torch.float32)
    tuned = load_causal_lm(str(rundir.adapter_dir(run_dir)), dtype=torch.float32)
    total = moved = 0
    for (n, p), q in zip(base.named_parameters(), tuned.parameters()):
        total += p.numel()
        moved += int((p != q).sum())
    assert 0 < moved <= total * 0.01 * 1.05 + 1
