"""The estimator's OFT/BOFT terms against what PEFT's layers really keep: the tensors autograd saves for backward
(counted with torch's saved-tensor hooks) and BOFT's permutation buffers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from backend.estimator import terms as T

IN, OUT, BLOCK = 256, 128, 16


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(IN, OUT, bias=False)

    def forward(self, x):
        return self.lin(x)


def peft_layer(kind: str, **kw):
    from peft import BOFTConfig, OFTConfig, get_peft_model

    from backend.methods.orthogonal import _skip_butterfly_kernel

    _skip_butterfly_kernel()
    config = (BOFTConfig(boft_block_size=BLOCK, target_modules=["lin"]) if kind == "boft" else
              OFTConfig(r=0, oft_block_size=BLOCK, target_modules=["lin"], **kw))
    model = get_peft_model(One(), config)
    for name, p in model.named_parameters():
        if "_R" in name:
            p.data.normal_(0, 0.01)  # away from the identity start, as after a few steps
    return model


def saved_bytes(model, tokens: int) -> int:
    """Bytes autograd saves in one forward, not counting the model's own parameters and buffers."""
    own = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in own:
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return t

    x = torch.randn(tokens, IN, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


@pytest.mark.parametrize("kind,kw", [("oft", {}), ("oft", {"use_cayley_neumann": False}), ("boft", {})])
def test_saved_tensors_per_token_and_per_step_are_the_formulas(kind, kw):
    model = peft_layer(kind, **kw)
    small, large = saved_bytes(model, 10), saved_bytes(model, 30)
    per_token = (large - small) / 20
    per_step = small - 10 * per_token
    want_token, want_step = T.orthogonal_saved_bytes(kind, [(IN, OUT)], BLOCK, 4,
                                                     neumann=kw.get("use_cayley_neumann", True))
    assert per_token == want_token
    # The Cayley transform's index and pivot tensors are a few KB beside the blocks (or BOFT's in x in matrices).
    assert want_step <= per_step <= want_step * 1.05 + 4096, (per_step, want_step)


def test_boft_buffers_are_an_fp32_square_per_adapted_layer():
    model = peft_layer("boft")
    assert sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "boft_P" in n) == \
        T.boft_buffer_bytes([IN])


def test_the_estimate_carries_the_rotations_and_boft_buffers(tiny_model_dir):
    from backend.core.config import RunConfig
    from backend.estimator import estimate

    def cfg(name, **train):
        return RunConfig(model=str(tiny_model_dir), method={"name": name, "oft_block_size": 8,
                                                           "target_modules": ["q_proj", "down_proj"]},
                         train={"precision": "fp32", **train})

    oft, boft = estimate(cfg("oft")), estimate(cfg("boft"))
    assert "OFT rotations" in oft.formulas["activations"] and "BOFT rotations" in boft.formulas["activations"]
    buffers = [p for p in boft.dtypes["weights"] if p["what"] == "BOFT permutation buffers"]
    # Two blocks: q_proj reads 64 features, down_proj 128.
    assert buffers and buffers[0]["bytes"] == 2 * 4 * (64 * 64 + 128 * 128)
    assert not any(p["what"] == "BOFT permutation buffers" for p in oft.dtypes["weights"])
    # Without checkpointing every block keeps its rotation until backward.
    assert estimate(cfg("oft", gradient_checkpointing=False)).terms_bytes["activations"] > \
        oft.terms_bytes["activations"]


@pytest.mark.parametrize("name", ["oft", "boft"])
def test_the_closed_form_agrees_with_a_traced_step(tiny_model_dir, name):
    """One real step traced on fake tensors (estimator.precise): the activations and BOFT's buffers that the
    closed form adds for the rotations are what the trace holds."""
    from backend.core.config import RunConfig
    from backend.estimator.precise import compare

    cfg = RunConfig.model_validate({
        "model": str(tiny_model_dir), "method": {"name": name, "oft_block_size": 16, "target_modules": "all-linear"},
        "train": {"batch_size": 4, "gradient_checkpointing": False}, "data": {"max_length": 128}})
    result = compare(cfg)
    closed, traced = result["closed_form_terms_bytes"], result["precise"]["peak_breakdown_bytes"]
    assert abs(closed["activations"] / traced["activations"] - 1) < 0.15, (closed, traced)
    assert abs(result["closed_vs_precise_error"]) < 0.03, result
    if name == "boft":  # per block: six linears reading 64 features and down_proj reading 128
        assert abs(traced["buffers"] - 2 * 4 * (6 * 64 * 64 + 128 * 128)) < 1024
