"""Every file the studio ships or writes, read as RunConfigs for the command line.

That covers a preset (its `preset:` metadata block is dropped, and the fields it leaves out are
filled from the defaults, exactly as the Method tab fills them), a run's `config.yaml`, the YAML the
Method tab exports, and a queue file (`queue.json`, whose waiting entries run in order).

A relative data or model path is looked up in this order, and the first that exists is used:

1. the folder of the config file;
2. the workspace;
3. the project folder, where the bundled `assets/` are.

The absolute path found is written into the run's `config.yaml`. When no folder has the file, the
sentence names the folders it looked in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from backend.core.config import (ConfigError, RunConfig, deep_merge, read_settings, resolve_paths,
                                 validate_config)
from backend.core.paths import PROJECT_ROOT
from backend.core.presets import META_KEY, load_preset
from backend.runs.queue import QUEUED

SEARCH_ORDER = "the config file's folder, then the workspace, then the project folder (its bundled assets/)"


def search_roots(config_dir: Optional[Path], workspace: Optional[Path]) -> list[Path]:
    """The folders a relative path is looked up in, in order, without repeats."""
    roots: list[Path] = []
    for root in (config_dir, workspace, PROJECT_ROOT):
        if root is not None and Path(root).resolve() not in roots:
            roots.append(Path(root).resolve())
    return roots


def filled(data: dict[str, Any], preset: Optional[str] = None, source: Optional[str] = None) -> RunConfig:
    """A partial config over the defaults (and under `preset`, when named): the config's own fields win."""
    base = RunConfig().model_dump(mode="json")
    if preset:
        base = deep_merge(base, load_preset(preset))
    return validate_config(deep_merge(base, {k: v for k, v in data.items() if k != META_KEY}), source=source)


def is_queue_file(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("entries"), list) and "version" in data


def read_run_files(path: str | Path, preset: Optional[str] = None, workspace: Optional[Path] = None,
                   strict_paths: bool = True) -> list[RunConfig]:
    """The RunConfigs one file holds: one for a config or preset, the waiting entries of a queue file."""
    p = Path(path).expanduser()
    data = read_settings(p)
    roots = search_roots(p.resolve().parent, workspace)
    if is_queue_file(data):
        entries = [e for e in data["entries"] if isinstance(e, dict) and e.get("state") == QUEUED]
        if not entries:
            raise ConfigError({"": f"the queue file {p} has no waiting entries (state '{QUEUED}')"})
        return [resolve_paths(filled(e.get("config") or {}, preset, f"{p}, entry {e.get('id', '?')}"), roots,
                              strict_paths, SEARCH_ORDER, str(p)) for e in entries]
    if not isinstance(data, dict):
        raise ConfigError({"": "the file must hold a mapping of settings (key: value), not a "
                               f"{type(data).__name__}"}, str(p))
    return [resolve_paths(filled(data, preset, str(p)), roots, strict_paths, SEARCH_ORDER, str(p))]
