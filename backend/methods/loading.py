"""Turning a RunConfig into a trainable model: load, quantize, checkpoint, apply the method.

The training subprocess calls `load_trainable_model`; the estimator calls `apply_method` on a
meta-device skeleton, so both see exactly the same trainable parameters.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from backend.core.config import DataConfig, MethodConfig, RunConfig
from backend.core.errors import UserError
from backend.core.kernels import load_kwargs
from backend.core.models import ModelError, load_causal_lm
from backend.core.precision import plan_for, torch_dtype
from backend.methods.optimizers import build_optimizer, needs_own_optimizer, optimizer_class  # noqa: F401
from backend.methods.registry import get_method
from backend.methods.hooks import is_meta
from backend.methods.skeleton import _as_config, build_meta_model, count_parameters
from backend.methods.tokens import add_meta_tokens, add_run_tokens, new_rows, trained_tokens
from backend.methods.validation import bitsandbytes_problem


def apply_method(model: nn.Module, cfg: Any) -> nn.Module:
    """Freeze or wrap `model` so exactly the method's parameters train (works on meta tensors too).

    QLoRA on a model that is not quantized (the meta skeleton) gets plain LoRA; the estimator
    accounts for the 4-bit bytes itself. A run that adds tokens has its embeddings grown first
    (`tokens.add_run_tokens` on a loaded model; here, on a skeleton that was not, one row per token).
    """
    spec = get_method(cfg.method.name)
    if spec.apply is None:
        raise UserError(f"The method '{spec.name}' cannot build a trainable model yet.")
    if trained_tokens(cfg) and not new_rows(model) and is_meta(model):
        add_meta_tokens(model, cfg)
    return spec.apply(model, cfg)


def _slim(cfg: Any) -> Any:
    """cfg reduced to what changes the parameter count: the model and the method's shown fields."""
    spec = get_method(cfg.method.name)
    shown = {p: getattr(cfg.method, p) for p in spec.params}
    return RunConfig(model=cfg.model, method=MethodConfig(name=cfg.method.name, **shown),
                     data=DataConfig(add_special_tokens=trained_tokens(cfg)),  # rows that train
                     trust_remote_code=cfg.trust_remote_code)


@functools.lru_cache(maxsize=256)
def _counts_cached(config_json: str, config_cls: type, cfg_json: str, trust_remote_code: bool) -> tuple[int, int]:
    cfg = RunConfig.model_validate_json(cfg_json)
    model = build_meta_model(config_cls.from_dict(json.loads(config_json)), trust_remote_code)
    return count_parameters(apply_method(model, cfg))


def exact_counts(cfg: Any, model_config: Any = None) -> tuple[int, int]:
    """(trainable, total) parameters of cfg.model with cfg.method applied, from a meta skeleton.

    Cached per (model config, method settings), so the live estimate stays fast after the first
    call for a model.
    """
    config = _as_config(model_config if model_config is not None else cfg.model, cfg.trust_remote_code)
    return _counts_cached(config.to_json_string(use_diff=False), type(config), _slim(cfg).model_dump_json(),
                          cfg.trust_remote_code)


def load_dtype(cfg: Any) -> torch.dtype:
    """The dtype the base weights load in (backend.core.precision decides: mixed precision with
    trainable base weights loads fp32 master weights; a 4-bit method loads in its compute dtype)."""
    return torch_dtype(plan_for(cfg).load)


def cast_for_training(model: nn.Module, cfg: Any) -> nn.Module:
    """Put each parameter in the dtype the precision plan gives it, after the method chose what trains.

    Only mixed precision over trainable base weights changes anything: the model was loaded in fp32,
    the trainable parameters stay fp32 (master weights: fp32 gradients and AdamW states follow) and
    the frozen ones go to the compute dtype, where autocast would cast them on every forward anyway.
    Everything else is already as the plan says (loaded in the compute dtype, adapters fp32).
    Works on meta tensors too, so the estimator's skeleton sees the same dtypes.
    """
    plan = plan_for(cfg)
    if not plan.fp32_master_weights:
        return model
    trainable, frozen = torch_dtype(plan.trainable), torch_dtype(plan.base)
    for p in model.parameters():  # tied weights once
        want = trainable if p.requires_grad else frozen
        if p.dtype != want and p.is_floating_point():
            p.data = p.data.to(want)
    return model


def quantization_config(cfg: Any):
    from transformers import BitsAndBytesConfig

    m = cfg.method
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=m.quant_type, bnb_4bit_use_double_quant=m.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(m.compute_dtype))


def load_trainable_model(cfg: Any, device_map: Optional[Any] = None) -> nn.Module:
    """Load cfg.model ready to train with cfg.method: dtype, 4-bit base, checkpointing, adapters."""
    spec = get_method(cfg.method.name)
    kwargs: dict[str, Any] = {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    # FlashAttention-2 or a hub kernel where backend.core.kernels picks one (nothing: transformers' default).
    kwargs.update(load_kwargs(cfg))
    if spec.quantized:
        problem = bitsandbytes_problem()
        if problem:
            raise UserError(problem)
        kwargs["quantization_config"] = quantization_config(cfg)
    try:
        model = load_causal_lm(cfg.model, dtype=load_dtype(cfg), trust_remote_code=cfg.trust_remote_code, **kwargs)
    except ValueError as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"The model '{cfg.model}' cannot be loaded as a causal language model: {e}") from e
    # Rows for data.add_special_tokens first: the k-bit preparation and checkpointing below see the grown model,
    # and the method then picks what trains.
    model = add_run_tokens(model, cfg)

    checkpointing = cfg.train.gradient_checkpointing
    # Non-reentrant checkpointing works with frozen embeddings, so no input-grad hook is needed.
    ckpt_kwargs = {"use_reentrant": False}
    if spec.quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs)
    elif checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    if checkpointing and getattr(model, "config", None) is not None:
        model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    if spec.quantized:
        _keep_4bit_trainable_on_cpu(model)
    model = cast_for_training(apply_method(model, cfg), cfg)
    if getattr(cfg, "init_adapter", None):
        load_adapter_weights(model, Path(cfg.init_adapter))
    model.train()  # from_pretrained returns eval mode; dropout and the trainer expect train mode
    return model


def load_adapter_weights(model: nn.Module, adapter: Path) -> None:
    """"Train more": the freshly built PEFT adapter takes the weights a finished run saved. Refused with a
    sentence when the folder holds no PEFT weights or they do not fit this method's adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = adapter / "adapter_model.safetensors"
    if not hasattr(model, "peft_config"):
        raise UserError(f"Training more from {adapter} needs a PEFT method (LoRA and its kin); for full-style "
                        "methods start a run with the finished model folder as its model instead.")
    if not weights.is_file():
        raise UserError(f"{adapter} holds no adapter_model.safetensors to train more from; pick a run that "
                        "completed with a saved adapter.")
    result = set_peft_model_state_dict(model, load_file(str(weights)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise UserError(f"The adapter in {adapter} does not fit this run's method settings ({len(unexpected)} "
                        f"weights have no place, e.g. {unexpected[0]}); keep the finished run's method, rank and "
                        "target modules.")


def _keep_4bit_trainable_on_cpu(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-bf16, bitsandbytes 0.50 repacks a Linear4bit's weight the first time it
    runs in eval mode without gradients (an evaluation pass) and never unpacks it; the repacked
    kernel has no backward, so every later training step silently gets no gradients.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def create_optimizer(model: nn.Module, cfg: Any) -> Optional[torch.optim.Optimizer]:
    """The method's own optimizer (LoRA+), the studio's (Lion, Muon, or per-group learning rates), or None to
    let the Trainer build cfg.train.optimizer."""
    spec = get_method(cfg.method.name)
    if spec.optimizer:
        return spec.optimizer(model, cfg)
    return build_optimizer(model, cfg) if needs_own_optimizer(cfg) else None
