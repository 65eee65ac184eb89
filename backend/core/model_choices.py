"""What the model picker offers: the bundled model, recent picks, models already on this machine
(the workspace's model cache and the local Hugging Face hub cache), and a hub id's reachability.

Nothing here downloads: the hub cache is read from disk, and reachability is one TCP connect
(backend.core.models.hub_reachable), skipped when HF_HUB_OFFLINE is set.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from backend.core.models import BUNDLED, hub_reachable, looks_like_hub_id, model_cache_dir

# Small instruct models worth trying where a hub is reachable (each well under 1B parameters).
WELL_KNOWN = ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct",
              "Qwen/Qwen2.5-0.5B-Instruct")
RECENT_KEPT = 8


def hub_cache_dir() -> Path:
    """The local hub cache, where huggingface_hub keeps downloads (HF_HUB_CACHE, HF_HOME, or ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return home / "hub"


def hub_cached_models(cache: Optional[Path] = None) -> list[str]:
    """Hub ids with a complete snapshot (one holding config.json) in the local hub cache."""
    root = cache if cache is not None else hub_cache_dir()
    found = []
    if root.is_dir():
        for folder in sorted(root.glob("models--*--*")):
            owner, _, name = folder.name[len("models--"):].partition("--")
            if owner and name and any((folder / "snapshots").glob("*/config.json")):
                found.append(f"{owner}/{name}")
    return found


def workspace_models(cache: Optional[Path] = None) -> list[str]:
    """Model folders in the workspace's model cache (the bundled model's conversion is listed by name)."""
    root = cache if cache is not None else model_cache_dir()
    if not root.is_dir():
        return []
    return [str(p) for p in sorted(root.iterdir())
            if p.is_dir() and p.name not in BUNDLED and (p / "config.json").is_file()]


def model_choices(recent: list[str] = (), hub_cache: Optional[Path] = None, model_cache: Optional[Path] = None,
                  offer_hub: bool = False) -> list[tuple[str, str]]:
    """(label, value) for the picker: bundled, recent, workspace cache, hub cache, then (offer_hub)
    the well-known small models to download; each value once."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(value: str, label: str) -> None:
        if value and value not in seen:
            seen.add(value)
            out.append((label, value))

    for name, info in BUNDLED.items():
        add(name, info.get("title", name))
    for ref in recent:
        add(ref, f"{ref} (recent)")
    for ref in workspace_models(model_cache):
        add(ref, f"{Path(ref).name} (workspace cache)")
    for ref in hub_cached_models(hub_cache):
        add(ref, f"{ref} (hub cache)")
    if offer_hub:
        for ref in WELL_KNOWN:
            add(ref, f"{ref} (download from the hub)")
    return out


def hub_problem(ref: str, hub_cache: Optional[Path] = None, reachable: Optional[bool] = None) -> Optional[str]:
    """A sentence when `ref` is a hub id this machine can neither find in its cache nor download."""
    ref = (ref or "").strip()
    if not looks_like_hub_id(ref) or Path(ref).expanduser().exists() or ref in hub_cached_models(hub_cache):
        return None
    if reachable is None:
        reachable = hub_reachable()
    if reachable:
        return None
    return (f"'{ref}' is not in this machine's hub cache and the hub cannot be reached from here (offline or "
            "HF_HUB_OFFLINE is set). Pick a model listed in the picker, a local folder holding config.json, or "
            "download it on a connected machine into the hub cache first.")


def with_recent(recent: list[str], ref: str) -> list[str]:
    """`ref` first in the recent list, without repeats, at most RECENT_KEPT long."""
    ref = (ref or "").strip()
    rest = [r for r in recent if r != ref]
    return ([ref] if ref else []) + rest[:RECENT_KEPT - 1]
