"""The checks before a run starts: the config's ranges, the model, the method, the objective and this machine.

Each check lives with what it checks (RunConfig ranges in backend.core.config, method and hardware
checks in backend.methods.validation, method/objective combinations in backend.objectives.validate);
this module asks them all in one place, so the Method tab and a start from the command line see the
same sentences.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from backend.core.catalog import OBJECTIVES
from backend.core.config import ConfigError, RunConfig, absolute_paths, validate_config
from backend.core.errors import UserError
from backend.core.kernels import kernel_problems
from backend.core.models import ModelError, load_model_config
from backend.data.records import load_rows
from backend.data.templates import TEMPLATES
from backend.methods.tokens import new_tokens_problems
from backend.methods.validation import validate_for_model
from backend.objectives.validate import validate_objective


def run_problems(cfg: RunConfig, model_config: Any) -> dict[str, str]:
    """Field -> sentence for everything about cfg that cannot train on this model and machine."""
    errors = validate_for_model(cfg, model_config)
    for field, sentence in validate_objective(cfg).items():
        errors.setdefault(field, sentence)
    for field, sentence in kernel_problems(cfg).items():  # a speed switch set "on" that cannot run here
        errors.setdefault(field, sentence)
    return errors


# ---------------------------------------------------------------- data checks (no model weights)

# Formats each kind of objective can train on ("prompts": any format that has a prompt).
_SFT_FORMATS = ("messages", "prompt_completion", "text")
_PROMPT_FORMATS = ("messages", "prompt_completion", "preference", "kto")
_READ_CACHE: "OrderedDict[str, tuple[Optional[str], Optional[str], str]]" = OrderedDict()
_READ_LOCK = threading.Lock()
_READ_CACHE_SIZE = 16


def _read_format(path: str, mapping: Optional[dict], fmt: str, skip: bool) -> tuple[Optional[str], Optional[str], str]:
    """(detected format or None, the problem sentence or None, its field); cached by the file's mtime so
    the Method tab can ask on every edit without re-reading the file."""
    p = Path(path)
    try:
        stamp = 0 if str(path).startswith("hf://") else p.stat().st_mtime_ns
    except OSError:
        return None, (f"The data file {path} does not exist; pick a file in the Dataset tab (or fix the path)."), "data.path"
    key = json.dumps([str(p), stamp, mapping or {}, fmt, skip], sort_keys=True)
    with _READ_LOCK:
        if key in _READ_CACHE:
            _READ_CACHE.move_to_end(key)
            return _READ_CACHE[key]
    try:
        loaded = load_rows(path, mapping, fmt, skip_bad_rows=skip)
        found = (loaded.format, None, "")
    except UserError as e:
        where = "data.mapping" if mapping and "mapping" in str(e) else "data.format" if "format" in str(e) else "data.path"
        found = (None, str(e), where)
    except (OSError, ValueError) as e:
        found = (None, f"The data file {path} could not be read ({e}); check it in the Dataset tab.", "data.path")
    with _READ_LOCK:
        _READ_CACHE[key] = found
        while len(_READ_CACHE) > _READ_CACHE_SIZE:
            _READ_CACHE.popitem(last=False)
    return found


def data_problems(cfg: RunConfig) -> dict[str, str]:
    """Field -> sentence for the config ↔ data file ↔ mapping ↔ template ↔ objective checks, all of
    which run without loading model weights: a run that would fail on them is refused before it starts."""
    d = absolute_paths(cfg).data  # relative to the current directory, as the runner resolves them
    errors: dict[str, str] = {}
    fmt, problem, where = _read_format(d.path, d.mapping, d.format, d.skip_bad_rows)
    if problem:
        errors[where] = problem
    if d.validation_path:
        vfmt, vproblem, _ = _read_format(d.validation_path, d.mapping, fmt or d.format, d.skip_bad_rows)
        if vproblem:
            errors["data.validation_path"] = f"The validation file: {vproblem}"
        elif fmt and vfmt != fmt:
            errors["data.validation_path"] = (f"The validation file reads as {vfmt} data but the training file as "
                                              f"{fmt}; use files with the same layout.")
    template = (d.template or "auto").strip().lower()
    if template != "auto" and template not in TEMPLATES:
        errors["data.template"] = f"Unknown chat template '{d.template}'. Choose auto or one of: {', '.join(TEMPLATES)}."
    errors.update(new_tokens_problems(cfg))  # needs no model either: refused before a run directory exists
    info = OBJECTIVES.get(cfg.objective)
    if fmt and info is not None:
        wanted = info.data_format
        ok = (fmt in _SFT_FORMATS if wanted is None else fmt in _PROMPT_FORMATS if wanted == "prompts"
              else fmt == wanted)
        if not ok:
            need = {None: "conversations, prompt/completion pairs or plain text",
                    "prompts": "rows with a prompt", "preference": "prompt/chosen/rejected pairs",
                    "kto": "prompt/completion/label rows"}.get(wanted, str(wanted))
            errors["objective"] = (f"{info.title} trains on {need}, but {Path(d.path).name} holds {fmt} data; "
                                   "pick another dataset in the Dataset tab or another objective.")
    return errors


def check_run(data: dict[str, Any]) -> tuple[RunConfig | None, dict[str, str]]:
    """Validate a RunConfig dict fully (ranges, data, model, hardware): (RunConfig or None, field -> sentence)."""
    try:
        cfg = validate_config(data)
    except ConfigError as e:
        return None, dict(e.fields)
    found = data_problems(cfg)
    try:
        model_config = load_model_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except ModelError as e:
        return cfg, {**found, "model": str(e)}
    for field, sentence in run_problems(cfg, model_config).items():
        found.setdefault(field, sentence)
    return cfg, found


def start_problems(cfg: RunConfig) -> Optional[str]:
    """The sentence(s) that stop a start, or None: every check that needs no model weights."""
    found = data_problems(cfg)
    return " ".join(found.values()) if found else None
