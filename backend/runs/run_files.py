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

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from backend.core.config import ConfigError, RunConfig, deep_merge, validate_config
from backend.core.models import BUNDLED
from backend.core.paths import PROJECT_ROOT
from backend.core.presets import META_KEY, load_preset
from backend.runs.queue import QUEUED

SEARCH_ORDER = "the config file's folder, then the workspace, then the project folder (its bundled assets/)"
PATH_FIELDS = ("path", "validation_path")


def search_roots(config_dir: Optional[Path], workspace: Optional[Path]) -> list[Path]:
    """The folders a relative path is looked up in, in order, without repeats."""
    roots: list[Path] = []
    for root in (config_dir, workspace, PROJECT_ROOT):
        if root is not None and Path(root).resolve() not in roots:
            roots.append(Path(root).resolve())
    return roots


def resolve_paths(cfg: RunConfig, roots: list[Path], strict: bool = True, source: Optional[str] = None) -> RunConfig:
    """cfg with each relative data path (and a relative model folder) made absolute against the first
    root holding it. A data file that no root holds is a ConfigError when `strict`, else left as it is."""
    updates: dict[str, str] = {}
    for field in PATH_FIELDS:
        value = getattr(cfg.data, field)
        if not value or Path(value).expanduser().is_absolute():
            continue
        found = next((r / value for r in roots if (r / value).exists()), None)
        if found is not None:
            updates[field] = str(found.resolve())
        elif strict:
            looked = ", ".join(str(r) for r in roots)
            raise ConfigError({f"data.{field}": (
                f"the file {value} is in none of the folders searched ({looked}); relative paths are looked up "
                f"in {SEARCH_ORDER}; give an absolute path or move the file there")}, source)
    if updates:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
    model = cfg.model
    if model not in BUNDLED and not Path(model).expanduser().is_absolute():
        # A relative model folder, if one exists; otherwise it is a hub id, left as it is.
        folder = next((r / model for r in roots if (r / model / "config.json").is_file()), None)
        if folder is not None:
            cfg = cfg.model_copy(update={"model": str(folder.resolve())})
    return cfg


def _mapping(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError({"": f"the file {path} does not exist"}) from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise ConfigError({"": f"{path} is not a UTF-8 text file"}) from None
    try:
        return json.loads(text) if path.suffix == ".json" else (yaml.safe_load(text) or {})
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError({"": f"{path} is not valid {kind}{where}: {getattr(e, 'problem', e)}"}) from None


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
    data = _mapping(p)
    roots = search_roots(p.resolve().parent, workspace)
    if is_queue_file(data):
        entries = [e for e in data["entries"] if isinstance(e, dict) and e.get("state") == QUEUED]
        if not entries:
            raise ConfigError({"": f"the queue file {p} has no waiting entries (state '{QUEUED}')"})
        return [resolve_paths(filled(e.get("config") or {}, preset, f"{p}, entry {e.get('id', '?')}"), roots,
                              strict_paths, str(p)) for e in entries]
    if not isinstance(data, dict):
        raise ConfigError({"": "the file must hold a mapping of settings (key: value), not a "
                               f"{type(data).__name__}"}, str(p))
    return [resolve_paths(filled(data, preset, str(p)), roots, strict_paths, str(p))]
