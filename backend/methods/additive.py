"""IA³: learned per-channel scales on keys, values and the feed-forward input (a PEFT tuner)."""
from __future__ import annotations

from typing import Any

from torch import nn

from backend.core.catalog import METHOD
from backend.methods.registry import always_mergeable, register


def apply_ia3(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import IA3Config, get_peft_model

    # No target list: PEFT's per-architecture table picks keys, values and the feed-forward down
    # projection (the paper's choice) for every model family it knows.
    return get_peft_model(model, IA3Config(task_type="CAUSAL_LM"))


def _validate_ia3(cfg: Any, model_config: Any) -> dict[str, str]:
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TABLE

    kind = getattr(model_config, "model_type", None)
    if kind not in TABLE:
        return {"method.name": (f"IA³ does not know which layers of a '{kind}' model are its keys, values and "
                                "feed-forward; choose LoRA for this model.")}
    return {}


register(METHOD.ia3, can_merge=always_mergeable, apply=apply_ia3, validate=_validate_ia3)
