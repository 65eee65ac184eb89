"""The second set of methods (LoRA-FA, AdaLoRA, VeRA, IA3, adapters, prompts...) on the tiny model: exactly the intended parameters train, the saved result reloads
to the same logits, and the estimator counts the same trainable parameters as the applied method."""
from __future__ import annotations

import re

import pytest
import torch

from backend.core.config import RunConfig
from backend.methods import (
    METHODS, count_parameters, create_optimizer, get_method, load_trainable_model, validate_for_model,
)
from backend.core.models import load_causal_lm, load_model_config
from tests.method_steps import snapshot, train_steps

# Which parameter names each method must train, and nothing else.
INTENDED = {
    "lora_fa": r".*\.(q_proj|v_proj)\.lora_B\.",
    "adalora": r".*\.(q_proj|v_proj)\.lora_[ABE]\.",
    "vera": r".*\.(q_proj|v_proj)\.vera_lambda_[bd]\.",
    "ia3": r".*\.(k_proj|v_proj|down_proj)\.ia3_l\.",
    "longlora": r".*(\.(q_proj|v_proj)\.lora_[AB]\.|embed_tokens\.modules_to_save\.|norm\.modules_to_save\.)",
    "prompt_tuning": r"prompt_encoder\.default\.embedding\.",
    "prefix_tuning": r"prompt_encoder\.default\.embedding\.",
    "p_tuning_v2": r"prompt_encoder\.default\.(embedding|transform)\.",
}
METHOD_SETTINGS = {"vera": {"r": 8}, "adalora": {"r": 2, "init_r": 4}, "prompt_tuning": {"num_virtual_tokens": 4},
                   "prefix_tuning": {"num_virtual_tokens": 4},
                   "p_tuning_v2": {"num_virtual_tokens": 4, "bottleneck": 16}}


def run_cfg(model_dir, name: str, method: dict | None = None, **train) -> RunConfig:
    return RunConfig(
        model=str(model_dir),
        method={"name": name, "r": 4, "num_layers": 1, "dropout": 0.0,
                **METHOD_SETTINGS.get(name, {}), **(method or {})},
        train={"precision": "fp32", "gradient_checkpointing": False, "learning_rate": 1e-2, "max_steps": 3,
               "weight_decay": 0.0, **train},
        data={"max_length": 64},
    )


PROBE = torch.arange(10, 30).unsqueeze(0)


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


def reload_peft(model_dir, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_causal_lm(str(model_dir), dtype=torch.float32), str(adapter_dir))


def test_every_issue_7_method_here_is_registered_with_help_and_merge_answer():
    for name in INTENDED:
        spec = get_method(name)
        assert 20 < len(spec.help) < 400 and spec.help.count(". ") <= 2
        ok, reason = spec.can_merge(run_cfg("x", name))
        assert ok or reason


@pytest.mark.parametrize("name", list(INTENDED))
def test_peft_method_trains_exactly_its_parameters_and_reloads(tiny_model_dir, tmp_path, name):
    from backend.estimator import estimate

    cfg = run_cfg(tiny_model_dir, name)
    assert validate_for_model(cfg, load_model_config(cfg.model)) == {}
    model = load_trainable_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    pattern = re.compile(INTENDED[name])
    assert trainable and all(pattern.match(n) for n in trainable), sorted(trainable)[:6]
    assert estimate(cfg).trainable_params == count_parameters(model)[0]

    before = snapshot(model)
    train_steps(model, cfg)
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    # AdaLoRA's rank allocator may prune a module's whole budget back to zero singular values right
    # away (E starts at zero), so such an E can end where it began; everything else must move.
    pruned = {n for n in trainable - changed if ".lora_E." in n and not after[n].any()}
    assert changed == trainable - pruned and (name == "adalora" or not pruned)

    expected = logits(model)
    model.save_pretrained(str(tmp_path / "adapter"))
    reloaded = reload_peft(tiny_model_dir, tmp_path / "adapter")
    assert torch.allclose(logits(reloaded), expected, atol=1e-5)


def test_lora_fa_optimizer_keeps_a_frozen(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, "lora_fa")
    model = load_trainable_model(cfg)
    opt = create_optimizer(model, cfg)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in in_opt or not p.requires_grad for n, p in model.named_parameters() if "lora_A" in n)


def test_adalora_schedule_uses_the_run_length(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, "adalora", max_steps=40)
    model = load_trainable_model(cfg)
    assert model.peft_config["default"].total_step == 40
    bad = run_cfg(tiny_model_dir, "adalora", method={"init_r": 2, "r": 8})
    assert "method.init_r" in validate_for_model(bad, load_model_config(bad.model))


def test_prompt_tuning_starts_from_the_given_text(tiny_model_dir):
    from transformers import AutoTokenizer

    cfg = run_cfg(tiny_model_dir, "prompt_tuning", method={"prompt_init_text": "Answer briefly", "num_virtual_tokens": 3})
    model = load_trainable_model(cfg)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tok("Answer briefly")["input_ids"][:3]
    emb = model.get_input_embeddings().weight[ids]
    prompt = model.prompt_encoder["default"].embedding.weight[: len(ids)]
    assert torch.allclose(prompt, emb)


def test_methods_without_a_merge_say_why():
    for name in ("prompt_tuning", "prefix_tuning", "p_tuning_v2"):
        ok, reason = METHODS[name].can_merge(None)
        assert not ok and "virtual tokens" in reason


@pytest.mark.parametrize("name", ["adalora", "prompt_tuning", "lora_fa"])
def test_trainer_trains_and_saves_a_reloadable_adapter(tiny_model_dir, tmp_path, name):
    """The real training path: our SFT batches (PEFT pads labels for virtual tokens), the method's
    callbacks (AdaLoRA's rank allocation) and optimizer (LoRA-FA), then a PEFT adapter on disk."""
    import json

    from backend.runs import rundir
    from backend.training.run import run

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "completion": "apple pie"}) + "\n" for i in range(8)))
    cfg = RunConfig.model_validate({
        "model": str(tiny_model_dir), "method": {"name": name, "r": 2, "init_r": 4, "num_virtual_tokens": 4,
                                                 "prompt_init_text": "Answer:"},
        "early_stopping": {"patience": None}, "data": {"path": str(data), "validation_split": 0.0, "max_length": 32},
        "train": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "gradient_checkpointing": False, "learning_rate": 1e-2, "eval_steps": 50}})
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    assert run(run_dir) == 0, rundir.read_status(run_dir).get("error")
    adapter = rundir.adapter_dir(run_dir)
    losses = [e["loss"] for e in rundir.read_events(run_dir)[0] if e["type"] == "train"]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    assert logits(reload_peft(tiny_model_dir, adapter)).isfinite().all()
