"""Reparameterization methods beyond plain LoRA: LoRA-FA, AdaLoRA, VeRA, and LongLoRA's trainable extras.

All are PEFT tuners; this module only maps RunConfig fields onto their configs and adds the
pieces PEFT leaves to the training loop (LoRA-FA's optimizer, AdaLoRA's rank re-allocation).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from backend.core.catalog import METHOD
from backend.core.log import is_main_process, note
from backend.methods import shifted_attention
from backend.methods.hooks import is_meta, total_training_steps
from backend.methods.lora import lora_config
from backend.methods.registry import always_mergeable, register


def _targets(cfg: Any):
    t = cfg.method.target_modules
    return t if isinstance(t, str) else list(t)


# ---- LoRA-FA: A stays at its random projection, only B trains ---------------------------------

def apply_lora_fa(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(cfg))
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.requires_grad_(False)
    return model


def lora_fa_optimizer(model: nn.Module, cfg: Any):
    from peft.optimizers import create_lorafa_optimizer

    # PEFT's LoRA-FA optimizer projects B's gradient to account for the frozen A (AdamW otherwise).
    return create_lorafa_optimizer(model, r=cfg.method.r, lora_alpha=cfg.method.alpha,
                                   lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)


# ---- AdaLoRA: starts at init_r, prunes to the target rank r on a schedule ----------------------

def adalora_config(cfg: Any, total_step: int):
    from peft import AdaLoraConfig

    m = cfg.method
    # Warm up 10% of the steps at the full rank and keep the final budget for the last 20%,
    # as the paper's schedules do; short runs degrade to pruning throughout.
    tinit, tfinal = int(total_step * 0.1), int(total_step * 0.2)
    if total_step - tinit - tfinal < 1:
        tinit = tfinal = 0
    return AdaLoraConfig(init_r=max(m.init_r, m.r), target_r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
                         target_modules=_targets(cfg), total_step=max(total_step, 1), tinit=tinit,
                         tfinal=tfinal, task_type="CAUSAL_LM")


def apply_adalora(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import get_peft_model

    # The skeleton only needs the shapes; a real run needs the true step count for the schedule.
    total = 1000 if is_meta(model) else total_training_steps(cfg)
    model = get_peft_model(model, adalora_config(cfg, total))
    # ranknum is a constant stored as a Parameter; on a meta skeleton PEFT leaves it trainable.
    for name, p in model.named_parameters():
        if ".ranknum." in name:
            p.requires_grad_(False)
    return model


def _adalora_callbacks(model: Any, cfg: Any, run_dir: Any) -> list:
    from transformers import TrainerCallback

    class RankAllocation(TrainerCallback):
        """AdaLoRA re-allocates ranks from the gradients, after each optimizer step and before
        the gradients are cleared, which is exactly when on_optimizer_step runs."""

        def on_optimizer_step(self, args, state, control, **kwargs):
            target = kwargs.get("model") or model
            base = getattr(target, "base_model", target)
            if hasattr(base, "update_and_allocate"):
                base.update_and_allocate(state.global_step)

    return [RankAllocation()]


def _validate_adalora(cfg: Any, _model_config: Any) -> dict[str, str]:
    if cfg.method.init_r < cfg.method.r:
        return {"method.init_r": (f"AdaLoRA prunes from the initial rank down to the target rank, so the initial "
                                  f"rank ({cfg.method.init_r}) must be at least the rank r ({cfg.method.r}); "
                                  "raise init_r or lower r.")}
    return {}


# ---- VeRA: one shared frozen random pair of matrices, trainable scaling vectors per layer -------

def apply_vera(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import VeraConfig, get_peft_model

    m = cfg.method
    config = VeraConfig(r=m.r, target_modules=_targets(cfg), vera_dropout=m.dropout,
                        save_projection=True, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# ---- LongLoRA: LoRA plus trainable embeddings and norms -----------------------------------------

def _norm_names(model: nn.Module) -> list[str]:
    names = []
    for name, module in model.named_modules():
        kind = type(module).__name__.lower()
        if name and ("norm" in kind) and not any(True for _ in module.children()):
            names.append(name.rsplit(".", 1)[-1])
    return sorted(set(names))


def _embedding_name(model: nn.Module) -> str:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.rsplit(".", 1)[-1]
    return "embed_tokens"


def _note(message: str) -> None:
    """A line for train.log; one per run, not one per distributed worker."""
    if is_main_process():
        note(message)


def _use_shifted_attention(model: nn.Module, ratio: float) -> None:
    """S²-Attn while training where the model's attention allows it; full attention otherwise, said in train.log."""
    if ratio >= 1.0:
        _note("LongLoRA: the S²-Attn group ratio is 1.0, so training uses full attention "
              "(LoRA + embeddings + norms only).")
        return
    reason = shifted_attention.unsupported_reason(model)
    if reason:
        _note(f"LongLoRA: {reason}; training with full attention (LoRA + embeddings + norms only).")
        return
    shifted_attention.enable(model, ratio)
    _note(f"LongLoRA: training with shifted sparse attention (S²-Attn) in groups of {ratio:g} × the sequence "
          "length; evaluation and the saved model use full attention.")


def apply_longlora(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import get_peft_model

    if not is_meta(model):  # the estimator's skeleton neither runs attention nor should print notes
        _use_shifted_attention(model, cfg.method.s2_attn_group_ratio)
    config = lora_config(cfg)
    # LongLoRA's finding: for long contexts LoRA alone is not enough, the embeddings and the
    # normalization layers must train too. modules_to_save keeps trainable full copies of them.
    config.modules_to_save = [_embedding_name(model)] + _norm_names(model)
    return get_peft_model(model, config)


def _longlora_merge(_cfg: Any) -> tuple[bool, str]:
    return True, "the LoRA update merges; the trained embeddings and norms replace the base model's"


register(METHOD.lora_fa, can_merge=always_mergeable, apply=apply_lora_fa, optimizer=lora_fa_optimizer)

register(METHOD.adalora,
         can_merge=always_mergeable, apply=apply_adalora, validate=_validate_adalora, extra={"callbacks": _adalora_callbacks})

register(METHOD.vera, can_merge=always_mergeable, apply=apply_vera)

register(METHOD.longlora, can_merge=_longlora_merge, apply=apply_longlora)
