"""Online RL (GRPO, RLOO): prompts in, sampled answers scored by rewards, the policy pushed toward the better ones.

TRL's GRPOTrainer and RLOOTrainer do the sampling and the update; this module supplies what they need
from a RunConfig: prompt rows (with the dataset's own answer kept as a "reference" column), and the
reward functions the studio offers without code:

- a reward model: a finished studio run with the reward objective, or a directory holding a
  sequence-classification model with one output;
- a pattern: 1 when the answer matches a regular expression (a required answer format), else 0;
- reference overlap: token F1 between the answer and the dataset's own answer, in [0, 1].
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from backend.core import catalog
from backend.core.config import load_config
from backend.core.errors import UserError
from backend.core.models import load_tokenizer, looks_like_hub_id, resolve_model
from backend.data.records import as_turns, with_system
from backend.runs import rundir

REFERENCE_COLUMN = "reference"
_WORD = re.compile(r"\w+", re.UNICODE)


def is_online(objective: str) -> bool:
    info = catalog.OBJECTIVES.get(objective)
    return bool(info and info.online)


# ---------------------------------------------------------------------------------------- prompts

def prompt_rows(rows: list[dict], fmt: Optional[str], system: Optional[str]) -> list[dict]:
    """Normalized dataset rows as conversational prompts plus the answer the dataset gives, if any.

    A chat's prompt is every turn before its last assistant turn; preference rows give their prompt
    and chosen answer; KTO rows give their prompt and, when marked desirable, their completion.
    """
    if fmt == "text":
        raise UserError("GRPO and RLOO need prompts (instructions, chats, preference or KTO rows), but the "
                        "dataset is plain text; pick a dataset with prompts in the Dataset tab.")
    out = []
    for row in rows:
        prompt, reference = _split(row, fmt)
        if not prompt or not any(m["role"] == "user" for m in prompt):
            continue
        out.append({"prompt": with_system(prompt, system), REFERENCE_COLUMN: reference or ""})
    return out


def _split(row: dict, fmt: Optional[str]) -> tuple[list[dict], Optional[str]]:
    if "messages" in row:
        msgs = [dict(m) for m in row["messages"]]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            return msgs, None
        return msgs[:last], msgs[last]["content"]
    prompt = as_turns(row.get("prompt"), "user")
    if fmt == "preference":
        return prompt, _text_of(row.get("chosen"))
    if fmt == "kto":
        return prompt, _text_of(row.get("completion")) if row.get("label") else None
    return prompt, _text_of(row.get("completion"))


def _text_of(value: Any) -> Optional[str]:
    if isinstance(value, list):  # conversational answer: the assistant turns' text
        return "\n".join(str(m.get("content", "")) for m in value if m.get("role") == "assistant") or None
    return value if isinstance(value, str) else None


def drop_long_prompts(prompts: list[dict], tokenizer: Any, max_length: int) -> tuple[list[dict], int]:
    """Prompts whose chat-templated length fits max_length, and how many were dropped (the trainers
    do not truncate prompts, and a cut prompt would ask a different question)."""
    kept = []
    for row in prompts:
        ids = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        if len(ids) <= max_length:
            kept.append(row)
    return kept, len(prompts) - len(kept)


# ---------------------------------------------------------------------------------------- rewards

def completion_text(completion: Any) -> str:
    """A completion as TRL passes it (a string, or a list of chat messages) as plain text."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def pattern_reward(pattern: str) -> Callable[..., list[float]]:
    compiled = compile_pattern(pattern)

    def pattern(completions: list, **_: Any) -> list[float]:
        return [1.0 if compiled.search(completion_text(c)) else 0.0 for c in completions]

    return pattern


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style token overlap F1 (lower-cased words), 0 when either side is empty."""
    a = _WORD.findall(answer.lower())
    b = _WORD.findall(reference.lower())
    if not a or not b:
        return 0.0
    common = sum((Counter(a) & Counter(b)).values())
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def reference_overlap(completions: list, reference: Optional[list] = None, **_: Any) -> list[Optional[float]]:
    # None (no reference for this prompt) makes TRL skip the score instead of counting it as 0.
    refs = reference or [""] * len(completions)
    return [token_f1(completion_text(c), r) if r else None for c, r in zip(completions, refs)]


def compile_pattern(pattern: str) -> "re.Pattern[str]":
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise UserError(f"The reward pattern {pattern!r} is not a valid regular expression ({e}); "
                        "fix it in the Method tab (alignment.reward_pattern).") from None


def reward_sources(alignment: Any) -> list[str]:
    """The reward sources a config turns on, by name."""
    out = []
    if alignment.reward_model:
        out.append("reward model")
    if alignment.reward_pattern:
        out.append("pattern")
    if alignment.reward_reference:
        out.append("reference overlap")
    return out


def validate_online(cfg: Any) -> dict[str, str]:
    """Field -> sentence for GRPO/RLOO settings that cannot train (checked before anything loads)."""
    a, t, d = cfg.alignment, cfg.train, cfg.distributed
    problems: dict[str, str] = {}
    if not reward_sources(a):
        problems["alignment.reward_model"] = (
            f"{cfg.objective.upper()} needs at least one reward: a reward model run, a reward pattern, or "
            "reference overlap; set one in the alignment settings.")
    if a.reward_pattern:
        try:
            compile_pattern(a.reward_pattern)
        except UserError as e:
            problems["alignment.reward_pattern"] = str(e)
    if a.reward_model:
        try:
            locate_reward_model(a.reward_model)
        except UserError as e:
            problems["alignment.reward_model"] = str(e)
    per_update = t.batch_size * t.gradient_accumulation * d.gpus * d.nodes
    if per_update % a.num_generations:
        problems["alignment.num_generations"] = (
            f"Each prompt gets {a.num_generations} answers, so the answers per update (batch size {t.batch_size} "
            f"x accumulation {t.gradient_accumulation} x {d.gpus * d.nodes} GPU(s) = {per_update}) must be a "
            f"multiple of {a.num_generations}; change the batch size, the accumulation or the number of answers.")
    return problems


# ---------------------------------------------------------------------------------------- reward model

def locate_reward_model(ref: str) -> dict[str, Any]:
    """Where a reward model lives: {"kind": "full"|"adapter", "path", "base"}; a sentence if it is not one.

    Accepts a studio run directory (objective reward, finished), its adapter folder, a
    sequence-classification model directory, or a hub id.
    """
    import json

    p = Path(ref).expanduser()
    if not p.is_dir():
        if not p.exists() and looks_like_hub_id(ref):
            # A hub reward model (owner/name): checked when it downloads, like a hub base model.
            return {"kind": "full", "path": ref, "base": None}
        raise UserError(f"The reward model {ref} is not a directory; pick a finished reward-model run, a "
                        "directory holding a reward model, or a hub id (owner/name).")
    if (p / "config.yaml").exists() and not (p / "adapter").is_dir():
        state = rundir.read_status(p).get("state") or "unknown"
        raise UserError(f"The run {p.name} has no saved model yet (state: {state}); wait until it has finished, "
                        "or pick a finished reward-model run.")
    if (p / "config.yaml").exists():  # a studio run directory
        run_cfg = load_config(p / "config.yaml")
        if run_cfg.objective != catalog.OBJECTIVE.reward:
            raise UserError(f"The run {p.name} trained with the {run_cfg.objective} objective, not a reward "
                            "model; pick a run whose objective is reward.")
        found = locate_reward_model(str(p / "adapter"))
        if found["kind"] == "adapter":
            found["base"] = run_cfg.model
        return found
    if (p / "adapter_config.json").exists():
        conf = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        if conf.get("task_type") != "SEQ_CLS":
            raise UserError(f"{p} holds a {conf.get('task_type') or 'causal'} adapter, not a reward model "
                            "(a reward model scores text with a one-number head); pick a reward-model run.")
        return {"kind": "adapter", "path": str(p), "base": conf.get("base_model_name_or_path")}
    if (p / "config.json").exists():
        conf = json.loads((p / "config.json").read_text(encoding="utf-8"))
        archs = conf.get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise UserError(f"{p} holds a {', '.join(archs) or 'model'} without a scoring head, not a reward "
                            "model; train one with the reward objective first.")
        return {"kind": "full", "path": str(p), "base": None}
    raise UserError(f"{p} holds neither a studio run, an adapter nor a model (no config.json); pick a "
                    "finished reward-model run.")


def load_reward_model(ref: str, dtype: Any, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(sequence-classification model in eval mode, its tokenizer) for a reward model reference."""
    from transformers import AutoModelForSequenceClassification

    found = locate_reward_model(ref)
    if found["kind"] == "full":
        # safetensors only: a pickled checkpoint from the hub could run code on load.
        model = AutoModelForSequenceClassification.from_pretrained(
            found["path"], num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True)
        tokenizer = load_tokenizer(found["path"], trust_remote_code=trust_remote_code)
    else:
        from peft import PeftModel

        base = found["base"]
        if not base:
            raise UserError(f"The reward adapter {found['path']} does not name its base model; pick its run "
                            "directory instead.")
        source = resolve_model(base).source
        from transformers.utils import logging as hf_logging

        # The base has no score head yet ("newly initialized" in transformers' report); the adapter
        # brings the trained one, so that report would only mislead.
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(source), num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code)
        finally:
            hf_logging.set_verbosity(previous)
        model = PeftModel.from_pretrained(model, found["path"]).merge_and_unload()
        tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = "reward_model"  # TRL names the chart's curve "rewards/reward_model/mean" after it
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


def reward_functions(cfg: Any, dtype: Any = None) -> tuple[list[Any], list[Any]]:
    """(reward_funcs, reward_processing_classes) for the trainer, in the order of reward_sources."""
    a = cfg.alignment
    funcs: list[Any] = []
    classes: list[Any] = []
    if a.reward_model:
        model, tokenizer = load_reward_model(a.reward_model, dtype, cfg.trust_remote_code)
        funcs.append(model)
        classes.append(tokenizer)
    if a.reward_pattern:
        funcs.append(pattern_reward(a.reward_pattern))
        classes.append(None)
    if a.reward_reference:
        funcs.append(reference_overlap)
        classes.append(None)
    return funcs, classes


def settings(cfg: Any) -> dict[str, Any]:
    """The GRPO/RLOO Config kwargs a RunConfig sets."""
    a = cfg.alignment
    return {"num_generations": a.num_generations, "max_completion_length": a.max_completion_length,
            "temperature": a.temperature, "beta": a.kl_coef, "log_completions": False,
            # The batch is counted in answers; one generation round feeds one optimizer step.
            "steps_per_generation": cfg.train.gradient_accumulation}


def reward_runs(workspace: Path) -> list[tuple[str, str]]:
    """(label, run directory) of the workspace's finished reward-model runs, newest first: the
    choices for alignment.reward_model."""
    out = []
    for row in rundir.list_runs(Path(workspace)):
        if row["state"] != "completed" or not (Path(row["dir"]) / "adapter").is_dir():
            continue
        try:
            objective = load_config(Path(row["dir"]) / rundir.CONFIG_FILE).objective
        except Exception:  # noqa: BLE001 - an unreadable run is simply not offered
            continue
        if objective == catalog.OBJECTIVE.reward:
            label = f"{row['name'] or row['id']} ({row['method']}, {row['model']})"
            out.append((label, row["dir"]))
    return out


def drop_reference_adapter(model: Any) -> None:
    """With a KL penalty TRL keeps a frozen copy of the starting adapter named "ref"; the saved
    adapter should hold only what was trained, so the copy goes once training is over."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and "ref" in peft_config and len(peft_config) > 1:
        model.delete_adapter("ref")
