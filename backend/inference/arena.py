"""Arena votes: which of several models' answers to one prompt the user preferred, kept in the run
directory, and exported as a preference file (prompt/chosen/rejected) the DPO objective trains on:
the loop from chat back to training.

A vote is one JSON line in RUN_DIR/arena_votes.jsonl: the prompt, each model's answer by label, and the
winner's label. Exporting pairs the winner with every other answer (identical answers are skipped:
there is nothing to prefer).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.core.errors import UserError
from backend.core.io import atomic_write_text
from backend.core.locks import file_lock
from backend.runs.rundir import now_iso

VOTES_FILE = "arena_votes.jsonl"


def record_vote(run_dir: Path, prompt: str, answers: dict[str, str], winner: str) -> dict[str, Any]:
    """Append one vote; a winner that is not one of the answers, or fewer than two answers, is a sentence."""
    if len(answers) < 2:
        raise UserError("A vote needs at least two answers side by side.")
    if winner not in answers:
        raise UserError(f"'{winner}' is not one of the models that answered ({', '.join(answers)}).")
    if not (prompt or "").strip():
        raise UserError("A vote needs the prompt the models answered.")
    vote = {"time": now_iso(), "prompt": prompt, "answers": dict(answers), "winner": winner}
    path = Path(run_dir) / VOTES_FILE
    with file_lock(path.with_suffix(".lock")):
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(vote, ensure_ascii=False) + "\n")
    return vote


def read_votes(run_dir: Path) -> list[dict[str, Any]]:
    """The recorded votes; a half-written or foreign line is skipped."""
    path = Path(run_dir) / VOTES_FILE
    votes = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                v = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(v, dict) and isinstance(v.get("answers"), dict) and v.get("winner") in v["answers"]:
                votes.append(v)
    return votes


def preference_pairs(votes: list[dict[str, Any]]) -> list[dict[str, str]]:
    pairs = []
    for v in votes:
        chosen = v["answers"][v["winner"]]
        for label, answer in v["answers"].items():
            if label != v["winner"] and answer.strip() != chosen.strip():
                pairs.append({"prompt": v["prompt"], "chosen": chosen, "rejected": answer})
    return pairs


def export_preferences(run_dir: Path, out: Path) -> dict[str, Any]:
    """Write the votes as a prompt/chosen/rejected JSONL file; {'path', 'votes', 'pairs'}."""
    votes = read_votes(run_dir)
    pairs = preference_pairs(votes)
    if not pairs:
        raise UserError(f"The run {Path(run_dir).name} has no votes between different answers to export yet.")
    atomic_write_text(Path(out), "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return {"path": str(out), "votes": len(votes), "pairs": len(pairs)}
