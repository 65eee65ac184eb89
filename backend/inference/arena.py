"""Arena votes: which of several models' answers to one prompt the user preferred, kept in the run
directory, and exported as a preference file (prompt/chosen/rejected) the DPO objective trains on:
the loop from chat back to training.

A vote is one JSON line in RUN_DIR/arena_votes.jsonl: the prompt, each model's answer by label, and the
winner's label, or TIE / ALL_BAD, which are kept (they are the user's verdict) but prefer nothing. Exporting
pairs the winner with every other answer (identical answers are skipped: there is nothing to prefer).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from backend.core.errors import UserError
from backend.core.io import atomic_write_text
from backend.core.locks import file_lock
from backend.runs.rundir import CONFIG_FILE, now_iso, runs_root

VOTES_FILE = "arena_votes.jsonl"
EXPORT_FILE = "arena_preferences.jsonl"
ARENA_DIR = "arena"        # WORKSPACE/arena holds the votes of rounds in which no model came from a run
TIE = "tie"                # both (all) answers equally good
ALL_BAD = "all bad"        # none of the answers is worth preferring
OUTCOMES = (TIE, ALL_BAD)


def record_vote(run_dir: Path, prompt: str, answers: dict[str, str], winner: str,
                models: Optional[dict[str, str]] = None, system: Optional[str] = None) -> dict[str, Any]:
    """Append one vote; a winner that is not one of the answers (nor TIE/ALL_BAD), or fewer than two
    answers, is a sentence. `models` names what each label was (a run, a checkpoint folder, a base)."""
    if len(answers) < 2:
        raise UserError("A vote needs at least two answers side by side.")
    if winner not in answers and winner not in OUTCOMES:
        raise UserError(f"'{winner}' is not one of the models that answered ({', '.join(answers)}).")
    if not (prompt or "").strip():
        raise UserError("A vote needs the prompt the models answered.")
    vote: dict[str, Any] = {"time": now_iso(), "prompt": prompt, "answers": dict(answers), "winner": winner}
    if models:
        vote["models"] = {k: str(v) for k, v in models.items() if k in answers}
    if system and system.strip():
        vote["system"] = system.strip()
    path = Path(run_dir) / VOTES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
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
            if (isinstance(v, dict) and isinstance(v.get("answers"), dict)
                    and (v.get("winner") in v["answers"] or v.get("winner") in OUTCOMES)):
                votes.append(v)
    return votes


def preference_pairs(votes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """prompt/chosen/rejected rows: the winner against each other answer. A vote with a system prompt
    becomes a conversational row (the prompt a system and a user turn), so DPO trains on what was asked."""
    pairs: list[dict[str, Any]] = []
    for v in votes:
        if v["winner"] in OUTCOMES:
            continue
        chosen = v["answers"][v["winner"]]
        for label, answer in v["answers"].items():
            if label == v["winner"] or answer.strip() == chosen.strip():
                continue
            if v.get("system"):
                pairs.append({"prompt": [{"role": "system", "content": v["system"]},
                                         {"role": "user", "content": v["prompt"]}],
                              "chosen": [{"role": "assistant", "content": chosen}],
                              "rejected": [{"role": "assistant", "content": answer}]})
            else:
                pairs.append({"prompt": v["prompt"], "chosen": chosen, "rejected": answer})
    return pairs


def export_preferences(run_dir: Path, out: Optional[Path] = None) -> dict[str, Any]:
    """Write the votes as a prompt/chosen/rejected JSONL file (RUN_DIR/arena_preferences.jsonl unless
    `out` names another); {'path', 'votes', 'pairs'}."""
    votes = read_votes(run_dir)
    pairs = preference_pairs(votes)
    if not pairs:
        raise UserError(f"{Path(run_dir).name} has no votes between different answers to export yet: "
                        "vote for one answer (a tie or 'all bad' prefers none).")
    out = Path(out) if out is not None else Path(run_dir) / EXPORT_FILE
    atomic_write_text(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return {"path": str(out), "votes": len(votes), "pairs": len(pairs)}


def votes_home(workspace: Path, choices: Iterable[str]) -> Path:
    """Where a round's votes go: the run directory of the first picked model that comes from a run (its
    adapter, a checkpoint, its merged folder), else WORKSPACE/arena."""
    root = runs_root(Path(workspace)).resolve()
    for choice in choices:
        text = str(choice or "").strip()
        if not text:
            continue
        try:
            rel = Path(text).expanduser().resolve().relative_to(root)
        except (ValueError, OSError):
            continue
        if rel.parts and (root / rel.parts[0] / CONFIG_FILE).exists():
            return root / rel.parts[0]
    return Path(workspace) / ARENA_DIR
