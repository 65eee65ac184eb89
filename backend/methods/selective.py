"""Selective methods: a chosen subset of the model's own weights trains, the rest stays frozen.

Feature extraction (output head only), BitFit (biases only), Fish Mask (the top-k% of weights by
Fisher information) and gradual unfreezing (top blocks first, one more group at a time). All save
a complete model, like full fine-tuning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from backend.core.catalog import METHOD
from backend.core.errors import UserError
from backend.methods.full import _final_norm, _set_all
from backend.methods.registry import complete_model, register
from backend.methods.skeleton import build_meta_model, decoder_layers
from backend.runs import events as ev, rundir


# ---- feature extraction --------------------------------------------------------------------------

def apply_feature_extraction(model: nn.Module, cfg: Any) -> nn.Module:
    _set_all(model, False)
    head = model.get_output_embeddings()
    if head is None:
        raise UserError("This model has no output head to train; choose another method.")
    _set_all(head, True)  # when tied, this is the input embedding matrix too (one shared tensor)
    return model


# ---- BitFit --------------------------------------------------------------------------------------

def _bias_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith(".bias") or n == "bias"]


def apply_bitfit(model: nn.Module, cfg: Any) -> nn.Module:
    biases = _bias_params(model)
    if not biases:
        raise UserError(_NO_BIAS)
    _set_all(model, False)
    for p in biases:
        p.requires_grad_(True)
    return model


_NO_BIAS = ("BitFit is not applicable: this model has no bias parameters (Llama-style models use none), so it "
            "would train nothing. Choose LoRA or IA³ instead.")


def _validate_bitfit(cfg: Any, model_config: Any) -> dict[str, str]:
    skeleton = build_meta_model(model_config, cfg.trust_remote_code)
    return {} if _bias_params(skeleton) else {"method.name": _NO_BIAS}


# ---- Fish Mask -----------------------------------------------------------------------------------

def apply_fish_mask(model: nn.Module, cfg: Any) -> nn.Module:
    # Every weight may be picked, so all are trainable until the mask is known (the estimator's count
    # is therefore full fine-tuning's: gradients and optimizer states are dense tensors).
    _set_all(model, True)
    return model


def fisher_mask(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], density: float) -> dict[str, torch.Tensor]:
    """Boolean masks (name -> mask) selecting the top `density` share of weights by empirical Fisher
    information: the squared gradient of the loss summed over a few batches."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    seen = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().float() ** 2
        seen += 1
    model.zero_grad(set_to_none=True)
    if not seen:
        raise UserError("Fish Mask needs at least one training batch to measure which weights matter.")
    total = sum(f.numel() for f in fisher.values())
    k = max(1, int(total * density))
    # The k-th largest score over all weights, found without concatenating everything in memory twice.
    flat = torch.cat([f.flatten() for f in fisher.values()])
    threshold = torch.topk(flat, k, sorted=False).values.min()
    del flat
    return {n: f >= threshold for n, f in fisher.items()}


def install_mask(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Let only the masked weights update: gradients are multiplied by the mask, and tensors with no
    selected weight stop training. Returns the number of selected weights."""
    selected = 0
    for n, p in model.named_parameters():
        mask = masks.get(n)
        if mask is None or not bool(mask.any()):
            p.requires_grad_(False)
            p.grad = None
            continue
        selected += int(mask.sum())
        m = mask.to(device=p.device, dtype=p.dtype)
        p.register_hook(lambda g, m=m: g * m)
    return selected


def _fish_callbacks(model: Any, cfg: Any, run_dir: Path) -> list:
    from transformers import TrainerCallback

    class FishMaskCallback(TrainerCallback):
        """Measures the Fisher information on a few training batches when training begins (the
        optimizer already holds every weight; unselected ones then get no gradient at all)."""
        batches = 8

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
            if state.global_step > 0 or model is None or train_dataloader is None:
                return
            device = next(model.parameters()).device
            picked = []
            for i, batch in enumerate(train_dataloader):
                if i >= self.batches:
                    break
                picked.append({k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})
            selected = install_mask(model, fisher_mask(model, picked, cfg.method.fish_mask_density))
            if state.is_world_process_zero:
                rundir.append_event(run_dir, {"type": ev.FISH_MASK, "step": 0, "selected": selected,
                                            "density": cfg.method.fish_mask_density, "batches": len(picked)})

    return [FishMaskCallback()]


def _validate_fish_mask(cfg: Any, _model_config: Any) -> dict[str, str]:
    if cfg.train.weight_decay:
        return {"train.weight_decay": ("Fish Mask keeps the unselected weights fixed only without weight decay "
                                       "(decay would shrink them too); set weight decay to 0.")}
    return {}


# ---- gradual unfreezing --------------------------------------------------------------------------

def unfreeze_groups(model: nn.Module) -> list[list[nn.Module]]:
    """Groups from the top down: the final norm with the last block, then one block at a time.
    Embeddings and the (usually tied) head stay frozen, as with last-N-layers."""
    layers = list(decoder_layers(model))
    norm = _final_norm(model)
    groups: list[list[nn.Module]] = [[layers[-1]] + ([norm] if norm is not None else [])]
    groups += [[block] for block in reversed(layers[:-1])]
    return groups


def apply_gradual_unfreezing(model: nn.Module, cfg: Any) -> nn.Module:
    # Everything that will ever train is marked trainable here, so the optimizer (built before training
    # starts) holds it all and the estimator counts the final, largest set; UnfreezeSchedule then
    # freezes the lower groups until their turn.
    _set_all(model, False)
    for group in unfreeze_groups(model):
        for module in group:
            _set_all(module, True)
    return model


class UnfreezeSchedule:
    """Which groups train now; `advance` unfreezes the next one down."""
    def __init__(self, model: nn.Module):
        self.groups = unfreeze_groups(model)
        self.active = 0

    def start(self) -> None:
        for i, group in enumerate(self.groups):
            for module in group:
                _set_all(module, i == 0)
                if i:
                    for p in module.parameters():
                        p.grad = None
        self.active = 1

    def advance(self) -> Optional[int]:
        """Unfreeze the next group; its index, or None when all already train."""
        if self.active >= len(self.groups):
            return None
        for module in self.groups[self.active]:
            _set_all(module, True)
        self.active += 1
        return self.active - 1


def _unfreeze_callbacks(model: Any, cfg: Any, run_dir: Path) -> list:
    from transformers import TrainerCallback

    every = cfg.method.unfreeze_every
    schedule = UnfreezeSchedule(model)
    n_layers = len(decoder_layers(model))

    def record(state, group: int) -> None:
        if state.is_world_process_zero:
            top = n_layers - 1 - group
            rundir.append_event(run_dir, {"type": ev.UNFREEZE, "step": state.global_step, "epoch": state.epoch,
                                        "group": group, "layer": top, "trainable_layers": schedule.active,
                                        "message": f"layer {top} unfrozen ({schedule.active} of {n_layers} train)"})

    class GradualUnfreezing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            schedule.start()
            # On resume, catch up with the groups unfrozen before the checkpoint.
            done = (state.global_step // every) if every else int(state.epoch or 0)
            for _ in range(done):
                schedule.advance()
            record(state, schedule.active - 1)

        def on_step_end(self, args, state, control, **kwargs):
            if every and state.global_step % every == 0:
                group = schedule.advance()
                if group is not None:
                    record(state, group)

        def on_epoch_begin(self, args, state, control, **kwargs):
            if not every and state.epoch and state.epoch >= 1:
                group = schedule.advance()
                if group is not None:
                    record(state, group)

    return [GradualUnfreezing()]


register(METHOD.feature_extraction, can_merge=complete_model, apply=apply_feature_extraction)

register(METHOD.gradual_unfreezing,
         can_merge=complete_model, apply=apply_gradual_unfreezing, extra={"callbacks": _unfreeze_callbacks})

register(METHOD.bitfit, can_merge=complete_model, apply=apply_bitfit, validate=_validate_bitfit)

register(METHOD.fish_mask,
         can_merge=complete_model, apply=apply_fish_mask, validate=_validate_fish_mask, extra={"callbacks": _fish_callbacks})
