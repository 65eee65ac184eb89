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


def model_config_of(cfg: Any, light: bool = False) -> Any:
    """AutoConfig for cfg.model, cached per reference and config.json modification time.

    light=True may answer a local model with its ConfigFile (enough for the closed-form estimate).
    """
    stamp: Any = None
    if os.path.isdir(os.path.expanduser(cfg.model)):
        try:
            stamp = os.stat(os.path.join(os.path.expanduser(cfg.model), "config.json")).st_mtime_ns
        except OSError:
            stamp = None
    key = (cfg.model, cfg.trust_remote_code, stamp, light)
    hit = _CONFIGS.get(key)
    if hit is None:
        resolve_model(cfg.model)  # a missing directory is a sentence, not a transformers traceback
        hit = ConfigFile.read(cfg.model) if light and stamp is not None and not cfg.trust_remote_code else None
        hit = hit or load_model_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
        if len(_CONFIGS) > 32:
            _CONFIGS.clear()
        _CONFIGS[key] = hit
    return hit


class ConfigFile:
    """A local model's config.json as text: enough to find its skeleton in the disk cache.

    Loading it through transformers' AutoConfig imports torch and transformers, which is most of
    the first estimate's time; the skeleton cache (skeleton.py) is keyed by this text, and
    `from_dict` turns it into the real config only when a skeleton must be built.
    """

    def __init__(self, text: str, data: dict):
        self.text, self.data = text, data
        self.model_type = data.get("model_type", "?")
        self._attn_implementation = data.get("_attn_implementation")

    @classmethod
    def read(cls, ref: str) -> "ConfigFile | None":
        import json

        try:
            text = open(os.path.join(os.path.expanduser(ref), "config.json"), encoding="utf-8").read()
            data = json.loads(text)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or "model_type" not in data or data.get("auto_map"):
            return None  # remote-code and unusual configs go through transformers
        return cls(text, data)

    def to_json_string(self, use_diff: bool = False) -> str:
        return self.text

    @staticmethod
    def from_dict(data: dict) -> Any:
        from transformers import CONFIG_MAPPING

        return CONFIG_MAPPING[data["model_type"]].from_dict(data)


def method_flags(name: str) -> tuple[bool, bool]:
    """(uses_peft, quantized) of a catalog method."""
    info = METHODS[name]
    return info.uses_peft, info.quantized

