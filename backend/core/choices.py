"""The studio user's choices, kept in the workspace so a reload or a restart brings them back.

`WORKSPACE/studio-choices.json` holds the RunConfig being built (dataset, mapping, method and
hyperparameters) and the run the Train tab shows. It is written whenever either changes, atomically;
a file that no longer validates (an older version's, a hand edit) is set aside, never a crash.
Importing settings from a run or a YAML file reads them through the same validation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from backend.core.config import ConfigError, RunConfig, deep_merge, load_config, validate_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_json

CHOICES_FILE = "studio-choices.json"
RUN_CONFIG_FILE = "config.yaml"   # a run directory's config (backend.runs.rundir writes it)


def _path(workspace: Path) -> Path:
    return Path(workspace) / CHOICES_FILE


def _read(workspace: Path) -> dict[str, Any]:
    try:
        data = json.loads(_path(workspace).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_choices(workspace: Path) -> dict[str, Any]:
    """{"run_config": dict or None, "selected_run": str or None, "recent_models": [str]}; None (or [])
    where nothing usable was saved."""
    data = _read(workspace)
    rc = data.get("run_config")
    if isinstance(rc, dict):
        try:
            rc = validate_config(deep_merge(RunConfig().model_dump(mode="json"), rc)).model_dump(mode="json")
        except ConfigError:
            rc = None  # the defaults are shown instead; the bad file is overwritten by the next choice
    else:
        rc = None
    run = data.get("selected_run")
    recent = [m for m in data.get("recent_models") or [] if isinstance(m, str) and m]
    return {"run_config": rc, "selected_run": run if isinstance(run, str) and run else None,
            "recent_models": recent}


def save_choices(workspace: Path, **changes: Any) -> None:
    """Merge `run_config=`, `selected_run=` and/or `recent_models=` into the workspace's choices file."""
    unknown = set(changes) - {"run_config", "selected_run", "recent_models"}
    if unknown:
        raise ValueError(f"unknown choice(s): {sorted(unknown)}")
    data = _read(workspace)
    data.update(changes)
    Path(workspace).mkdir(parents=True, exist_ok=True)
    atomic_write_json(_path(workspace), data)


def settings_from(path: str | Path) -> dict[str, Any]:
    """The RunConfig dict in a YAML file or a run directory (its config.yaml), validated."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        p = p / RUN_CONFIG_FILE
    if not p.is_file():
        raise UserError(f"There are no settings at {p}: choose a run, or a RunConfig YAML file exported from "
                        "the Method tab.")
    return load_config(p).model_dump(mode="json")


def selected_run_dir(workspace: Path, runs_folder: str = "runs") -> Optional[Path]:
    """The saved Train-tab run, if it still exists (its id is checked to be a plain folder name)."""
    run = load_choices(workspace)["selected_run"]
    if not run or "/" in run or "\\" in run or run.startswith("."):
        return None
    folder = Path(workspace) / runs_folder / run
    return folder if folder.is_dir() else None
