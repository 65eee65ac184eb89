"""Benchmarks through lm-evaluation-harness (`pip install fine-tune-studio[eval]`).

A task is an installed lm-eval task name (hellaswag, arc_easy, ...) or the path of a local YAML task,
for example one over the user's own JSONL file (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`),
which runs offline. Each task runs on the base model, on the run's adapter (lm-eval's `peft=`), and on any
merged model folder named. One task that cannot run (a hub dataset without network, a name lm-eval does
not know) is a sentence in `problems`; the others still run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from backend.core.errors import UserError

_OFFLINE_HINTS = ("offline", "connection", "couldn't reach", "could not reach", "name resolution",
                  "localentrynotfound", "max retries", "network", "unreachable")


def parse_tasks(text: Any) -> list[str]:
    items = text if isinstance(text, (list, tuple)) else str(text or "").split(",")
    return [str(t).strip() for t in items if str(t).strip()]


def _task_name_of_yaml(path: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"The lm-eval task file {path} cannot be read as YAML ({e}).") from None
    name = data.get("task") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise UserError(f"The lm-eval task file {path} has no `task:` name.")
    return name


def resolve_tasks(tasks: list[str]) -> tuple[list[str], list[str]]:
    """(task names, folders lm-eval must also scan): a YAML path contributes its folder."""
    names, folders = [], []
    for t in tasks:
        p = Path(t).expanduser()
        if t.endswith((".yaml", ".yml")):
            if not p.is_file():
                raise UserError(f"The lm-eval task file {p} does not exist.")
            names.append(_task_name_of_yaml(p))
            if str(p.resolve().parent) not in folders:
                folders.append(str(p.resolve().parent))
        else:
            names.append(t)
    return names, folders


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("Benchmarks need lm-evaluation-harness, which is not installed; install it with "
                        "`pip install 'fine-tune-studio[eval]'` (or `pip install lm-eval`).") from None


def problem_sentence(task: str, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if any(h in text.lower() for h in _OFFLINE_HINTS) or os.environ.get("HF_HUB_OFFLINE") == "1" and "hub" in text.lower():
        return (f"The lm-eval task {task} needs a dataset from the Hugging Face hub, which cannot be reached "
                "from here. Run it once with a network connection (the dataset is then cached), or write a local "
                "YAML task over your own file.")
    return f"The lm-eval task {task} could not run: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}."


def _figures(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's results, without its ',none' filter suffix and aliases."""
    out: dict[str, dict[str, float]] = {}
    for task, values in (results.get("results") or {}).items():
        clean = {}
        for key, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "sample_len":
                metric, _, filt = key.partition(",")
                clean[metric if filt in ("", "none") else f"{metric} ({filt})"] = round(float(v), 6)
        out[task] = clean
    return out


def run_harness(models: dict[str, dict[str, Any]], tasks: list[str], limit: Optional[int] = None,
                batch_size: int = 4, device: str = "cpu",
                progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """models: {label: {"pretrained": path, "peft": adapter dir or None, "tokenizer": path or None}}.
    Returns {"tasks": [...], "results": {label: {task: {metric: value}}}, "problems": [sentences]}."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names, folders = resolve_tasks(tasks)
    # Scanning lm-eval's thousands of bundled tasks takes a minute on a small CPU; skip it when every
    # task is a local file.
    only_local = all(t.endswith((".yaml", ".yml")) for t in tasks)
    manager = TaskManager(include_path=folders or None, include_defaults=not only_local)
    known = set(manager.all_tasks) | set(manager.all_groups) | set(manager.all_tags)
    problems = [f"lm-eval has no task named {n}; name an installed task (`lm-eval ls tasks`) or a local YAML file."
                for n in names if n not in known]
    runnable = [n for n in names if n in known]
    results: dict[str, dict[str, Any]] = {}
    failed: set[str] = set()
    for label, spec in models.items():
        if not runnable:
            break
        progress(f"lm-eval: loading {label}")
        lm = HFLM(pretrained=spec["pretrained"], peft=spec.get("peft"), tokenizer=spec.get("tokenizer"),
                  device=device, batch_size=batch_size, dtype="float32" if device == "cpu" else "auto")
        results[label] = {}
        for task in runnable:
            if task in failed:
                continue
            progress(f"lm-eval: {task} on {label}")
            try:
                out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit,
                                      log_samples=False, bootstrap_iters=0, verbosity=None)
            except Exception as e:  # noqa: BLE001 - one task's failure is a sentence, the others still run
                problems.append(problem_sentence(task, e))
                failed.add(task)
                continue
            results[label].update(_figures(out or {}))
        del lm
    return {"tasks": names, "results": results, "problems": problems, "limit": limit}
