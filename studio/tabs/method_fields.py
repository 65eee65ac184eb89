"""The Method tab's field tables: which RunConfig fields it shows, in which rows, under which labels.

Plain data and path helpers (no widgets); studio/tabs/method.py builds the widgets from them.
"""
from __future__ import annotations

from typing import Any

from backend.core.config import (
    AlignmentConfig, DataConfig, DistributedConfig, EarlyStoppingConfig, MethodConfig, RunConfig, TrainConfig,
)

SECTIONS = {"method": MethodConfig, "train": TrainConfig, "data": DataConfig,
            "early_stopping": EarlyStoppingConfig, "distributed": DistributedConfig,
            "alignment": AlignmentConfig}
METHOD_FIELDS = [f"method.{n}" for n in MethodConfig.model_fields if n not in ("name", "target_modules")]
TRAIN_ROWS = [
    ["train.epochs", "train.max_steps", "train.learning_rate", "train.scheduler"],
    ["train.warmup_ratio", "train.weight_decay", "train.optimizer", "train.precision",
     "train.pure_bf16"],
    ["train.batch_size", "train.gradient_accumulation", "data.max_length", "data.packing"],
    ["train.gradient_checkpointing", "train.eval_steps", "train.save_steps", "train.seed"],
    # Issue 22's training options: noisy embeddings, and learning rates per parameter group.
    ["train.neftune_noise_alpha", "train.embedding_learning_rate", "train.layer_lr_decay"],
]
MORE_ROWS = [
    ["early_stopping.patience", "early_stopping.threshold", "early_stopping.metric"],
    ["train.logging_steps", "train.max_grad_norm", "distributed.gpus", "distributed.strategy"],
    # Read only by the dpo/orpo/cpo/simpo/kto objectives.
    ["alignment.beta", "alignment.desirable_weight", "alignment.undesirable_weight"],
    # DPO's loss type and its label smoothing; CPO's SFT weight and SimPO's margin.
    ["alignment.loss_type", "alignment.label_smoothing", "alignment.cpo_alpha", "alignment.simpo_gamma"],
    # Read only by grpo/rloo: sampling, then the rewards that score the samples.
    ["alignment.num_generations", "alignment.max_completion_length", "alignment.temperature", "alignment.kl_coef"],
    ["alignment.reward_model", "alignment.reward_pattern", "alignment.reward_reference"],
]
STEPS = {"train.learning_rate": 1e-5, "method.dropout": 0.01, "train.warmup_ratio": 0.01,
         "train.weight_decay": 0.01, "method.alpha": 1, "early_stopping.threshold": 0.001,
         "method.fish_mask_density": 0.001, "train.max_grad_norm": 0.1, "train.epochs": 0.5,
         "method.loraplus_lr_ratio": 1, "method.s2_attn_group_ratio": 0.05,
         "train.neftune_noise_alpha": 1, "train.embedding_learning_rate": 1e-6, "train.layer_lr_decay": 0.05,
         "alignment.label_smoothing": 0.05, "alignment.cpo_alpha": 0.1, "alignment.simpo_gamma": 0.1}

LABELS = {
    "model": "Model", "method.name": "Method", "objective": "Objective", "method.target_modules": "Target modules",
    "method.r": "Rank (r)", "method.alpha": "Alpha", "method.dropout": "Dropout",
    "method.loraplus_lr_ratio": "LoRA+ ratio (B / A learning rate)", "method.num_layers": "Top layers that train",
    "method.quant_type": "4-bit data type", "method.double_quant": "Double quantization",
    "method.compute_dtype": "4-bit compute dtype", "method.num_virtual_tokens": "Virtual tokens",
    "method.prompt_init_text": "Initialise prompt from text", "method.bottleneck": "Adapter bottleneck size",
    "method.init_r": "Initial rank", "method.unfreeze_every": "Unfreeze a group every N steps (0: each epoch)",
    "method.fish_mask_density": "Share of parameters that train", "method.adapter_activation": "Adapter non-linearity",
    "method.s2_attn_group_ratio": "S²-Attn group size (share of the sequence; 1: off)",
    "train.epochs": "Epochs", "train.max_steps": "Max steps (0 or blank: use epochs)", "train.learning_rate": "Learning rate",
    "train.scheduler": "Scheduler", "train.warmup_ratio": "Warmup share", "train.weight_decay": "Weight decay",
    "train.batch_size": "Batch size", "train.gradient_accumulation": "Gradient accumulation",
    "train.precision": "Precision", "train.optimizer": "Optimizer",
    "train.pure_bf16": "Pure bf16 (no fp32 master weights)",
    "train.gradient_checkpointing": "Gradient checkpointing", "train.eval_steps": "Evaluate every N steps",
    "train.save_steps": "Save every N steps (0 or blank: with evaluation)", "train.logging_steps": "Log every N steps",
    "train.max_grad_norm": "Gradient clipping norm", "train.seed": "Seed",
    "train.liger_kernel": "Liger kernels", "train.attention": "Attention", "train.fused_adamw": "Fused AdamW",
    "train.torch_compile": "torch.compile",
    "data.max_length": "Max sequence length", "data.packing": "Packing",
    "data.add_special_tokens": "Added special tokens (Dataset tab)",
    "early_stopping.patience": "Early-stopping patience (0 or blank: off)",
    "early_stopping.threshold": "Minimum improvement", "early_stopping.metric": "Watched metric",
    "distributed.gpus": "GPUs", "distributed.strategy": "Multi-GPU strategy",
    "alignment.beta": "Beta (DPO/KTO/ORPO)", "alignment.desirable_weight": "KTO weight of good answers",
    "alignment.undesirable_weight": "KTO weight of bad answers",
    "alignment.num_generations": "Answers sampled per prompt", "alignment.max_completion_length": "Longest answer (tokens)",
    "alignment.temperature": "Sampling temperature", "alignment.kl_coef": "KL penalty (0: no reference pass)",
    "alignment.reward_model": "Reward model run", "alignment.reward_pattern": "Reward pattern (regular expression)",
    "alignment.reward_reference": "Reward overlap with the dataset's answer",
    "method.lora_init": "Adapter start (PiSSA / OLoRA / LoftQ)",
    "method.oft_block_size": "Orthogonal block size", "method.oft_cayley_neumann": "Fast approximate rotation (Neumann)",
    "train.neftune_noise_alpha": "NEFTune noise (blank: off)",
    "train.embedding_learning_rate": "Embedding / head learning rate (blank: main)",
    "train.layer_lr_decay": "Layer-wise LR decay (1: off)",
    "alignment.loss_type": "DPO loss", "alignment.label_smoothing": "Label smoothing (robust DPO)",
    "alignment.cpo_alpha": "CPO SFT weight (alpha)", "alignment.simpo_gamma": "SimPO target margin (gamma)",
}


CHOICE_HELP_FIELDS = ("alignment.loss_type", "method.lora_init", "train.optimizer")


def choice_help(path: str, value: Any) -> str:
    """The catalog's sentence for the chosen value of a choice field (DPO loss, adapter start, optimizer)."""
    from backend.core import catalog

    table = {"alignment.loss_type": catalog.PREFERENCE_LOSSES, "method.lora_init": catalog.LORA_INITS,
             "train.optimizer": catalog.OPTIMIZERS}.get(path, {})
    info = table.get(value)
    return getattr(info, "help", "") if info is not None else ""


def label_of(path: str) -> str:
    """The field's label; a field added to the config later gets a readable one from its name."""
    return LABELS.get(path) or path.split(".")[-1].replace("_", " ").capitalize()


def field_info(path: str):
    if "." not in path:  # a top-level RunConfig field (objective)
        return RunConfig.model_fields[path]
    section, name = path.split(".", 1)
    return SECTIONS[section].model_fields[name]


def get_path(rc: dict[str, Any], path: str) -> Any:
    node: Any = rc
    for part in path.split("."):
        node = (node or {}).get(part) if isinstance(node, dict) else None
    return node


def set_path(rc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = rc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
