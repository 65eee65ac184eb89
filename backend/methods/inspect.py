"""What the Method tab shows about a model after "Inspect": its shape and its target-module shortcuts."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Union

from torch import nn

from backend.core.models import load_model_config, resolve_model
from backend.methods.skeleton import build_meta_model, count_parameters, linear_layer_names_of
from backend.methods.validation import max_positions

_FUSED_QKV = ("qkv_proj", "c_attn", "query_key_value", "Wqkv", "qkv", "in_proj")


@dataclass
class ModelInfo:
    ref: str
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_positions: int | None
    total_params: int
    linear_layers: list[str]
    attention_layers: list[str]
    shortcuts: dict[str, Union[list[str], str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _attention_linear_names(model: nn.Module, names: list[str]) -> list[str]:
    head = model.get_output_embeddings()
    found: dict[str, None] = {}
    for path, module in model.named_modules():
        parts = path.split(".")
        if module is head or parts[-1] not in names:
            continue
        if any("attn" in p.lower() or "attention" in p.lower() for p in parts[:-1]):
            found.setdefault(parts[-1], None)
    return [n for n in names if n in found]


def target_shortcuts(linear: list[str], attention: list[str]) -> dict[str, Union[list[str], str]]:
    """The one-click target choices: attention only, Q and V, all linear (only those that exist)."""
    out: dict[str, Union[list[str], str]] = {}
    if attention:
        out["attention only"] = list(attention)
    q = next((n for n in attention if n in ("q_proj", "query", "q", "q_lin")), None)
    v = next((n for n in attention if n in ("v_proj", "value", "v", "v_lin")), None)
    if q and v:
        out["Q and V"] = [q, v]
    else:
        fused = [n for n in attention if n in _FUSED_QKV]
        if fused:
            out["Q and V"] = fused[:1]  # fused projections hold Q, K and V in one matrix
    if linear:
        out["all linear"] = "all-linear"
    return out


@functools.lru_cache(maxsize=16)
def _inspect_cached(ref: str, config_json: str, config_cls: type, trust_remote_code: bool) -> ModelInfo:
    config = config_cls.from_dict(json.loads(config_json))
    model = build_meta_model(config, trust_remote_code)
    linear = linear_layer_names_of(model)
    attention = _attention_linear_names(model, linear)
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelInfo(
        ref=ref, model_type=getattr(config, "model_type", "?"),
        num_layers=int(getattr(text_cfg, "num_hidden_layers", 0) or 0),
        hidden_size=int(getattr(text_cfg, "hidden_size", 0) or 0),
        vocab_size=int(getattr(text_cfg, "vocab_size", 0) or 0),
        max_positions=max_positions(text_cfg), total_params=count_parameters(model)[1],
        linear_layers=linear, attention_layers=attention, shortcuts=target_shortcuts(linear, attention))


def inspect_model(ref: str, trust_remote_code: bool = False) -> ModelInfo:
    """Read a model's config (no weights) and describe it; raises ModelError with a sentence."""
    resolve_model(ref)  # a clear sentence for a missing directory before transformers speaks
    config = load_model_config(ref, trust_remote_code=trust_remote_code)
    return _inspect_cached(ref, config.to_json_string(use_diff=False), type(config), trust_remote_code)
