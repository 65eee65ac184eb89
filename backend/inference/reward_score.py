"""Scoring answers with a reward model: one prompt's answers, or a preference file's pairs.

Before a reward model steers hours of GRPO/RLOO, it is worth checking that it prefers the
answers a person would: `score_answers` ranks answers to one prompt, `pair_accuracy` counts how
often a preference file's chosen answer outscores its rejected one. Text is framed by the
reward model's own chat template, as TRL frames it while training and while scoring samples.
"""
from __future__ import annotations

from typing import Any, Optional

from backend.core.errors import UserError
from backend.data.records import as_turns, with_system


def _texts(tokenizer: Any, prompt: Any, answers: list[Any], system: Optional[str]) -> list[str]:
    head = with_system(as_turns(prompt, "user"), system)
    return [tokenizer.apply_chat_template(head + as_turns(a, "assistant"), tokenize=False) for a in answers]


def _scores(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> list[float]:
    import torch

    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                      add_special_tokens=False)
    with torch.inference_mode():
        return [float(v) for v in model(**batch).logits[:, 0]]


def score_answers(model: Any, tokenizer: Any, prompt: str, answers: list[str], system: Optional[str] = None,
                  max_length: int = 2048) -> list[float]:
    """One score per answer to `prompt` (higher is preferred)."""
    if not answers:
        raise UserError("Give at least one answer to score (--answer TEXT, once per answer).")
    return _scores(model, tokenizer, _texts(tokenizer, prompt, answers, system), max_length)


def pair_accuracy(model: Any, tokenizer: Any, rows: list[dict], system: Optional[str] = None,
                  max_length: int = 2048) -> dict[str, Any]:
    """Share of preference rows whose chosen answer outscores the rejected one, and the mean margin."""
    margins = []
    for row in rows:
        chosen, rejected = _scores(model, tokenizer, _texts(tokenizer, row.get("prompt") or "",
                                                            [row["chosen"], row["rejected"]], system), max_length)
        margins.append(chosen - rejected)
    if not margins:
        raise UserError("The file holds no prompt/chosen/rejected rows to score.")
    return {"pairs": len(margins), "accuracy": sum(m > 0 for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins)}
