"""Orthogonal fine-tuning: OFT and BOFT, PEFT tuners that rotate each adapted linear's input.

Both learn, per adapted linear, a block-diagonal orthogonal matrix R (blocks of `oft_block_size`) built by
the Cayley transform of a skew-symmetric matrix, and compute W (R x): the weight's singular values stay as
they were, which is the method's point (less forgetting). BOFT adds a learned scale per output feature.
Both merge: PEFT folds R (and BOFT's scale) into the weight.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any

from torch import nn

from backend.core.catalog import METHOD, METHODS
from backend.methods.registry import always_mergeable, register
from backend.methods.skeleton import _as_config, build_meta_model


def _targets(cfg: Any):
    t = cfg.method.target_modules
    return t if isinstance(t, str) else list(t)


def apply_oft(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import OFTConfig, get_peft_model

    m = cfg.method
    # r=0 with a block size: PEFT derives the number of blocks per layer from its input width. Its
    # multiplicative block dropout is left off (LoRA's dropout field means something else).
    config = OFTConfig(r=0, oft_block_size=m.oft_block_size, target_modules=_targets(cfg), module_dropout=0.0,
                       use_cayley_neumann=m.oft_cayley_neumann, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _skip_butterfly_kernel() -> None:
    """PEFT's BOFT compiles a CUDA extension (fast block-diagonal) the first time a layer is built, which takes
    minutes where nvcc and ninja exist, fails everywhere else, and is retried (with two warnings) for every layer
    when it fails. The studio builds BOFT with one butterfly factor, the one PEFT runs without that kernel, so it
    tells PEFT the kernel is absent instead of letting it try."""
    from peft.tuners.boft import layer

    if getattr(layer, "_FBD_CUDA", None) is None:
        layer._FBD_CUDA = False


def apply_boft(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import BOFTConfig, get_peft_model

    _skip_butterfly_kernel()
    config = BOFTConfig(boft_block_size=cfg.method.oft_block_size, boft_block_num=0, boft_n_butterfly_factor=1,
                        target_modules=_targets(cfg), boft_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@functools.lru_cache(maxsize=32)
def _linears_cached(config_json: str, config_cls: type, trust_remote_code: bool) -> tuple[tuple[str, int, str], ...]:
    model = build_meta_model(config_cls.from_dict(json.loads(config_json)), trust_remote_code)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out = []
    for name, mod in model.named_modules():
        if mod is head or not name:
            continue
        if isinstance(mod, nn.Linear):
            out.append((name, int(mod.in_features), "linear"))
        elif type(mod).__name__ == "Conv1D":
            out.append((name, int(mod.weight.shape[0]), "conv1d"))
    return tuple(out)


def adapted_linears(cfg: Any, model_config: Any) -> list[tuple[str, int, str]]:
    """(name, input width, kind) of every linear the method's target modules pick, by PEFT's matching rule
    (a name or its dotted suffix; 'all-linear' is every linear but the output head)."""
    config = _as_config(model_config if model_config is not None else cfg.model, cfg.trust_remote_code)
    linears = _linears_cached(config.to_json_string(use_diff=False), type(config), cfg.trust_remote_code)
    targets = cfg.method.target_modules
    if isinstance(targets, str):
        return list(linears)
    return [ln for ln in linears if ln[0] in targets or any(ln[0].endswith("." + t) for t in targets)]


def _block_suggestion(widths: list[int], block: int) -> str:
    common = functools.reduce(math.gcd, widths)
    fits = [d for d in range(2, common + 1) if common % d == 0]
    if not fits:
        return "no block size of 2 or more divides all of them; target fewer layers"
    below = [d for d in fits if d <= block]
    best = below[-1] if below else fits[0]
    return f"a block size of {best} fits all of them"


def validate_orthogonal(cfg: Any, model_config: Any) -> dict[str, str]:
    """PEFT's OFT/BOFT split each layer's input into whole blocks and wrap torch Linear layers only; a width the
    block size does not divide is silently changed by OFT and refused deep inside PEFT by BOFT, so it is said
    here, at the block size."""
    title = METHODS[cfg.method.name].title.split(" (")[0]
    chosen = adapted_linears(cfg, model_config)
    if not chosen:
        return {}  # the target check says which names the model lacks
    conv = sorted({n.rsplit(".", 1)[-1] for n, _, kind in chosen if kind == "conv1d"})
    if conv:
        return {"method.target_modules": (f"{title} in PEFT wraps torch Linear layers only, and this model's "
                                          f"{', '.join(conv)} are GPT-2 style Conv1D layers; choose LoRA for it.")}
    block = cfg.method.oft_block_size
    widths = sorted({w for _, w, _ in chosen})
    bad = [w for w in widths if w % block]
    if not bad:
        return {}
    names = sorted({n.rsplit(".", 1)[-1] for n, w, _ in chosen if w in bad})
    return {"method.oft_block_size": (
        f"{title} splits each adapted layer's input into blocks of {block}, but {', '.join(names)} "
        f"read{'s' if len(names) == 1 else ''} {', '.join(str(w) for w in bad)} features, which {block} does not "
        f"divide; {_block_suggestion(widths, block)}.")}


register(METHOD.oft, can_merge=always_mergeable, apply=apply_oft, validate=validate_orthogonal)

register(METHOD.boft, can_merge=always_mergeable, apply=apply_boft, validate=validate_orthogonal)
