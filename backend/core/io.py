"""Atomic file writes: a crash leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def free_bytes(folder: Path) -> int:
    """Free space (bytes) on the filesystem holding `folder` (its nearest existing parent)."""
    import shutil

    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """UserError when `folder` lacks `needed` bytes for `what`: a save that would fill the disk is refused
    before it starts, instead of failing half-written."""
    from backend.core.errors import UserError

    free = free_bytes(folder)
    if free < needed:
        raise UserError(f"Not enough disk space in {folder} for {what}: about {needed / 1e9:.2f} GB is needed "
                        f"and {free / 1e9:.2f} GB is free. Free some space or choose another output folder.")


def is_disk_full(exc: BaseException) -> bool:
    """An OSError that says the disk (or the user's quota) is full, wherever it is in the chain."""
    import errno

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


RESERVE_BYTES = 64 * 1024


def make_reserve(path: Path, size: int = RESERVE_BYTES) -> None:
    """Hold `size` bytes in a file, so a later write on a full disk can free them (write_with_reserve)
    and still record what happened. Best effort: no reserve is no worse than before."""
    try:
        with open(path, "wb") as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        try:
            os.unlink(path)
        except OSError:
            pass


def write_with_reserve(write: Any, reserve: Path) -> None:
    """Call `write()`; when the disk is full, give back the reserve file's space and try once more."""
    try:
        write()
    except OSError as e:
        if not is_disk_full(e) or not Path(reserve).exists():
            raise
        os.unlink(reserve)
        write()
