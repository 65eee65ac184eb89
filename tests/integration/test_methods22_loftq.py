"""LoftQ (issue 22): QLoRA's adapter starts at the best low-rank fit of the 4-bit base's quantization error, so
base + adapter begin closer to the original weights than the 4-bit base alone; offered only on a 4-bit base."""
from __future__ import annotations

import pytest
import torch

from backend.core.config import RunConfig
from backend.core.models import load_causal_lm, load_model_config
from backend.methods import load_trainable_model, validate_for_model
from tests.method_steps import snapshot, train_steps

pytestmark = pytest.mark.timeout(300)


def run_cfg(model_dir, init: str = "loftq", name: str = "qlora") -> RunConfig:
    # alpha != r on purpose: the adapter adds scale * B @ A (scale 4 here), which the start must account for.
    return RunConfig(model=str(model_dir),
                     method={"name": name, "r": 4, "alpha": 16, "dropout": 0.0, "lora_init": init,
                             "target_modules": ["q_proj", "v_proj", "down_proj"], "compute_dtype": "fp32"},
                     train={"precision": "fp32", "gradient_checkpointing": False, "learning_rate": 1e-2,
                            "weight_decay": 0.0})


def errors(model, originals) -> list[tuple[str, float, float]]:
    """(layer, ||W - Q||, ||W - (Q + scale B A)||) for each adapted 4-bit linear. Q is read from the 4-bit layer's
    own forward on the identity (Q^T), not from the dequantization the start used."""
    out = []
    for name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})):
            continue
        base = module.get_base_layer()
        assert type(base.weight).__name__ == "Params4bit"
        with torch.no_grad():
            q = base(torch.eye(module.in_features)).T.float()
            ba = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
        w = originals[name.removeprefix("base_model.model.")]
        out.append((name, float((w - q).norm()), float((w - q - ba).norm())))
    return out


def test_loftq_starts_closer_to_the_original_weights_and_trains(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir)
    assert validate_for_model(cfg, load_model_config(cfg.model)) == {}
    original = load_causal_lm(str(tiny_model_dir), dtype=torch.float32)
    originals = {n: m.weight.detach() for n, m in original.named_modules() if isinstance(m, torch.nn.Linear)}

    model = load_trainable_model(cfg)
    found = errors(model, originals)
    assert len(found) == 6  # three targets in two blocks
    for name, quantized_only, with_adapter in found:
        # The point of LoftQ: the adapter removes a real share of the quantization error at step 0.
        assert with_adapter < 0.95 * quantized_only, (name, quantized_only, with_adapter)

    # The default start (B = 0) adds nothing: the test above would fail with LoftQ switched off.
    plain = load_trainable_model(run_cfg(tiny_model_dir, "default"))
    assert all(abs(a - b) < 1e-6 for _, a, b in errors(plain, originals))

    before = snapshot(model)
    train_steps(model, cfg, steps=2)
    after = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not torch.equal(before[n], after[n]) for n in trainable)
    with torch.no_grad():
        assert model(input_ids=torch.arange(10, 30).unsqueeze(0)).logits.isfinite().all()


def test_loftq_is_offered_on_a_4bit_base_only_and_pissa_not_there(tiny_model_dir):
    mc = load_model_config(str(tiny_model_dir))
    lora = validate_for_model(run_cfg(tiny_model_dir, "loftq", name="lora"), mc)
    assert "4-bit" in lora["method.lora_init"] and "QLoRA" in lora["method.lora_init"]
    pissa = validate_for_model(run_cfg(tiny_model_dir, "pissa"), mc)
    assert "LoftQ" in pissa["method.lora_init"]
    assert "method.lora_init" not in validate_for_model(run_cfg(tiny_model_dir, "default"), mc)


def test_a_loftq_run_trains_through_the_trainer(tiny_model_dir, tmp_path):
    from tests.integration.test_methods22_orthogonal import trainer_run

    trainer_run(tmp_path, tiny_model_dir, {"name": "qlora", "r": 4, "alpha": 16, "lora_init": "loftq",
                                           "compute_dtype": "fp32"})
