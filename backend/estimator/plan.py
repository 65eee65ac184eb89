"""What the closed form (core.py) and the precise trace (precise.py) both start from.

The model's config (cached) and the method's flags from the catalog. The dtypes come from
backend.core.precision.plan_for(cfg), read for the card the estimate is for (not this machine).
"""
from __future__ import annotations

import os
from typing import Any

from backend.core.catalog import METHODS
from backend.core.models import load_model_config, resolve_model

_CONFIGS: dict[tuple, Any] = {}


def model_config_of(cfg: Any) -> Any:
    """AutoConfig for cfg.model, cached per reference and config.json modification time."""
    stamp: Any = None
    if os.path.isdir(os.path.expanduser(cfg.model)):
        try:
            stamp = os.stat(os.path.join(os.path.expanduser(cfg.model), "config.json")).st_mtime_ns
        except OSError:
            stamp = None
    key = (cfg.model, cfg.trust_remote_code, stamp)
    hit = _CONFIGS.get(key)
    if hit is None:
        resolve_model(cfg.model)  # a missing directory is a sentence, not a transformers traceback
        hit = load_model_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
        if len(_CONFIGS) > 32:
            _CONFIGS.clear()
        _CONFIGS[key] = hit
    return hit


def method_flags(name: str) -> tuple[bool, bool]:
    """(uses_peft, quantized) of a catalog method."""
    info = METHODS[name]
    return info.uses_peft, info.quantized

