"""The model's shape without its weights: a meta-device skeleton, its linear layers, exact counts.

Building on the meta device allocates no memory and reads no weights, so a directory holding
only config.json is enough, and a 70B model inspects in well under a second.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import torch
from torch import nn

from backend.core.models import ModelError, check_causal_lm, load_model_config


def _as_config(model_config_or_ref: Any, trust_remote_code: bool = False) -> Any:
    if isinstance(model_config_or_ref, str):
        return load_model_config(model_config_or_ref, trust_remote_code=trust_remote_code)
    return model_config_or_ref


def build_meta_model(model_config: Any, trust_remote_code: bool = False) -> nn.Module:
    """A causal LM built from its config on the meta device (no weights, no memory)."""
    from transformers import AutoModelForCausalLM

    config = _as_config(model_config, trust_remote_code)
    if not getattr(config, "auto_map", None):  # remote-code models are not in transformers' own mapping
        check_causal_lm(config)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise ModelError(
            f"The model type '{getattr(config, 'model_type', '?')}' cannot be built as a causal language "
            f"model ({e}); the studio fine-tunes text-generation models only.") from e


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):  # bitsandbytes Linear4bit/8bitLt subclass nn.Linear
        return True
    # GPT-2 style models use transformers' Conv1D as their linear layer.
    return type(module).__name__ == "Conv1D"


def linear_layer_names_of(model: nn.Module) -> list[str]:
    """Distinct linear-module suffixes of a built model, the output head excluded, in model order."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if module is head or not name or not _is_linear(module):
            continue
        # PEFT wraps a targeted layer and keeps the original as `base_layer`; report the original name.
        parts = [p for p in name.split(".") if p != "base_layer"]
        if any(p.startswith("lora_") for p in parts):
            continue
        seen.setdefault(parts[-1], None)
    return list(seen)


@functools.lru_cache(maxsize=32)
def _linear_names_cached(config_json: str, config_cls: type, trust_remote_code: bool) -> tuple[str, ...]:
    config = config_cls.from_dict(json.loads(config_json))
    return tuple(linear_layer_names_of(build_meta_model(config, trust_remote_code)))


def linear_layer_names(model_config_or_model: Any, trust_remote_code: bool = False) -> list[str]:
    """Linear-layer names a method can target (q_proj, v_proj, ...), lm_head excluded.

    Accepts a built model, a transformers config, or a model reference (bundled name, directory,
    hub id); configs are cached per content so repeated calls cost nothing.
    """
    if isinstance(model_config_or_model, nn.Module):
        return linear_layer_names_of(model_config_or_model)
    config = _as_config(model_config_or_model, trust_remote_code)
    return list(_linear_names_cached(config.to_json_string(use_diff=False), type(config), trust_remote_code))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList whose length is the config's layer count."""
    config = getattr(model, "config", None)
    want = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    best = None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if want and len(module) == want:
                return module
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise ModelError("Could not find the model's transformer layers, so layer-selective training "
                         "cannot pick the top layers; choose another method.")
    return best


def _logical_numel(param: torch.Tensor) -> int:
    n = param.numel()
    if type(param).__name__ == "Params4bit":
        # bitsandbytes packs two 4-bit values per storage byte; count the weights, not the bytes.
        n = n * 2 * param.element_size()
    return n


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; shared (tied) tensors count once, 4-bit weights by element."""
    trainable = total = 0
    for param in model.parameters():  # parameters() already de-duplicates tied weights
        n = _logical_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
