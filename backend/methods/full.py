"""Full fine-tuning and its layer-selective variant: no adapters, the model's own weights train."""
from __future__ import annotations

from typing import Any

from torch import nn

from backend.core.catalog import METHOD
from backend.methods.registry import complete_model, register
from backend.methods.skeleton import decoder_layers


def _set_all(model: nn.Module, trainable: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(trainable)


def apply_full(model: nn.Module, cfg: Any) -> nn.Module:
    _set_all(model, True)
    return model


def _final_norm(model: nn.Module) -> nn.Module | None:
    body = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        module = getattr(body, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def apply_last_layers(model: nn.Module, cfg: Any) -> nn.Module:
    """Train the top N transformer blocks and the final norm; embeddings and head stay frozen.

    The head is left frozen on purpose: most small models tie it to the input embeddings, so
    training it would silently train the whole vocabulary matrix too.
    """
    _set_all(model, False)
    layers = decoder_layers(model)
    n = min(cfg.method.num_layers, len(layers))
    for block in list(layers)[len(layers) - n:]:
        _set_all(block, True)
    norm = _final_norm(model)
    if norm is not None:
        _set_all(norm, True)
    return model


def _validate_last_layers(cfg: Any, model_config: Any) -> dict[str, str]:
    total = getattr(model_config, "num_hidden_layers", None)
    if total and cfg.method.num_layers > total:
        return {"method.num_layers": f"The model has {total} layers, so at most {total} can train "
                                     f"(got {cfg.method.num_layers}); lower the number of layers."}
    return {}


register(METHOD.full, can_merge=complete_model, apply=apply_full)

register(METHOD.last_layers,
         can_merge=complete_model, apply=apply_last_layers, validate=_validate_last_layers)
