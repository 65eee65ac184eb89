"""LongLoRA's shifted sparse attention (S²-Attn) as a transformers attention implementation.

While a model trains, the sequence is cut into groups of G tokens and each token attends only
inside its group; half of the heads see the groups shifted by G/2, so information still flows
between neighbouring groups. At inference (and whenever the sequence fits in one group) this is
exactly transformers' sdpa attention, which is why a LongLoRA adapter needs nothing special to load.

Unlike the reference implementation, causality and padding stay exact in every group, including
the shifted group that wraps the sequence's end onto its start: a group's mask is the block of the
full causal-and-padding mask at the group's (rolled) positions, so no token sees a later one.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

# The name the model's config carries while S²-Attn is on; never written to config.json
# (transformers does not serialize `_attn_implementation_internal`).
S2_ATTENTION = "longlora_s2"
DEFAULT_GROUP_RATIO = 0.25
# Set on each attention module by `enable`; the function reads it from the module it is called for.
RATIO_ATTR = "ftstudio_s2_group_ratio"


def group_size(seq_len: int, ratio: float) -> int:
    """Tokens per group: the paper's N/4 for ratio 1/4, at least one token."""
    return max(1, math.ceil(seq_len * ratio))


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _group_mask(positions: torch.Tensor, seq_len: int, given: Optional[torch.Tensor]) -> torch.Tensor:
    """Boolean (batch, heads, groups, G, G) mask for groups whose tokens sit at `positions` (groups, G).

    Equal to rolling the full N×N causal-and-padding mask by the heads' shift on both axes and
    taking its diagonal G×G blocks, without building the N×N mask when the model passed none.
    Positions >= seq_len are the internal padding that makes N a multiple of G; they come after
    every real token, so causality alone keeps real tokens from attending to them.
    """
    allowed = (positions[:, :, None] >= positions[:, None, :])[None, None]
    if given is not None:
        clamped = positions.clamp(max=seq_len - 1)
        allowed = allowed & given[:, :, clamped[:, :, None], clamped[:, None, :]]
    # A query with nothing to attend to (an internal or batch padding token whose whole group is
    # padding) attends to itself, so no kernel produces NaN; its output is never read.
    empty = ~allowed.any(dim=-1, keepdim=True)
    eye = torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device)
    return allowed | (empty & eye)


def _grouped_attention(query, key, value, mask, size: int, dropout: float, scaling: Optional[float]):
    """Attention inside consecutive groups of `size` tokens: q/k/v (B, H, Np, D), mask (B|1, H|1, n, G, G)."""
    batch, heads, padded, _ = query.shape
    groups = padded // size

    # Groups become batch entries: 4-D inputs keep sdpa on its fused kernels.
    def split(t: torch.Tensor) -> torch.Tensor:  # (B, H, Np, D) -> (B * n, H, G, D)
        t = t.reshape(batch, heads, groups, size, t.shape[-1]).transpose(1, 2)
        return t.reshape(batch * groups, heads, size, t.shape[-1])

    mask = mask.transpose(1, 2).expand(batch, groups, mask.shape[1], size, size)
    out = nn.functional.scaled_dot_product_attention(
        split(query), split(key), split(value), attn_mask=mask.reshape(batch * groups, -1, size, size),
        dropout_p=dropout, scale=scaling)
    return out.reshape(batch, groups, heads, size, -1).transpose(1, 2).reshape(batch, heads, padded, -1)


def shifted_sparse_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Optional[torch.Tensor],
    ratio: float, dropout: float = 0.0, scaling: Optional[float] = None,
) -> torch.Tensor:
    """S²-Attn on (B, H, N, D) tensors with as many key/value heads as query heads; returns (B, H, N, D).

    `attention_mask` is None (plain causal) or a boolean (B|1, 1|H, N, N) mask, True = may attend.
    """
    batch, heads, seq_len, _ = query.shape
    size = group_size(seq_len, ratio)
    padded = math.ceil(seq_len / size) * size
    extra = padded - seq_len
    if extra:
        query, key, value = (nn.functional.pad(t, (0, 0, 0, extra)) for t in (query, key, value))
    device = query.device
    order = torch.arange(padded, device=device)
    half, shift = heads // 2, size // 2

    def head_slice(mask: Optional[torch.Tensor], part: slice) -> Optional[torch.Tensor]:
        return mask if mask is None or mask.shape[1] == 1 else mask[:, part]

    outs = []
    # Heads [0, half) keep the groups in place; heads [half, H) see the sequence rolled left by G/2.
    for part, roll in ((slice(0, half), 0), (slice(half, heads), shift)):
        if part.start == part.stop:
            continue
        q, k, v = (t[:, part] for t in (query, key, value))
        if roll:
            q, k, v = (t.roll(-roll, dims=2) for t in (q, k, v))
        positions = ((order + roll) % padded).view(-1, size)
        mask = _group_mask(positions, seq_len, head_slice(attention_mask, part))
        out = _grouped_attention(q, k, v, mask, size, dropout, scaling)
        outs.append(out.roll(roll, dims=2) if roll else out)
    return torch.cat(outs, dim=1)[:, :, :seq_len]


def s2_attention_forward(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
    is_causal: Optional[bool] = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: (B, N, H, D) output and no attention weights."""
    ratio = float(getattr(module, RATIO_ATTR, DEFAULT_GROUP_RATIO))
    seq_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    plain = (
        not module.training or seq_len <= group_size(seq_len, ratio) or seq_len != kv_len or not causal
        or getattr(module, "sliding_window", None) is not None
        or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
    )
    if plain:
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = shifted_sparse_attention(query, key, value, attention_mask, ratio, dropout, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make S2_ATTENTION a valid attn_implementation whose masks are built like sdpa's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(S2_ATTENTION, s2_attention_forward)
    AttentionMaskInterface.register(S2_ATTENTION, sdpa_mask)


def unsupported_reason(model: nn.Module) -> Optional[str]:
    """Why S²-Attn cannot run on this model (a sentence fragment), or None when it can."""
    kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    cls = type(model)
    can_set = getattr(cls, "_can_set_attn_implementation", None)
    if not (getattr(cls, "_supports_attention_backend", False) and getattr(cls, "_supports_sdpa", False)
            and callable(can_set) and can_set()):
        return f"{kind} does not use transformers' attention interface"
    config = model.config
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    if sliding or "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return f"{kind} uses sliding-window attention, which S²-Attn's groups would change"
    return None


def enable(model: nn.Module, ratio: float) -> None:
    """Switch a supported model (see `unsupported_reason`) to S²-Attn with groups of ratio × N tokens."""
    register()
    for module in model.modules():
        if "attention" in type(module).__name__.lower():
            setattr(module, RATIO_ATTR, float(ratio))
    model.set_attn_implementation(S2_ATTENTION)
