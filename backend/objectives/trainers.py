"""Alignment trainers (DPO, ORPO, KTO, reward models, GRPO, RLOO): TRL's trainers behind one small spec each.

What each objective is (title, help, data format, families) is in backend.core.catalog; this module
says how it trains. An objective combines with any parameter method (DPO + QLoRA, KTO + full, ...):
the model arrives from methods.load_trainable_model already frozen/wrapped; a PEFT model's reference
is the same model with its adapter switched off, otherwise TRL loads a frozen copy of the base as
reference. ORPO and CPO (which also trains SimPO) live in trl.experimental in TRL 1.x; only this file knows where each trainer is
imported from, so an upstream move touches one line. GRPO/RLOO's prompts and rewards are in online_rl.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from transformers import TrainerCallback

from backend.core import catalog
from backend.core.catalog import OBJECTIVE, ObjectiveInfo
from backend.core.errors import UserError
from backend.core.kernels import load_kwargs
from backend.core.log import note
from backend.core.models import load_tokenizer, resolve_model
from backend.data.records import as_turns, load_for_training, with_system
from backend.methods import cast_for_training, load_dtype, load_trainable_model
from backend.methods.full import apply_full, apply_last_layers
from backend.methods.lora import lora_config
from backend.objectives import online_rl
from backend.objectives.validate import validate_objective
from backend.runs import events as ev, rundir


@dataclass(frozen=True)
class TrainerSpec:
    classes: Callable[[], tuple[type, type]]  # (Config class, Trainer class), imported when used
    settings: Callable[[Any], dict[str, Any]]  # objective-specific Config kwargs from the RunConfig
    # Extra trainer arguments built from the config (GRPO/RLOO's reward functions).
    trainer_kwargs: Callable[[Any], dict[str, Any]] = lambda cfg: {}


def _dpo_classes():
    from trl import DPOConfig, DPOTrainer
    return DPOConfig, DPOTrainer


def _orpo_classes():
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return ORPOConfig, ORPOTrainer


def _cpo_classes():
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    return CPOConfig, CPOTrainer


def _kto_classes():
    from trl import KTOConfig, KTOTrainer
    return KTOConfig, KTOTrainer


def _reward_classes():
    from trl import RewardConfig, RewardTrainer
    return RewardConfig, RewardTrainer


def _grpo_classes():
    from trl import GRPOConfig, GRPOTrainer
    return GRPOConfig, GRPOTrainer


def _rloo_classes():
    from trl import RLOOConfig, RLOOTrainer
    return RLOOConfig, RLOOTrainer


def _preference_settings(cfg: Any) -> dict[str, Any]:
    return {"beta": cfg.alignment.beta, "max_length": cfg.data.max_length}


def _dpo_settings(cfg: Any) -> dict[str, Any]:
    # The loss (sigmoid, IPO, hinge, robust, BCO on pairs) and cDPO/robust's flip share go to TRL as named.
    a = cfg.alignment
    return {**_preference_settings(cfg), "loss_type": [a.loss_type], "label_smoothing": a.label_smoothing}


def _cpo_settings(cfg: Any) -> dict[str, Any]:
    return {**_preference_settings(cfg), "loss_type": "sigmoid", "cpo_alpha": cfg.alignment.cpo_alpha}


def _simpo_settings(cfg: Any) -> dict[str, Any]:
    # SimPO is TRL's CPO trainer with the simpo loss and no SFT term (cpo_alpha 0), as in the paper.
    return {**_preference_settings(cfg), "loss_type": "simpo", "cpo_alpha": 0.0,
            "simpo_gamma": cfg.alignment.simpo_gamma}


def _kto_settings(cfg: Any) -> dict[str, Any]:
    return {**_preference_settings(cfg),
            "desirable_weight": cfg.alignment.desirable_weight,
            "undesirable_weight": cfg.alignment.undesirable_weight,
            # KTO's KL estimate pairs each example with its batch neighbours, in a fixed order.
            "train_sampling_strategy": "sequential"}


def _reward_kwargs(cfg: Any) -> dict[str, Any]:
    funcs, classes = online_rl.reward_functions(cfg, load_dtype(cfg))
    return {"reward_funcs": funcs, "reward_processing_classes": classes}


TRAINERS: dict[str, TrainerSpec] = {
    OBJECTIVE.dpo: TrainerSpec(_dpo_classes, _dpo_settings),
    OBJECTIVE.orpo: TrainerSpec(_orpo_classes, _preference_settings),
    OBJECTIVE.cpo: TrainerSpec(_cpo_classes, _cpo_settings),
    OBJECTIVE.simpo: TrainerSpec(_cpo_classes, _simpo_settings),
    OBJECTIVE.kto: TrainerSpec(_kto_classes, _kto_settings),
    OBJECTIVE.reward: TrainerSpec(_reward_classes, lambda cfg: {"max_length": cfg.data.max_length}),
    OBJECTIVE.grpo: TrainerSpec(_grpo_classes, online_rl.settings, _reward_kwargs),
    OBJECTIVE.rloo: TrainerSpec(_rloo_classes, online_rl.settings, _reward_kwargs),
}

# What the trainers log that the charts show (reward margins and accuracies above all).
ALIGNMENT_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                     "logps/chosen", "logps/rejected", "kl", "log_odds_ratio", "log_odds_chosen", "nll_loss",
                     "accuracy", "margin", "mean_reward", "min_reward", "max_reward",
                     # GRPO/RLOO: the summed reward and each reward source's mean ("rewards/<name>/mean").
                     "reward", "reward_std", "completions/mean_length", "frac_reward_zero_std", "entropy")


def is_alignment_metric(key: str) -> bool:
    key = key.removeprefix("eval_")
    return key in ALIGNMENT_METRICS or (key.startswith("rewards/") and key.endswith("/mean"))


def get_objective(name: str) -> tuple[ObjectiveInfo, TrainerSpec]:
    """The catalog entry and the trainer spec of an alignment objective, or a sentence."""
    if name not in TRAINERS:
        raise UserError(f"Training with the '{name}' objective is not available yet; choose "
                        f"{', '.join(catalog.OBJECTIVES)}.")
    return catalog.OBJECTIVES[name], TRAINERS[name]


def load_objective_model(cfg: Any) -> Any:
    """The trainable model for cfg: the method's causal LM, or for a reward model the same base with a
    one-output classification head (the head always trains; LoRA gets SEQ_CLS so PEFT saves it)."""

    if cfg.objective != OBJECTIVE.reward:
        return load_trainable_model(cfg)
    problems = validate_objective(cfg)
    if problems:
        raise UserError(" ".join(problems.values()))
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    torch.manual_seed(cfg.train.seed)  # the new head starts random; the seed makes it repeatable
    model = AutoModelForSequenceClassification.from_pretrained(
        str(resolve_model(cfg.model).source), num_labels=1, dtype=load_dtype(cfg),
        trust_remote_code=cfg.trust_remote_code, **load_kwargs(cfg))
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    if cfg.method.name == catalog.METHOD.full:
        model = apply_full(model, cfg)
    elif cfg.method.name == catalog.METHOD.last_layers:
        model = apply_last_layers(model, cfg)
        for p in model.score.parameters():
            p.requires_grad_(True)
    else:
        from peft import get_peft_model

        config = lora_config(cfg)
        config.task_type = "SEQ_CLS"
        config.modules_to_save = ["score"]
        model = get_peft_model(model, config)
    model = cast_for_training(model, cfg)  # full / last_layers: fp32 master weights, frozen in compute dtype
    model.train()
    return model


def _conversation(rows: list[dict], fmt: str, system: Optional[str]) -> list[dict]:
    """Rows in TRL's conversational form, so the tokenizer's chat template frames them exactly as in SFT."""
    out = []
    for row in rows:
        prompt = with_system(as_turns(row.get("prompt"), "user"), system)
        if fmt == "preference":
            out.append({"prompt": prompt, "chosen": as_turns(row["chosen"], "assistant"),
                        "rejected": as_turns(row["rejected"], "assistant")})
        else:
            out.append({"prompt": prompt, "completion": as_turns(row["completion"], "assistant"),
                        "label": bool(row["label"])})
    return out


def build_alignment_datasets(cfg: Any, tokenizer: Any = None) -> tuple[Any, Any]:
    from datasets import Dataset

    spec, _ = get_objective(cfg.objective)
    loaded, train_rows, val_rows = load_for_training(cfg.data, cfg.train.seed)
    fmt = getattr(loaded, "format", None)
    if spec.data_format == "prompts":
        return _prompt_dataset(cfg, tokenizer, fmt, train_rows, val_rows), None
    if fmt != spec.data_format:
        need = ("prompt/chosen/rejected pairs" if spec.data_format == "preference"
                else "prompt/completion/label rows")
        raise UserError(f"{spec.title} trains on {need}, but {cfg.data.path} holds '{fmt}' data; pick a "
                        f"{spec.data_format} dataset in the Dataset tab or change the objective.")
    if not train_rows:
        raise UserError(f"The training file {cfg.data.path} has no usable rows; check it in the Dataset tab.")
    if spec.data_format == "kto" and len({bool(r["label"]) for r in train_rows}) < 2:
        raise UserError(f"KTO needs both desirable (label true) and undesirable (label false) examples, but "
                        f"every row of {cfg.data.path} has the same label; add the other kind or use SFT.")
    train = Dataset.from_list(_conversation(train_rows, spec.data_format, cfg.data.system_prompt))
    val = Dataset.from_list(_conversation(val_rows, spec.data_format, cfg.data.system_prompt)) if val_rows else None
    return train, val


def _prompt_dataset(cfg: Any, tokenizer: Any, fmt: Optional[str], train_rows: list, val_rows: list) -> Any:
    """GRPO/RLOO train on prompts; their validation would mean sampling too, and its loss says nothing
    about quality, so the held-out rows are left unused and the reward curve shows progress."""
    from datasets import Dataset

    prompts = online_rl.prompt_rows(train_rows, fmt, cfg.data.system_prompt)
    dropped = 0
    if tokenizer is not None:
        prompts, dropped = online_rl.drop_long_prompts(prompts, tokenizer, cfg.data.max_length)
    if not prompts:
        raise UserError(f"{cfg.data.path} has no prompt that fits {cfg.data.max_length} tokens with a user turn; "
                        "check the dataset in the Dataset tab or raise data.max_length.")
    note(f"Data: {len(prompts)} prompts for {cfg.objective.upper()}"
         + (f", {dropped} longer than {cfg.data.max_length} tokens left out" if dropped else "")
         + (f"; the {len(val_rows)} validation rows are not used (the reward curve shows progress)."
            if val_rows else "."))
    return Dataset.from_list(prompts)


def _common_args(sft_args: Any, config_cls: type) -> dict[str, Any]:
    """The run's TrainingArguments (already built for SFT) carried over to the objective's Config."""
    from transformers import TrainingArguments

    base = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    wanted = {f.name for f in dataclasses.fields(config_cls) if f.init}
    skip = {"gradient_checkpointing", "learning_rate"}  # set by the method; learning rate passed below
    out = {k: getattr(sft_args, k) for k in base & wanted if k not in skip and hasattr(sft_args, k)}
    out["learning_rate"] = sft_args.learning_rate
    out["gradient_checkpointing"] = False
    out["remove_unused_columns"] = False
    # Enums go back as their values; TrainingArguments parses strings.
    return {k: (v.value if hasattr(v, "value") and not isinstance(v, (int, float, str)) else v)
            for k, v in out.items()}


def build_alignment_trainer(cfg: Any, sft_args: Any, model: Any, tokenizer: Any, train_ds: Any, val_ds: Any,
                            callbacks: list, optimizer: Any) -> Any:
    spec, trainer_spec = get_objective(cfg.objective)
    problems = validate_objective(cfg)
    if problems:
        raise UserError(" ".join(problems.values()))
    config_cls, trainer_cls = trainer_spec.classes()
    kwargs = {**_common_args(sft_args, config_cls), **trainer_spec.settings(cfg)}
    if "disable_dropout" in {f.name for f in dataclasses.fields(config_cls)}:
        kwargs["disable_dropout"] = True
    if spec.data_format == "prompts":
        kwargs["include_num_input_tokens_seen"] = "no"  # GRPO/RLOO count their own tokens (num_tokens)
    args = config_cls(**kwargs)
    callbacks = list(callbacks) + [AlignmentEventsCallback(Path(sft_args.output_dir).parent)]
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          processing_class=tokenizer, callbacks=callbacks, optimizers=(optimizer, None),
                          **trainer_spec.trainer_kwargs(cfg))
    if len(trainer.train_dataset) == 0:  # the reward trainer drops what does not fit max_length
        raise UserError(f"Every example of {cfg.data.path} is longer than the maximum length "
                        f"({cfg.data.max_length} tokens, chat template included); raise data.max_length.")
    return trainer


class AlignmentEventsCallback(TrainerCallback):
    """Writes the trainers' reward margins and accuracies as "alignment" events for the charts
    (train and eval alike; eval keys keep their "eval_" prefix)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        picked = {k: v for k, v in logs.items() if is_alignment_metric(k) and isinstance(v, (int, float))}
        if picked:
            rundir.append_event(self.run_dir, {"type": ev.ALIGNMENT, "step": state.global_step,
                                             "epoch": state.epoch, "phase": "eval" if "eval_loss" in logs
                                             else "train", **picked})
