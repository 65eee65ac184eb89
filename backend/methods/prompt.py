"""Prompt methods: learned virtual tokens instead of changed weights (PEFT's prompt-learning tuners).

PEFT prepends the virtual tokens itself in forward and pads the labels and attention mask for
them, so the same tokenized SFT batches train these methods unchanged.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from backend.methods.hooks import is_meta
from backend.methods.registry import MethodSpec, register


def _prompt_merge(_cfg: Any) -> tuple[bool, str]:
    return False, ("prompt methods add virtual tokens in front of every input, not a change to the weights, "
                   "so there is nothing to merge; use the adapter with the base model")


def apply_prompt_tuning(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    from backend.core.models import resolve_model

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
    # seed documents' 2 x tokens x layers x hidden.
    return _prefix(model, cfg, projection=False)


def apply_p_tuning_v2(model: nn.Module, cfg: Any) -> nn.Module:
    # P-tuning v2's deep prompts at every layer, reparameterized through a small MLP (the paper's
    # option that stabilizes training on harder tasks); the MLP of bottleneck width trains too.
    return _prefix(model, cfg, projection=True)


def _validate_prompt_method(cfg: Any, _model_config: Any) -> dict[str, str]:
    from backend.objectives.trainers import validate_objective

    return validate_objective(cfg)


def _validate_prompt_text(cfg: Any, model_config: Any) -> dict[str, str]:
    errors = _validate_prompt_method(cfg, model_config)
    text = cfg.method.prompt_init_text
    if text is not None and not text.strip():
        errors["method.prompt_init_text"] = ("The initialisation text is empty; write a short task description "
                                             "or leave it unset for a random start.")
    return errors


register(MethodSpec(
    name="prompt_tuning", title="Prompt tuning", family="prompt",
    help=("Learns only a few virtual tokens put in front of every input (optionally started from a text such "
          "as a task description): tiny adapters and little memory, but weaker than LoRA on small models."),
    params=["num_virtual_tokens", "prompt_init_text"], uses_peft=True, quantized=False,
    can_merge=_prompt_merge, apply=apply_prompt_tuning, validate=_validate_prompt_text,
))

register(MethodSpec(
    name="prefix_tuning", title="Prefix tuning", family="prompt",
    help=("Learns keys and values prepended at every attention layer: stronger than prompt tuning with tiny "
          "adapters (2 x tokens x layers x hidden values); each prefix token costs attention memory."),
    params=["num_virtual_tokens"], uses_peft=True, quantized=False, can_merge=_prompt_merge,
    apply=apply_prefix_tuning, validate=_validate_prompt_method,
))

register(MethodSpec(
    name="p_tuning_v2", title="P-tuning v2 (deep prompts)", family="prompt",
    help=("Deep prompts at every layer trained through a small MLP of the bottleneck width: more stable than "
          "plain prefix tuning on harder tasks, close to full fine-tuning on understanding tasks; the MLP adds "
          "training memory."),
    params=["num_virtual_tokens", "bottleneck"], uses_peft=True, quantized=False, can_merge=_prompt_merge,
    apply=apply_p_tuning_v2, validate=_validate_prompt_method,
))
