"""Checks of a RunConfig against the chosen model and this machine, as sentences keyed by field.

Field ranges (rank >= 1, learning rate > 0, ...) are the RunConfig's own; these are the checks
that need the model or the hardware, run before any training starts.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

from backend.core.catalog import OPTIMIZER, OPTIMIZERS
from backend.core.models import ModelError, check_causal_lm
from backend.core.precision import plan_for, this_machine
from backend.methods.optimizers import validate_optimizer
from backend.methods.registry import get_method
from backend.methods.skeleton import linear_layer_names
from backend.methods.tokens import new_tokens_problems



@functools.lru_cache(maxsize=1)
def bitsandbytes_problem() -> Optional[str]:
    """None when bitsandbytes can quantize to 4-bit here, else a sentence saying what to do."""
    try:
        import bitsandbytes.functional as bnbf
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        # A real round trip, because an import can succeed on a machine with no working backend.
        data, state = bnbf.quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
        bnbf.dequantize_4bit(data, state)
    except ImportError:
        return "QLoRA needs the bitsandbytes package; install it (`pip install bitsandbytes`) or choose LoRA."
    except Exception as e:  # noqa: BLE001 - any backend failure means "not usable here"
        return (f"bitsandbytes cannot run 4-bit quantization on this machine ({type(e).__name__}: {e}); "
                "choose LoRA, or install a bitsandbytes build for your GPU.")
    return None


def max_positions(model_config: Any) -> Optional[int]:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _target_problem(cfg: Any, model_config: Any) -> Optional[str]:
    targets = cfg.method.target_modules
    if isinstance(targets, str):
        return None
    names = linear_layer_names(model_config, trust_remote_code=cfg.trust_remote_code)
    missing = [t for t in targets if t not in names]
    if not missing:
        return None
    plural = "layers" if len(missing) > 1 else "layer"
    return (f"The model has no linear {plural} named {', '.join(repr(m) for m in missing)}. "
            f"Its linear layers are: {', '.join(names)} (or use 'all-linear').")


def validate_for_model(cfg: Any, model_config: Any) -> dict[str, str]:
    """Problems of cfg for this model and machine: dotted field path -> sentence (empty when fine)."""
    errors: dict[str, str] = {}
    if not getattr(model_config, "auto_map", None):
        try:
            check_causal_lm(model_config)
        except ModelError as e:
            return {"model": str(e)}
    try:
        spec = get_method(cfg.method.name)
    except ValueError as e:
        return {"method.name": str(e)}

    limit = max_positions(model_config)
    if limit and cfg.data.max_length > limit:
        errors["data.max_length"] = (f"The model reads at most {limit} tokens, but the maximum length is "
                                     f"{cfg.data.max_length}; set it to {limit} or less.")
    if "target_modules" in spec.params:
        problem = _target_problem(cfg, model_config)
        if problem:
            errors["method.target_modules"] = problem
    if spec.quantized:
        problem = bitsandbytes_problem()
        if problem:
            errors["method.name"] = problem
    # train.precision and a 4-bit compute dtype this machine cannot train (backend.core.precision).
    errors.update(plan_for(cfg, this_machine()).problems)
    if OPTIMIZERS[cfg.train.optimizer].bitsandbytes:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            errors["train.optimizer"] = (f"The {cfg.train.optimizer} optimizer needs the bitsandbytes package; "
                                         f"install it or choose {OPTIMIZER.adamw_torch}.")
    for field, sentence in validate_optimizer(cfg).items():  # Lion, Muon, packages, per-group learning rates
        errors.setdefault(field, sentence)
    errors.update(new_tokens_problems(cfg))  # added tokens with a method that cannot train their rows
    if spec.validate:
        errors.update(spec.validate(cfg, model_config))
    return errors
