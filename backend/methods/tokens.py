"""Embedding rows for the special tokens a run adds to the tokenizer (`data.add_special_tokens`).

Training grows the input embeddings (and an untied output head) to the new tokenizer's size, starts the
new rows at the mean of the old ones, and lets the method train them: full fine-tuning trains every row
anyway; LoRA-family methods get PEFT's `trainable_token_indices`, which trains only the new rows (a few KB
in the adapter) and leaves every old row as the base has it. The catalog's `new_tokens` flag says which
methods can; `new_tokens_problems` refuses the rest with a sentence.

Loading an adapter for chat, merge, export or evaluation grows the base the same way first
(`fit_base_to_adapter`), since the adapter's rows live at indices the base model does not have.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from torch import nn

from backend.core.catalog import LORA_INITS, METHODS, OBJECTIVE
from backend.core.errors import UserError
from backend.methods.hooks import is_meta

FIELD = "data.add_special_tokens"
_NEW_ROWS = "ftstudio_new_rows"  # the attribute grow_embeddings leaves on the model for the method's apply


def new_tokens_problems(cfg: Any) -> dict[str, str]:
    """field -> sentence when the run adds tokens its method or objective cannot train (no model needed)."""
    if not cfg.data.add_special_tokens:
        return {}
    info = METHODS[cfg.method.name]
    able = ", ".join(m.title for m in METHODS.values() if m.new_tokens)
    if not info.new_tokens:
        return {FIELD: (f"{info.title} cannot train the embedding rows of added tokens, so they would stay at "
                        f"their starting values; choose {able}, or clear the added tokens (Dataset tab).")}
    start = LORA_INITS[cfg.method.lora_init] if "lora_init" in info.params else None
    if start is not None and start.changes_base:
        # PEFT's conversion of the trained adapter (back to the untouched base) writes the LoRA matrices only.
        return {FIELD: (f"{start.title.split(' (')[0]}'s saved adapter is converted to apply to the original base, and that "
                        "conversion keeps only the LoRA matrices, not the added tokens' rows; use the default "
                        "adapter start with added tokens.")}
    if cfg.objective == OBJECTIVE.reward:
        return {FIELD: ("A reward model scores text with a one-number head and does not learn to write the "
                        "added tokens; clear the added tokens for this objective.")}
    return {}


def trained_tokens(cfg: Any) -> list[str]:
    """The added tokens whose rows the method trains: what changes the parameter count (a method that cannot
    train them is refused at the field, and its estimate is the one without them)."""
    return list(cfg.data.add_special_tokens) if METHODS[cfg.method.name].new_tokens else []


def _tied(model: nn.Module) -> bool:
    # PEFT decides from the config whether the head follows the embedding's trainable tokens; so do we.
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


def grow_embeddings(model: nn.Module, size: int, new_ids: Sequence[int]) -> nn.Module:
    """Give the model `size` token rows (at least its current ones) and start `new_ids` at the mean row.

    The mean, not a random row: a new token then scores like an average token, so at the start the model's
    predictions on existing text are almost unchanged (a random output row can take probability mass from
    every real token), and the start is deterministic, so a reloaded base with the adapter switched off is
    exactly the model training began from. Works on meta tensors (the estimator's skeleton: shapes only).
    """
    import torch

    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    if size > old:
        # mean_resizing=False: transformers' own version samples around the mean (random); ours is set below.
        model.resize_token_embeddings(size, mean_resizing=False)
    ids = [i for i in new_ids if i < max(size, old)]
    setattr(model, _NEW_ROWS, tuple(ids))
    if not ids or is_meta(model):
        return model
    mats = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not mats[0]:
        mats.append(head.weight)
    # New ids follow the base tokenizer's: the rows below the first are its tokens (rows past them are a padded
    # vocabulary's untrained spares, not part of the mean).
    real = min(ids)
    with torch.no_grad():
        for w in mats:
            index = torch.tensor(ids, dtype=torch.long, device=w.device)
            w[index] = w[:real].float().mean(0).to(w.dtype)
    return model


def new_rows(model: nn.Module) -> tuple[int, ...]:
    """The rows grow_embeddings started for added tokens (empty when the run adds none)."""
    return tuple(getattr(model, _NEW_ROWS, ()) or ())


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def trainable_token_indices(model: nn.Module) -> Optional[Any]:
    """PEFT's LoraConfig.trainable_token_indices for the model's new rows, or None.

    Tied weights: the embedding's rows, which PEFT ties the head's to. Untied: the same rows in both the
    embedding and the head, so the model can read and also write the new tokens (an end-of-turn marker must
    be predicted to stop a reply)."""
    ids = list(new_rows(model))
    if not ids:
        return None
    head = model.get_output_embeddings()
    if _tied(model) or head is None:
        return ids
    embedding = {_module_name(model, model.get_input_embeddings()): ids}
    if getattr(head, "bias", None) is not None:
        # PEFT's wrapped head computes x W^T with no bias term: a head with a bias keeps its rows as they are
        # (the new ones at the mean start) rather than lose the bias for every token.
        return embedding
    return {**embedding, _module_name(model, head): ids}


def finish_peft(model: Any) -> Any:
    """What a PEFT model whose token rows train needs beyond PEFT: small saves, and a head TRL's fused loss reads.

    TRL's SFT loss projects through `lm_head.weight` and `lm_head.bias` itself, in chunks; PEFT's wrapper of the
    head answers `.weight` with the trained rows in place but has no `.bias`. Wrapped heads are bias-free (see
    trainable_token_indices), so the wrapper gets a plain `bias = None` (not a registered parameter)."""
    head = model.get_output_embeddings()
    if type(head).__name__ == "TrainableTokensWrapper" and "bias" not in head.__dict__:
        object.__setattr__(head, "bias", None)
    return keep_adapter_small(model)


def keep_adapter_small(model: Any) -> Any:
    """Save only the trained rows, never the whole embedding matrices.

    With a resized vocabulary PEFT's default (`save_embedding_layers="auto"`) writes both full matrices into
    every adapter and checkpoint (hundreds of MB on a real model), meant for embeddings changed before the
    adapter; here the old rows are the base's own and the new ones are in the adapter's trainable tokens, so
    the base grown by fit_base_to_adapter plus the adapter is the trained model. Bound on the instance, so the
    Trainer's checkpoints and the final save both get it."""
    save = type(model).save_pretrained
    model.save_pretrained = functools.partial(save, model, save_embedding_layers=False)
    return model


def adapter_token_rows(adapter_dir: Path) -> list[int]:
    """The token rows the adapter's trainable tokens train (empty when it trains none)."""
    try:
        config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return []
    indices = config.get("trainable_token_indices") or []
    flat = [i for v in indices.values() for i in v] if isinstance(indices, dict) else list(indices)
    return sorted({int(i) for i in flat})


def fit_base_to_adapter(base: nn.Module, adapter_dir: Path) -> nn.Module:
    """Grow the base's token rows to what the adapter's added tokens need, before PEFT attaches it (a base
    that already has them is returned unchanged). The new rows start at the mean as in training, so the base
    with the adapter switched off is the model training started from; the adapter replaces them."""
    ids = adapter_token_rows(Path(adapter_dir))
    if not ids or max(ids) < base.get_input_embeddings().weight.shape[0]:
        return base
    return grow_embeddings(base, max(ids) + 1, ids)


def add_run_tokens(model: nn.Module, cfg: Any) -> nn.Module:
    """Grow a loaded model for the run's added tokens (the ids the training tokenizer gives them)."""
    problems = new_tokens_problems(cfg)
    if problems:
        raise UserError(" ".join(problems.values()))
    if not cfg.data.add_special_tokens:
        return model
    from backend.core.models import load_tokenizer
    from backend.data.special_tokens import new_token_ids, with_tokens

    base = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tok = with_tokens(base, cfg.data.add_special_tokens)
    return grow_embeddings(model, len(tok), new_token_ids(len(base), tok, cfg.data.add_special_tokens))


def add_meta_tokens(model: nn.Module, cfg: Any) -> nn.Module:
    """The skeleton's version: one new row per listed token past the config's vocabulary (no tokenizer is
    read; a token the tokenizer already has would be one row fewer, a rounding the estimate can carry)."""
    n = len(cfg.data.add_special_tokens)
    if not n:
        return model
    old = model.get_input_embeddings().weight.shape[0]
    return grow_embeddings(model, old + n, range(old, old + n))
