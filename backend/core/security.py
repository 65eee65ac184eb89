"""Path containment for names that come from outside (uploads, run names, preset names).

A name a user or a browser chose must never decide where a file lands: it is reduced to a
safe file name, and the joined path is checked to stay inside its root after resolving `..`
and symbolic links.
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from pathlib import Path

from backend.core.errors import UserError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (the studio and `ftstudio serve` bind there by default)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 100


def is_within(root: Path | str, path: Path | str) -> bool:
    """True when `path`, with `..` and symlinks resolved, is `root` or lies under it."""
    root_r = Path(root).resolve()
    try:
        Path(path).resolve().relative_to(root_r)
    except ValueError:
        return False
    return True


def safe_filename(name: str, default: str = "file", limit: int = MAX_NAME) -> str:
    """A single path component made of ASCII letters, digits, '.', '_' and '-'.

    Separators and `..` cannot survive: the last component is kept, unsafe runs become '_',
    and leading dots are dropped so the result is never '.', '..' or a hidden file.
    """
    text = unicodedata.normalize("NFKD", str(name or "")).encode("ascii", "ignore").decode("ascii")
    text = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    text = _UNSAFE.sub("_", text).lstrip(".")
    if len(text) > limit:
        stem, dot, ext = text.rpartition(".")
        # Keep the extension: the loader picks the reader by it.
        text = (stem[: limit - len(ext) - 1] + "." + ext) if dot and len(ext) < 12 else text[:limit]
    return text.strip("_") or default


def safe_join(root: Path | str, *parts: str) -> Path:
    """`root / parts...` when the result stays inside `root`; UserError otherwise."""
    root_p = Path(root)
    candidate = root_p.joinpath(*parts)
    if any(Path(p).is_absolute() for p in parts) or not is_within(root_p, candidate):
        raise UserError(f"The name {'/'.join(parts)!r} points outside {root_p}; choose a plain file name.")
    return candidate


PICKLED_WEIGHTS = ("adapter_model.bin", "pytorch_model.bin", "model.pt", "model.pth")


def refuse_pickled_weights(folder: Path | str) -> None:
    """UserError when a weights folder holds only pickled files: unpickling can run code, and every
    loader in the studio reads safetensors (PEFT would otherwise fall back to adapter_model.bin)."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return
    pickled = [name for name in PICKLED_WEIGHTS if (folder / name).is_file()]
    if pickled:
        raise UserError(
            f"{folder} holds only pickled weights ({', '.join(pickled)}), which the studio does not load "
            "because a pickle can run code. Convert them to safetensors (save_pretrained with "
            "safe_serialization=True) and pick the folder again.")
