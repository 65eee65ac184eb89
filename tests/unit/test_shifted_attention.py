"""LongLoRA's S²-Attn: sdpa at inference, grouped and shifted while training, never a future or padding token."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from backend.methods import shifted_attention as s2

HEADS, KV_HEADS, DIM = 4, 2, 8


class FakeAttention(nn.Module):
    """What transformers passes as `module`: the attention layer with its GQA factor."""

    def __init__(self, ratio: float = 0.25, kv_groups: int = HEADS // KV_HEADS):
        super().__init__()
        self.num_key_value_groups = kv_groups
        self.is_causal = True
        setattr(self, s2.RATIO_ATTR, ratio)


def qkv(n: int, batch: int = 2, kv_heads: int = KV_HEADS, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, HEADS, n, DIM, generator=g, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, n, DIM, generator=g, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, n, DIM, generator=g, dtype=torch.float64)
    return q, k, v


def full_causal(q, k, v):
    rep = HEADS // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def run(module, q, k, v, mask=None):
    out, weights = s2.s2_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=None)
    assert weights is None and out.shape == (q.shape[0], q.shape[2], HEADS, DIM)
    return out


def test_eval_mode_is_exactly_sdpa_causal_attention():
    q, k, v = qkv(16)
    module = FakeAttention().eval()
    assert torch.allclose(run(module, q, k, v), full_causal(q, k, v))


def test_training_groups_change_the_output_and_ratio_one_is_full_attention():
    q, k, v = qkv(16)
    assert not torch.allclose(run(FakeAttention(0.25).train(), q, k, v), full_causal(q, k, v))
    assert torch.allclose(run(FakeAttention(1.0).train(), q, k, v), full_causal(q, k, v))


def jacobian_rows(module, n: int, mask=None, kv_heads: int = KV_HEADS):
    """For each output position i: |d out[:, i] / d k| + |d out[:, i] / d v| per (kv head, key position)."""
    q, k, v = qkv(n, kv_heads=kv_heads)
    k.requires_grad_(True)
    v.requires_grad_(True)
    rows = []
    for i in range(n):
        out = run(module, q, k, v, mask)
        gk, gv = torch.autograd.grad(out[:, i].sum(), (k, v))
        rows.append((gk.abs() + gv.abs()).sum(dim=(0, 3)))  # (kv heads, n)
    return torch.stack(rows)  # (n queries, kv heads, n keys)


@pytest.mark.parametrize("n", [8, 10, 13])
def test_no_token_sees_a_later_token_in_any_head_or_group(n):
    """Including the shifted heads' last group, which wraps the sequence's end onto its start."""
    reach = jacobian_rows(FakeAttention(0.25).train(), n)
    later = torch.ones(n, n, dtype=torch.bool).triu(1)
    assert (reach[:, :, :][later[:, None, :].expand(-1, KV_HEADS, -1)] == 0).all()
    # The grouping really is sparse: some earlier tokens are out of reach, the token itself never is.
    earlier = torch.ones(n, n, dtype=torch.bool).tril(-1)
    assert (reach.sum(1)[earlier] == 0).any()
    assert (reach.sum(1).diagonal() > 0).all()


def test_unshifted_heads_stay_inside_their_group():
    n, size = 12, 3  # ratio 0.25 -> groups of 3: [0,1,2] [3,4,5] ...
    reach = jacobian_rows(FakeAttention(0.25, kv_groups=1).train(), n, kv_heads=HEADS)
    for i in range(n):
        group = i // size
        for j in range(n):
            same = j // size == group and j <= i
            assert (reach[i, :HEADS // 2, j] > 0).all() == same, (i, j)


def test_shifted_heads_bridge_neighbouring_groups():
    n = 12  # shift of 1 (G // 2): token 3 and token 2 share a shifted group [2, 3, 4]
    reach = jacobian_rows(FakeAttention(0.25, kv_groups=1).train(), n, kv_heads=HEADS)
    assert (reach[3, HEADS // 2:, 2] > 0).all() and (reach[3, :HEADS // 2, 2] == 0).all()


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_is_never_attended(side):
    n = 12
    valid = torch.ones(2, n, dtype=torch.bool)
    pads = slice(n - 4, n) if side == "right" else slice(0, 4)
    valid[1, pads] = False
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    mask = (causal[None] & valid[:, None, :])[:, None]  # what transformers' sdpa_mask builds: (B, 1, N, N)
    q, k, v = qkv(n)
    k.requires_grad_(True)
    v.requires_grad_(True)
    module = FakeAttention(0.25).train()
    for i in range(n):
        if not valid[1, i]:
            continue
        out = run(module, q, k, v, mask)
        gk, gv = torch.autograd.grad(out[1, i].sum(), (k, v))
        assert (gk[1][:, pads] == 0).all() and (gv[1][:, pads] == 0).all(), i
        assert out.isfinite().all()


def test_group_masks_are_the_diagonal_blocks_of_the_rolled_full_mask():
    n, size, shift = 12, 4, 2
    valid = torch.tensor([True] * 9 + [False] * 3)
    full = torch.ones(n, n, dtype=torch.bool).tril() & valid[None, :]
    positions = ((torch.arange(n) + shift) % n).view(-1, size)
    blocks = s2._group_mask(positions, n, full[None, None])[0, 0]
    rolled = full.roll((-shift, -shift), dims=(0, 1))
    expected = torch.stack([rolled[g * size:(g + 1) * size, g * size:(g + 1) * size] for g in range(n // size)])
    # Rows with nothing to attend to (padding queries) attend to themselves instead of producing NaN.
    empty = ~expected.any(-1, keepdim=True)
    assert torch.equal(blocks, expected | (empty & torch.eye(size, dtype=torch.bool)))


# ---- on a model --------------------------------------------------------------------------------

def longlora_cfg(model_dir, ratio: float = 0.25):
    from backend.core.config import RunConfig

    return RunConfig(model=str(model_dir), method={"name": "longlora", "r": 4, "dropout": 0.0,
                                                   "s2_attn_group_ratio": ratio},
                     train={"precision": "fp32", "gradient_checkpointing": False})


def test_longlora_trains_with_s2_attn_and_saves_a_plain_config(tiny_model_dir, tmp_path, capsys):
    from backend.methods import load_trainable_model
    from backend.core.models import load_causal_lm

    model = load_trainable_model(longlora_cfg(tiny_model_dir))
    assert "shifted sparse attention" in capsys.readouterr().out
    base = model.get_base_model()
    assert base.config._attn_implementation == s2.S2_ATTENTION
    plain = load_causal_lm(str(tiny_model_dir), dtype=torch.float32)
    ids = torch.arange(10, 30).unsqueeze(0)
    with torch.no_grad():
        plain.train()
        assert not torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)
        model.eval()
        plain.eval()
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5)
    base.config.save_pretrained(str(tmp_path))
    assert s2.S2_ATTENTION not in (tmp_path / "config.json").read_text()


def test_a_model_without_the_attention_interface_trains_with_full_attention(tiny_model_dir, monkeypatch, capsys):
    from transformers import LlamaForCausalLM

    from backend.methods import load_trainable_model

    monkeypatch.setattr(LlamaForCausalLM, "_supports_attention_backend", False)
    model = load_trainable_model(longlora_cfg(tiny_model_dir))
    out = capsys.readouterr().out
    assert ("[ftstudio] LongLoRA: llama does not use transformers' attention interface; training with full "
            "attention (LoRA + embeddings + norms only).") in out
    assert model.get_base_model().config._attn_implementation == "sdpa"


def test_ratio_one_keeps_full_attention(tiny_model_dir, capsys):
    from backend.methods import load_trainable_model

    model = load_trainable_model(longlora_cfg(tiny_model_dir, ratio=1.0))
    assert "ratio is 1.0" in capsys.readouterr().out
    assert model.get_base_model().config._attn_implementation == "sdpa"
