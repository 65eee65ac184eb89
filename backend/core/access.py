"""What the studio's web API may read and write: one policy, checked before any work starts.

Any local process, and any web page open in the user's browser, can reach the studio's API, so a
path that arrives through it is not trusted the way a path typed in the user's own shell is. The
studio may read inside the workspace, the folders named at start with `--allow-path DIR`, the bundled
samples and presets, and the model caches; it may write only inside the workspace. Paths are
resolved first (`..` and symbolic links), so a link inside the workspace that points out is outside.

A path that does not exist and a path that is not allowed get the same sentence: the answer must not
tell a caller whether `/etc/shadow` exists. The command line (`ftstudio ...`) never calls this module:
it keeps full access.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from backend.core.errors import UserError
from backend.core.models import BUNDLED, looks_like_hub_id, model_cache_dir
from backend.core.paths import PRESETS_DIR, SAMPLES_DIR
from backend.core.security import is_within

# Folders named with --allow-path, set once when the studio starts (one studio per process).
_ALLOWED: list[Path] = []

NOT_OPEN = ("The {what} '{path}' cannot be used: it does not exist, or it is outside the folders the studio "
            "may read (its workspace, the bundled samples, the model caches and folders given with "
            "--allow-path). Check the path, or start the studio with --allow-path FOLDER to let it read "
            "that folder.")
NOT_WRITABLE = ("The studio writes only inside its workspace ({workspace}); the {what} '{path}' is outside it. "
                "Choose a folder under {workspace}.")


def allow_paths(folders: Iterable[str | Path]) -> list[Path]:
    """Set the folders named with --allow-path (resolved); returns them. Replaces any earlier set."""
    _ALLOWED[:] = [Path(f).expanduser().resolve() for f in folders if str(f).strip()]
    return list(_ALLOWED)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, where hub models are stored (read from the environment as the hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


@dataclass(frozen=True)
class AccessPolicy:
    workspace: Path
    allowed: tuple[Path, ...] = ()

    @property
    def read_roots(self) -> tuple[Path, ...]:
        return (self.workspace, *self.allowed, SAMPLES_DIR, PRESETS_DIR, model_cache_dir(), hub_cache_dir())

    def _absolute(self, text: str) -> Path:
        p = Path(text).expanduser()
        # Relative paths mean what the backend will make of them: relative to the current folder.
        return p if p.is_absolute() else Path.cwd() / p

    def readable(self, path: Any, what: str = "file") -> Path:
        """The resolved path when it exists inside a readable folder; UserError (one sentence) otherwise."""
        text = str(path or "").strip()
        if not text or "\x00" in text:
            raise UserError(NOT_OPEN.format(what=what, path=text.replace("\x00", "")))
        try:
            resolved = self._absolute(text).resolve()
            inside = any(is_within(root, resolved) for root in self.read_roots)
            exists = inside and resolved.exists()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
            inside = exists = False
        if not (inside and exists):
            raise UserError(NOT_OPEN.format(what=what, path=text))
        return resolved

    def writable(self, path: Any, what: str = "output folder") -> Path:
        """The resolved path when it lies strictly inside the workspace; UserError otherwise."""
        text = str(path or "").strip()
        try:
            resolved = self._absolute(text).resolve() if text and "\x00" not in text else None
        except (OSError, RuntimeError, ValueError):
            resolved = None
        ws = self.workspace.resolve()
        if resolved is None or resolved == ws or not is_within(ws, resolved):
            raise UserError(NOT_WRITABLE.format(workspace=ws, what=what, path=text.replace("\x00", "")))
        return resolved

    def model(self, ref: Any, what: str = "model") -> str:
        """A model reference the studio may load: a bundled name, a hub id (nothing on disk by that name),
        or a readable local folder (returned resolved)."""
        text = str(ref or "").strip()
        if text in BUNDLED:
            return text
        if looks_like_hub_id(text) and not self._absolute(text).exists():
            return text
        return str(self.readable(text, what))

    def config_problems(self, rc: Optional[dict]) -> dict[str, str]:
        """Field path -> sentence for each path a RunConfig dict names (model, data files, reward model)
        that the studio may not read."""
        rc = rc if isinstance(rc, dict) else {}
        data = rc.get("data") if isinstance(rc.get("data"), dict) else {}
        alignment = rc.get("alignment") if isinstance(rc.get("alignment"), dict) else {}
        checks = (("model", rc.get("model"), lambda v: self.model(v)),
                  # A hub dataset id (hf://owner/name) is read from the hub, not from this machine's files.
                  ("data.path", data.get("path"),
                   lambda v: None if str(v).startswith("hf://") else self.readable(v, "dataset file")),
                  ("data.validation_path", data.get("validation_path"), lambda v: self.readable(v, "validation file")),
                  ("alignment.reward_model", alignment.get("reward_model"),
                   lambda v: self.readable(v, "reward model")))
        problems = {}
        for field, value, check in checks:
            if value:
                try:
                    check(value)
                except UserError as e:
                    problems[field] = str(e)
        return problems

    def run_config(self, rc: Optional[dict]) -> None:
        """UserError naming the first path of a RunConfig dict the studio may not read."""
        problems = self.config_problems(rc)
        if problems:
            raise UserError(next(iter(problems.values())))


def policy(workspace: str | Path) -> AccessPolicy:
    """The studio's policy for `workspace`, with the folders set by allow_paths()."""
    return AccessPolicy(Path(workspace).expanduser().resolve(), tuple(_ALLOWED))
