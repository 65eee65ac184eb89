"""Each first-cut method on the tiny model: the right parameters train, counts match PEFT's."""
from __future__ import annotations

import re

import pytest
import torch

from backend.core.config import RunConfig
from backend.methods import (
    METHODS, count_parameters, create_optimizer, exact_counts, load_trainable_model, validate_for_model,
)
from backend.core.models import load_model_config
from tests.method_steps import snapshot, train_steps

# Which parameter names each method must train, and nothing else.
INTENDED = {
    "full": r".*",
    "last_layers": r"model\.(layers\.1\.|norm\.)",
    "lora": r".*\.(q_proj|v_proj)\.lora_[AB]\.",
    "qlora": r".*\.(q_proj|v_proj)\.lora_[AB]\.",
    "dora": r".*\.(q_proj|v_proj)\.lora_(A|B|magnitude_vector)\.",
    "rslora": r".*\.(q_proj|v_proj)\.lora_[AB]\.",
    "loraplus": r".*\.(q_proj|v_proj)\.lora_[AB]\.",
}


def run_cfg(model_dir, name: str, **train) -> RunConfig:
    return RunConfig(
        model=str(model_dir),
        method={"name": name, "r": 4, "num_layers": 1, "compute_dtype": "fp32", "dropout": 0.0},
        train={"precision": "fp32", "gradient_checkpointing": False, "learning_rate": 1e-2, **train},
        data={"max_length": 64},
    )


def base_logits(model, ids) -> torch.Tensor | None:
    if not hasattr(model, "disable_adapter"):
        return None
    with torch.no_grad(), model.disable_adapter():
        return model(input_ids=ids).logits.clone()


def test_intended_table_covers_every_first_cut_method():
    assert set(INTENDED) <= set(METHODS)


@pytest.mark.parametrize("name", list(INTENDED))
def test_one_step_changes_exactly_the_intended_parameters(tiny_model_dir, name):
    cfg = run_cfg(tiny_model_dir, name)
    assert validate_for_model(cfg, load_model_config(cfg.model)) == {}
    model = load_trainable_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    pattern = re.compile(INTENDED[name])
    assert trainable and all(pattern.match(n) for n in trainable), sorted(trainable)[:5]
    probe = torch.arange(10, 30).unsqueeze(0)
    base_before, before = base_logits(model, probe), snapshot(model)
    train_steps(model, cfg)
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable
    if base_before is not None:  # the frozen base, quantized or not, computes exactly as before
        assert torch.equal(base_logits(model, probe), base_before)


@pytest.mark.parametrize("name", ["lora", "dora", "rslora", "qlora"])
def test_meta_count_equals_peft_count_on_the_loaded_model(tiny_model_dir, name):
    cfg = run_cfg(tiny_model_dir, name)
    model = load_trainable_model(cfg)
    peft_trainable, peft_total = model.get_nb_trainable_parameters()
    assert exact_counts(cfg) == (peft_trainable, peft_total) == count_parameters(model)


def test_qlora_still_trains_after_an_evaluation_pass(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, "qlora")
    model = load_trainable_model(cfg)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.arange(10, 30).unsqueeze(0))
    model.train()
    ids = torch.arange(5, 29).view(2, 12)
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    # B starts at zero, so only B has a non-zero gradient on the first step.
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_qlora_loads_a_4bit_base(tiny_model_dir):
    model = load_trainable_model(run_cfg(tiny_model_dir, "qlora"))
    q = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q).__name__ == "Linear4bit" and q.weight.quant_type == "nf4"


def test_loraplus_gives_b_a_larger_learning_rate(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, "loraplus")
    model = load_trainable_model(cfg)
    opt = create_optimizer(model, cfg)
    lrs = {g["lr"] for g in opt.param_groups if g["params"]}
    assert lrs == {1e-2, 1e-2 * cfg.method.loraplus_lr_ratio}
    assert create_optimizer(model, run_cfg(tiny_model_dir, "lora")) is None


def test_gradient_checkpointing_trains_lora_with_frozen_embeddings(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, "lora", gradient_checkpointing=True)
    model = load_trainable_model(cfg)
    assert model.base_model.model.is_gradient_checkpointing
    before = snapshot(model)
    train_steps(model, cfg)
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if "lora_B" in n)


def test_bf16_loads_bf16_weights_and_fp16_full_loads_fp32(tiny_model_dir):
    from backend.methods import load_dtype

    assert load_dtype(run_cfg(tiny_model_dir, "lora", precision="bf16")) == torch.bfloat16
    assert load_dtype(run_cfg(tiny_model_dir, "full", precision="fp16")) == torch.float32
    assert load_dtype(run_cfg(tiny_model_dir, "lora", precision="fp16")) == torch.float16
