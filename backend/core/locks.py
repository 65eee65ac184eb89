"""One advisory file lock (fcntl.flock) for every read-modify-write the studio guards.

Used for status.json (rundir), run starts (runner), queue.json (queue) and the bundled-model
conversion (models). Standard library only, so any layer may import it.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False, make_parents: bool = False) -> Iterator[None]:
    """Hold a blocking flock on `path` (created empty if absent, its content never read or changed).

    `shared` takes a shared lock instead of an exclusive one. `make_parents` creates the parent
    directories first; without it a missing directory raises FileNotFoundError, so a lock on a
    deleted run directory never recreates it."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    # Opened for append: creating the file is all it does, nothing is ever written into it.
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
