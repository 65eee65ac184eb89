"""Whether a loaded model keeps packed rows apart, checked on the model itself before training.

Packing relies on the attention reading a restart of `position_ids` as a sequence boundary
(backend.data.packing). transformers' mask builders and flash attention's varlen path do; a
model with its own attention code, no position ids or a recurrent state may not, and would then
train every row on the rows before it without any error. So the check is a measurement: two
short rows packed together must give the second row the same logits as that row alone. It
costs two forward passes of a dozen tokens.
"""
from __future__ import annotations

from typing import Optional

from backend.core.errors import UserError


def _logits(model, ids: list[int], positions: list[int]):
    import torch

    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([ids], device=device),
                position_ids=torch.tensor([positions], device=device), use_cache=False)
    return out.logits[0].float()


def cross_talk(model, vocab_size: Optional[int] = None) -> Optional[str]:
    """None when packed rows stay apart in this model, else why not (a sentence's middle)."""
    import torch

    vocab = int(vocab_size or getattr(model.config, "vocab_size", 0) or 32)
    first = [(7 * i + 3) % vocab for i in range(6)]
    other = [(11 * i + 5) % vocab for i in range(6)]
    second = [(13 * i + 1) % vocab for i in range(5)]
    was_training = model.training
    model.eval()  # dropout would make two equal computations differ
    try:
        with torch.no_grad():
            alone = _logits(model, second, list(range(5)))
            packed = _logits(model, first + second, list(range(6)) + list(range(5)))[6:]
            swapped = _logits(model, other + second, list(range(6)) + list(range(5)))[6:]
    except Exception as e:  # noqa: BLE001 - a model that cannot take position ids cannot pack
        return f"its forward pass does not accept packed rows ({type(e).__name__}: {e})"
    finally:
        model.train(was_training)
    scale = float(alone.abs().max()) + 1.0
    tol = (1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2) * scale
    worst = max(float((packed - alone).abs().max()), float((swapped - alone).abs().max()))
    if worst > tol:
        return (f"a packed row's logits change with the row before it (by up to {worst:.3g}), so its "
                f"attention ({getattr(model.config, '_attn_implementation', 'unknown')}) does not keep rows apart")
    return None


def require_isolated_packing(model) -> None:
    """Refuse packing with a sentence where the model would let packed rows attend to each other."""
    why = cross_talk(model)
    if why:
        raise UserError(f"Packing cannot be used with this model: {why}. Turn packing off (Dataset tab or "
                        "data.packing: false); rows are then padded instead.")


def flattens_batches(model) -> bool:
    """Padding-free batches (the whole batch as one row) where attention runs varlen kernels."""
    impl = str(getattr(model.config, "_attn_implementation", "") or "")
    return "flash" in impl
