"""Prompt methods: learned virtual tokens instead of changed weights (PEFT's prompt-learning tuners).

PEFT prepends the virtual tokens itself in forward and pads the labels and attention mask for
them, so the same tokenized SFT batches train these methods unchanged.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from backend.core.catalog import METHOD
from backend.core.models import resolve_model
from backend.methods.hooks import is_meta
from backend.methods.registry import register


def _prompt_merge(_cfg: Any) -> tuple[bool, str]:
    return False, ("prompt methods add virtual tokens in front of every input, not a change to the weights, "
                   "so there is nothing to merge; use the adapter with the base model")


def apply_prompt_tuning(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    m = cfg.method
    kwargs: dict[str, Any] = {"prompt_tuning_init": PromptTuningInit.RANDOM}
    # Initialising from text reads the real embeddings; a meta skeleton has none (and the count is the same).
    if m.prompt_init_text and not is_meta(model):
        kwargs = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": m.prompt_init_text,
                  "tokenizer_name_or_path": str(resolve_model(cfg.model).source)}
    return get_peft_model(model, PromptTuningConfig(num_virtual_tokens=m.num_virtual_tokens,
                                                    task_type="CAUSAL_LM", **kwargs))


def _prefix(model: nn.Module, cfg: Any, projection: bool) -> nn.Module:
    from peft import PrefixTuningConfig, get_peft_model

    m = cfg.method
    hidden = model.config.get_text_config().hidden_size if hasattr(model.config, "get_text_config") \
        else model.config.hidden_size
    return get_peft_model(model, PrefixTuningConfig(
        num_virtual_tokens=m.num_virtual_tokens, prefix_projection=projection,
        encoder_hidden_size=m.bottleneck if projection else hidden, task_type="CAUSAL_LM"))


def apply_prefix_tuning(model: nn.Module, cfg: Any) -> nn.Module:
    # The prefixes (keys and values at every layer) train directly: the parameter count is the
    # usual 2 x tokens x layers x hidden.
    return _prefix(model, cfg, projection=False)


def apply_p_tuning_v2(model: nn.Module, cfg: Any) -> nn.Module:
    # P-tuning v2's deep prompts at every layer, reparameterized through a small MLP (the paper's
    # option that stabilizes training on harder tasks); the MLP of bottleneck width trains too.
    return _prefix(model, cfg, projection=True)


def _validate_prompt_text(cfg: Any, _model_config: Any) -> dict[str, str]:
    errors: dict[str, str] = {}
    text = cfg.method.prompt_init_text
    if text is not None and not text.strip():
        errors["method.prompt_init_text"] = ("The initialisation text is empty; write a short task description "
                                             "or leave it unset for a random start.")
    return errors


register(METHOD.prompt_tuning,
         can_merge=_prompt_merge, apply=apply_prompt_tuning, validate=_validate_prompt_text)

register(METHOD.prefix_tuning,
         can_merge=_prompt_merge, apply=apply_prefix_tuning)

register(METHOD.p_tuning_v2,
         can_merge=_prompt_merge, apply=apply_p_tuning_v2)
