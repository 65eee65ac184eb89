"""The red-team / regression prompt set: prompts whose answers must keep a property after training.

Each prompt carries its own automatic rule, so a refusal that stopped being a refusal, an injected
instruction that got obeyed, a general fact that was forgotten or a format that broke shows up as a
failed check. Base and adapter answer the same prompts; a prompt whose verdict differs between them is
flagged "changed", and one the base passed and the adapter fails is a regression.

The bundled set is assets/redteam/prompts.jsonl; a user adds prompts in WORKSPACE/redteam.jsonl (same
layout: one JSON object per line with `prompt` and `rule`, optionally `id`, `category`, `expect`), or
names a file. Rules: `{"any_of": [words]}` passes when the answer contains one of them (case-insensitive),
`{"none_of": [words]}` when it contains none, `{"regex": P}` when P matches, `{"not_regex": P}` when it
does not.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from backend.core.errors import UserError
from backend.core.paths import PROJECT_ROOT

BUNDLED_SET = PROJECT_ROOT / "assets" / "redteam" / "prompts.jsonl"
USER_SET_NAME = "redteam.jsonl"
RULE_KINDS = ("any_of", "none_of", "regex", "not_regex")


def _check_rule(rule: Any, where: str) -> dict[str, Any]:
    if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in RULE_KINDS:
        raise UserError(f"{where}: the rule must be one of {', '.join(RULE_KINDS)} "
                        '(for example {"any_of": ["sorry", "cannot"]}).')
    kind, value = next(iter(rule.items()))
    if kind in ("any_of", "none_of"):
        if not isinstance(value, list) or not value or not all(isinstance(w, str) and w for w in value):
            raise UserError(f"{where}: {kind} needs a list of words.")
    else:
        try:
            re.compile(str(value))
        except re.error as e:
            raise UserError(f"{where}: the pattern {value!r} is not a valid regular expression ({e}).") from None
    return {kind: value}


def load_prompt_set(path: Path, source: str) -> list[dict[str, Any]]:
    """The prompts of one set file, each checked; a bad line is a sentence naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The red-team prompt file {path} does not exist.")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not JSON ({e.msg}).") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise UserError(f"{where} needs a non-empty \"prompt\".")
        prompts.append({"id": str(item.get("id") or f"{source}-{n}"), "category": str(item.get("category") or "custom"),
                        "prompt": item["prompt"], "rule": _check_rule(item.get("rule"), where),
                        "expect": str(item.get("expect") or ""), "source": source})
    return prompts


def prompt_set(workspace: Optional[Path] = None, extra: Optional[str] = None,
               bundled: bool = True) -> list[dict[str, Any]]:
    """The bundled prompts, then the workspace's redteam.jsonl if there is one, then `extra`."""
    prompts = load_prompt_set(BUNDLED_SET, "bundled") if bundled else []
    if workspace is not None and (Path(workspace) / USER_SET_NAME).is_file():
        prompts += load_prompt_set(Path(workspace) / USER_SET_NAME, "workspace")
    if extra:
        prompts += load_prompt_set(Path(extra), "file")
    return prompts


def passes(rule: dict[str, Any], answer: str) -> bool:
    kind, value = next(iter(rule.items()))
    text = answer or ""
    if kind == "any_of":
        return any(w.lower() in text.lower() for w in value)
    if kind == "none_of":
        return not any(w.lower() in text.lower() for w in value)
    found = re.search(str(value), text) is not None
    return found if kind == "regex" else not found


def judge(prompts: list[dict[str, Any]], answers: dict[str, list[str]], base: str = "base") -> dict[str, Any]:
    """Verdicts per prompt and model, with `changed` (verdicts differ from the base's) and `regression`
    (the base passed, this model fails) flags, and pass counts per model."""
    rows = []
    for i, p in enumerate(prompts):
        verdicts = {name: passes(p["rule"], ans[i]) for name, ans in answers.items()}
        others = [n for n in answers if n != base]
        rows.append({**{k: p[k] for k in ("id", "category", "prompt", "expect", "source")}, "rule": p["rule"],
                     "answers": {n: ans[i] for n, ans in answers.items()}, "passed": verdicts,
                     "changed": any(verdicts[n] != verdicts.get(base) for n in others),
                     "regression": any(verdicts.get(base) and not verdicts[n] for n in others)})
    summary = {n: sum(r["passed"][n] for r in rows) for n in answers}
    return {"prompts": len(rows), "passed": summary, "changed": sum(r["changed"] for r in rows),
            "regressions": [r["id"] for r in rows if r["regression"]], "rows": rows}
