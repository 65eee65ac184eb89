"""Presets: partial RunConfigs named by goal, layered over the defaults.

Built-in presets live in the repository's `presets/`; presets a person saves go to
`WORKSPACE/presets/`. Each file may carry a `preset:` block (title, description) that is
metadata, not a RunConfig key, and is stripped on load.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml

from backend.core.config import RunConfig, deep_merge, validate_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_text
from backend.core.models import workspace_root
from backend.core.paths import PRESETS_DIR

META_KEY = "preset"


def user_dir() -> Path:
    return workspace_root() / "presets"


def sanitize_name(name: str) -> str:
    """A file-safe preset name: lowercase letters, digits and dashes; never a path."""
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "").strip().lower()).strip("-")[:60]
    if not slug:
        raise UserError("A preset needs a name with at least one letter or digit, e.g. 'my-lora-run'.")
    return slug


def _dirs(user: Optional[Path]) -> list[Path]:
    return [PRESETS_DIR, user if user is not None else user_dir()]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"The preset file {path} is not valid YAML ({e}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise UserError(f"The preset file {path} must hold a mapping of settings.")
    return data


def _find(name: str, user: Optional[Path]) -> Path:
    slug = sanitize_name(name)
    for folder in _dirs(user):
        path = folder / f"{slug}.yaml"
        if path.is_file():
            return path
    raise UserError(f"There is no preset named '{name}'; choose one of: "
                    f"{', '.join(n for n, _ in list_presets(user))}.")


def list_presets(user: Optional[Path] = None) -> list[tuple[str, str]]:
    """(name, title) of every preset, built-in first, then saved ones, each alphabetically."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for folder in _dirs(user):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in seen:
                continue
            seen.add(path.stem)
            try:
                meta = _read(path).get(META_KEY) or {}
            except UserError:
                meta = {"title": f"{path.stem} (unreadable)"}
            title = meta.get("title") if isinstance(meta, dict) else None
            out.append((path.stem, str(title or path.stem)))
    return out


def preset_info(name: str, user: Optional[Path] = None) -> dict[str, str]:
    meta = _read(_find(name, user)).get(META_KEY) or {}
    return {"title": str(meta.get("title", name)), "description": str(meta.get("description", ""))}


def load_preset(name: str, user: Optional[Path] = None) -> dict[str, Any]:
    """The preset's partial RunConfig (metadata removed)."""
    data = _read(_find(name, user))
    data.pop(META_KEY, None)
    return data


# The data section's keys that say WHICH data trains (not how it is tokenized). A preset sets the
# method and the hyperparameters; these stay the user's, or a preset written for the sample would
# silently train on the sample (or fail at Start with the user's mapping on the sample's columns).
DATA_IDENTITY = ("path", "validation_path", "validation_split", "format", "mapping", "skip_bad_rows")


def apply_preset(current: dict[str, Any], name: str, user: Optional[Path] = None) -> dict[str, Any]:
    """`current` with the preset layered over it; the dataset (DATA_IDENTITY) and anything the preset
    omits stay as they were."""
    preset = load_preset(name, user)
    data = preset.get("data")
    if isinstance(data, dict):
        preset["data"] = {k: v for k, v in data.items() if k not in DATA_IDENTITY}
    return deep_merge(current, preset)


def preset_config(name: str, user: Optional[Path] = None) -> RunConfig:
    """The preset over the defaults, validated (raises ConfigError naming the bad field)."""
    return validate_config(deep_merge(RunConfig().model_dump(mode="json"), load_preset(name, user)),
                           source=f"preset {name}")


def save_preset(name: str, partial: dict[str, Any], title: Optional[str] = None,
                description: str = "", user: Optional[Path] = None) -> Path:
    """Save a partial RunConfig as a user preset; refuses to shadow a built-in one."""
    slug = sanitize_name(name)
    if (PRESETS_DIR / f"{slug}.yaml").exists():
        raise UserError(f"'{slug}' is the name of a built-in preset; choose another name.")
    data = {k: v for k, v in partial.items() if k != META_KEY}
    validate_config(deep_merge(RunConfig().model_dump(mode="json"), data), source=f"preset {slug}")
    folder = (user if user is not None else user_dir()).resolve()
    path = (folder / f"{slug}.yaml").resolve()
    if path.parent != folder:  # belt and braces: the slug cannot hold a separator
        raise UserError(f"The preset name '{name}' is not allowed; use letters, digits and dashes.")
    folder.mkdir(parents=True, exist_ok=True)
    body = {META_KEY: {"title": title or name.strip(), "description": description}, **data}
    atomic_write_text(path, yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    return path
