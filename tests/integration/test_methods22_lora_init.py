"""PiSSA and OLoRA starts (issue 22): the adapter begins from the weights' own decomposition, which moves
part of each base weight into the adapter; the saved adapter is converted so the untouched base plus the
adapter gives the trained model's logits."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from backend.core.config import RunConfig
from backend.core.models import load_causal_lm
from backend.methods import exact_counts, load_trainable_model, save_trained, validate_for_model
from tests.method_steps import train_steps

pytestmark = pytest.mark.timeout(300)
PROBE = torch.arange(10, 30).unsqueeze(0)


def run_cfg(model_dir, init: str, objective: str = "sft") -> RunConfig:
    return RunConfig(model=str(model_dir), objective=objective,
                     method={"name": "lora", "r": 4, "dropout": 0.0, "lora_init": init},
                     train={"precision": "fp32", "gradient_checkpointing": False, "learning_rate": 1e-2,
                            "weight_decay": 0.0})


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


def reload(model_dir, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_causal_lm(str(model_dir), dtype=torch.float32), str(adapter_dir))


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_converted_adapter_on_the_original_base_gives_the_trained_logits(tiny_model_dir, tmp_path, init):
    cfg = run_cfg(tiny_model_dir, init)
    model = load_trainable_model(cfg)
    base_q = load_causal_lm(str(tiny_model_dir), dtype=torch.float32).model.layers[0].self_attn.q_proj.weight
    # The start really is the decomposition: the base layer now holds the residual, not the weight.
    residual = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(residual, base_q, atol=1e-4)
    train_steps(model, cfg, steps=2)
    trained = logits(model)
    out = tmp_path / "adapter"
    save_trained(SimpleNamespace(model=model, processing_class=None), str(out))
    converted = logits(reload(tiny_model_dir, out))
    assert torch.allclose(converted, trained, atol=1e-4), (converted - trained).abs().max()

    # The converted adapter is a plain LoRA (twice the rank): merge, llama.cpp and other tools read it as one.
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True and config["r"] == 8

    # Without the conversion, the trained factors read as a plain LoRA on the original base give other
    # logits: the test would catch a save that forgot it.
    raw = tmp_path / "raw"
    model.save_pretrained(str(raw))
    raw_config = json.loads((raw / "adapter_config.json").read_text())
    assert raw_config["init_lora_weights"] == init
    (raw / "adapter_config.json").write_text(json.dumps({**raw_config, "init_lora_weights": True}))
    assert not torch.allclose(logits(reload(tiny_model_dir, raw)), trained, atol=1e-3)


def test_default_start_keeps_the_base_and_the_skeleton_counts_any_start(tiny_model_dir):
    model = load_trainable_model(run_cfg(tiny_model_dir, "default"))
    base_q = load_causal_lm(str(tiny_model_dir), dtype=torch.float32).model.layers[0].self_attn.q_proj.weight
    assert torch.equal(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, base_q)
    assert not hasattr(model, "ftstudio_save")
    assert exact_counts(run_cfg(tiny_model_dir, "pissa")) == exact_counts(run_cfg(tiny_model_dir, "default"))


def test_pissa_is_refused_where_the_reference_is_the_adapter_switched_off(tiny_model_dir):
    from backend.core.models import load_model_config

    mc = load_model_config(str(tiny_model_dir))
    problems = validate_for_model(run_cfg(tiny_model_dir, "pissa", objective="dpo"), mc)
    assert "method.lora_init" in problems and "reference" in problems["method.lora_init"]
    assert "method.lora_init" not in validate_for_model(run_cfg(tiny_model_dir, "pissa"), mc)
