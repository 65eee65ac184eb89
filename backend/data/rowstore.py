"""Normalized rows kept on disk instead of in memory, for training on files of any size.

A training run reads the whole file, but holding a million normalized rows as Python dicts costs about
1.5 KB each (1.5 GB for a million alpaca rows), and a file larger than memory cannot be held at all.
`RowWriter` appends each row as one JSON line to a file and remembers where it starts; `RowStore`
reads them back through a memory map, so the pages are the operating system's to drop, and forked
encoding workers share them. Each row is stored as exactly the bytes `templates.dataset_key` hashes
(sorted keys, UTF-8), so a stored dataset and the same rows in a list get the same cache key.

Both `RowStore` and `RowView` (a subset in a given order: a training or validation split) are
read-only sequences: len, an index, a slice (a list of dicts) and iteration.
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import tempfile
import weakref
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator, Optional, Union

_DUMPS = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str).encode
READ_ROWS = 1024   # rows decoded per read when iterating


def row_bytes(row: dict) -> bytes:
    """A row as stored, and as the dataset key hashes it."""
    return _DUMPS(row).encode()


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked worker's exit must not take the parent's file away
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path) -> None:
    """Folders left by a process that was killed before it could remove its own (their name holds its pid)."""
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return
    for d in entries:
        parts = d.name.split("-")
        if d.is_dir() and len(parts) >= 3 and parts[0] == "rows" and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(d, ignore_errors=True)


class RowWriter:
    """Rows appended to `DIR/rows.jsonl`; `finish()` gives the RowStore. The folder (a fresh temporary one
    under `parent`, named after this process) is removed when the store is no longer used, or at exit; one
    left by a killed process goes when the next writer starts there."""

    def __init__(self, parent: Optional[Path] = None):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
            remove_stale(Path(parent))
        self.folder = Path(tempfile.mkdtemp(prefix=f"rows-{os.getpid()}-",
                                            dir=None if parent is None else str(parent)))
        self._fh = open(self.folder / "rows.jsonl", "wb", buffering=1 << 20)
        self._offsets = array("q", [0])

    def append(self, row: dict) -> None:
        data = row_bytes(row) + b"\n"
        self._fh.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def finish(self) -> "RowStore":
        self._fh.close()
        return RowStore(self.folder, self._offsets)

    def discard(self) -> None:
        self._fh.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class _Rows(Sequence):
    """What RowStore and RowView share: slicing and iteration through `_raw(i)`."""

    def _raw(self, i: int) -> bytes:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def __getitem__(self, item: Union[int, slice]) -> Any:
        if isinstance(item, slice):
            return [json.loads(self._raw(i)) for i in range(*item.indices(len(self)))]
        n = len(self)
        i = item + n if item < 0 else item
        if not 0 <= i < n:
            raise IndexError(item)
        return json.loads(self._raw(i))

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield json.loads(self._raw(i))

    def raw_rows(self) -> Iterator[bytes]:
        """Each row's stored bytes, undecoded (what the dataset key hashes)."""
        for i in range(len(self)):
            yield self._raw(i)


class RowStore(_Rows):
    def __init__(self, folder: Path, offsets: array):
        self.folder = Path(folder)
        self._offsets = offsets
        size = offsets[-1]
        with open(self.folder / "rows.jsonl", "rb") as fh:
            # mmap refuses an empty file; a store of no rows reads nothing.
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._finalizer = weakref.finalize(self, _remove, str(self.folder), os.getpid())

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _raw(self, i: int) -> bytes:
        return self._map[self._offsets[i]:self._offsets[i + 1] - 1]

    def view(self, indices: Sequence[int]) -> "RowView":
        return RowView(self, indices)

    def close(self) -> None:
        """Remove the file now (the store reads nothing after this)."""
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._finalizer()


class RowView(_Rows):
    """The rows of a store at the given indices, in that order (a split keeps the file's order)."""

    def __init__(self, store: RowStore, indices: Sequence[int]):
        self.store = store
        self._indices = array("q", indices)

    def __len__(self) -> int:
        return len(self._indices)

    def _raw(self, i: int) -> bytes:
        return self.store._raw(self._indices[i])
