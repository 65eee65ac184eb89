"""LoRA and the variants PEFT expresses as flags or wrappers: QLoRA, DoRA, rsLoRA, LoRA+.

rsLoRA and DoRA are LoraConfig options, QLoRA is LoRA on a bitsandbytes 4-bit base (the loading
side lives in loading.py), LoRA+ is LoRA with an optimizer that gives B a larger learning rate.
PiSSA and OLoRA are starting points of the same adapter (`method.lora_init`); they move part of each
base weight into the adapter, so the saved adapter is converted to apply to the untouched base. LoftQ is
QLoRA's start: the adapter begins as the largest part of the 4-bit base's quantization error.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from torch import nn

from backend.core.catalog import LORA_INITS, METHOD, METHODS, OBJECTIVES
from backend.core.errors import UserError
from backend.core.log import is_main_process, note
from backend.methods.hooks import is_meta
from backend.methods.loading import optimizer_class
from backend.methods.registry import always_mergeable, register
from backend.methods.tokens import finish_peft, trainable_token_indices

# The initial adapter's folder name inside the temporary directory PEFT reads it from at save time.
_INITIAL = "initial_adapter"


def lora_init(cfg: Any):
    """The adapter's start; a method that does not show the field (QLoRA, LoRA+, LongLoRA...) starts as LoRA."""
    shown = "lora_init" in METHODS[cfg.method.name].params
    return LORA_INITS[cfg.method.lora_init if shown else "default"]


def lora_config(cfg: Any, model: Any = None):
    """The LoraConfig of cfg's method; on a model grown for added tokens, those rows train too."""
    from peft import LoraConfig

    m = cfg.method
    return LoraConfig(
        trainable_token_indices=trainable_token_indices(model) if model is not None else None,
        r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
        target_modules=m.target_modules if isinstance(m.target_modules, str) else list(m.target_modules),
        use_dora=m.name == METHOD.dora, use_rslora=m.name == METHOD.rslora,
        init_lora_weights=lora_init(cfg).peft_value,
        bias="none", task_type="CAUSAL_LM",
    )


def apply_lora(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import get_peft_model

    config = lora_config(cfg, model)
    init = lora_init(cfg)
    if is_meta(model):
        # The skeleton counts parameters; a decomposition of meta tensors has nothing to decompose and the
        # shapes are the same for every start.
        config.init_lora_weights = True
    # get_peft_model freezes the base and keeps adapters in fp32 (autocast_adapter_dtype), which the
    # estimator assumes too.
    model = get_peft_model(model, config)
    if config.trainable_token_indices:
        finish_peft(model)
    if init.changes_base and not is_meta(model):
        _save_converted(model)
    if init.quantized_base and not is_meta(model):  # the skeleton of QLoRA is plain LoRA: nothing quantized
        loftq_start(model, cfg)
    return model


def _weight_reader(source: str) -> Callable[[str], Any]:
    """name -> the checkpoint's tensor, read one at a time from the model's safetensors file(s)."""
    from safetensors import safe_open

    folder = Path(source)
    if not folder.is_dir():  # a hub id: the files the loader just used are in the local cache
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(source, local_files_only=True))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    elif (folder / "model.safetensors").is_file():
        files = None
    else:
        raise UserError(f"LoftQ reads the original weights from the model's safetensors files, and {source} has "
                        "none; convert the model to safetensors or use QLoRA's default start.")

    def read(name: str):
        path = files.get(name) if files is not None else folder / "model.safetensors"
        if path is None:
            raise KeyError(name)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.get_tensor(name)

    return read


def loftq_start(model: Any, cfg: Any, adapter: str = "default") -> dict[str, float]:
    """Start each LoRA pair on a 4-bit linear at the best rank-r fit of the quantization error.

    With W the original weight and Q its dequantized 4-bit copy, the adapted layer computes Q + s·B·A (s is
    LoRA's scaling). A and B are taken from the SVD of W - Q, with B divided by s, so that s·B·A is that
    error's best rank-r approximation: ||W - (Q + s·B·A)|| < ||W - Q||. (PEFT's own LoftQ helpers leave s out,
    which undoes the gain whenever alpha != r, and compute on CUDA only; this runs where the model is.)
    The base stays as loaded, so the saved adapter is an ordinary QLoRA adapter. Returns the relative errors
    before and after, summed over the layers, which train.log reports."""
    import bitsandbytes.functional as bnbf
    import torch

    from backend.core.models import resolve_model

    read = _weight_reader(resolve_model(cfg.model).source)
    base = model.get_base_model()
    prefix = getattr(base, "base_model_prefix", "")
    before = after = 0.0
    layers = 0
    for name, module in base.named_modules():
        if not hasattr(module, "lora_A") or adapter not in getattr(module, "lora_A", {}):
            continue
        weight = module.get_base_layer().weight
        if type(weight).__name__ != "Params4bit":
            continue
        try:
            original = read(name + ".weight")
        except KeyError:
            try:  # a checkpoint saved without the base model's prefix
                original = read(name.removeprefix(prefix + ".") + ".weight")
            except KeyError:
                raise UserError(f"LoftQ found no weight for {name} in the model's files; use QLoRA's default "
                                "start.") from None
        with torch.no_grad():
            quantized = bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
            error = original.to(quantized.device, torch.float32) - quantized
            U, S, Vh = torch.linalg.svd(error, full_matrices=False)
            r, scale = module.r[adapter], module.scaling[adapter]
            root = S[:r].sqrt()
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            a.copy_((root[:, None] * Vh[:r]).to(a.dtype))
            b.copy_((U[:, :r] * root[None, :] / scale).to(b.dtype))
            before += float(error.norm())
            after += float((error - scale * b.float() @ a.float()).norm())
        layers += 1
    if not layers:
        raise UserError("LoftQ found no 4-bit LoRA layers to start; it needs QLoRA's quantized base.")
    if is_main_process():
        note(f"LoftQ: {layers} adapted layers start from their 4-bit quantization error; base + adapter is "
             f"{100 * (1 - after / before):.1f}% closer to the original weights than the 4-bit base alone.")
    return {"layers": layers, "error_before": before, "error_after": after}


def _save_converted(model: Any) -> None:
    """Keep the adapter as it started and save the final one as the difference, in LoRA form.

    PiSSA/OLoRA leave the base as W - A0 B0. PEFT's conversion writes the trained adapter as a standard LoRA
    of twice the rank whose update is A B - A0 B0, which applied to the original W gives the trained model;
    merging, chat and export then need no modified base."""
    from peft import get_peft_model_state_dict

    initial = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}

    def save(out_dir: str) -> None:
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / _INITIAL
            folder.mkdir()
            save_file(initial, str(folder / "adapter_model.safetensors"))
            model.save_pretrained(out_dir, path_initial_model_for_weight_conversion=str(folder))

    model.ftstudio_save = save


def validate_lora_init(cfg: Any, _model_config: Any = None) -> dict[str, str]:
    """LoftQ needs a 4-bit base and PiSSA/OLoRA a 16-bit one. PiSSA/OLoRA change the base weights: a reference
    made by switching the adapter off would be the residual model, not the starting model, and a finished
    adapter cannot be the start of a decomposition (nor of LoftQ's fit)."""
    init = lora_init(cfg)
    method = METHODS[cfg.method.name]
    if init.quantized_base and not method.quantized:
        return {"method.lora_init": (f"{init.title} starts the adapter from a 4-bit base's quantization error, "
                                     f"and {method.title} keeps the base in 16 bits, with no such error; choose "
                                     "QLoRA for LoftQ, or another start.")}
    if init.changes_base and method.quantized:
        return {"method.lora_init": (f"{init.title} decomposes the weights in 16 bits, which PEFT cannot do on "
                                     f"{method.title}'s 4-bit weights; use the default start or LoftQ.")}
    if init.quantized_base and getattr(cfg, "init_adapter", None):
        return {"method.lora_init": ("Training more starts from a finished adapter, not from LoftQ's fit; use "
                                     "the default start.")}
    if not init.changes_base:
        return {}
    if OBJECTIVES[cfg.objective].uses_reference:
        return {"method.lora_init": (f"{init.title} moves part of the base weights into the adapter, so "
                                     f"{cfg.objective.upper()}'s reference (the model with the adapter off) would not be "
                                     "the starting model; use the default start for this objective.")}
    if getattr(cfg, "init_adapter", None):
        return {"method.lora_init": (f"Training more starts from a finished adapter, not from {init.title}'s "
                                     "decomposition; use the default start.")}
    return {}


def loraplus_optimizer(model: nn.Module, cfg: Any):
    from peft.optimizers import create_loraplus_optimizer

    cls, extra = optimizer_class(cfg.train.optimizer)
    return create_loraplus_optimizer(
        model, cls, lr=cfg.train.learning_rate, loraplus_lr_ratio=cfg.method.loraplus_lr_ratio,
        loraplus_weight_decay=cfg.train.weight_decay, **extra)


def _qlora_merge(_cfg: Any) -> tuple[bool, str]:
    return True, ("the adapter is merged into a 16-bit copy of the base model (reloaded unquantized), "
                  "not into the 4-bit weights it trained against, so outputs can differ slightly")


register(METHOD.lora, can_merge=always_mergeable, apply=apply_lora, validate=validate_lora_init)

register(METHOD.qlora, can_merge=_qlora_merge, apply=apply_lora, validate=validate_lora_init)

register(METHOD.dora, can_merge=always_mergeable, apply=apply_lora, validate=validate_lora_init)

register(METHOD.rslora, can_merge=always_mergeable, apply=apply_lora, validate=validate_lora_init)

register(METHOD.loraplus, can_merge=always_mergeable, apply=apply_lora, optimizer=loraplus_optimizer)
