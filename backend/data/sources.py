"""Where rows come from besides one file: a folder of data files, a Hugging Face dataset folder written by
`save_to_disk`, and a hub dataset id (`hf://owner/name`, optionally `:split`) where a hub is reachable.

`open_source` returns something that reads like backend.data.files.RecordStream (path, kind, unit, items, size,
encoding, notice), so backend.data.records normalizes every source the same way. A saved dataset and a hub
dataset are read a row at a time from Arrow (a saved one is memory-mapped, a hub one streamed), so neither is
held whole in memory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from backend.core.errors import UserError
from backend.data.files import SUFFIXES, Budget, Item, RecordStream, RowError, open_records

HUB_PREFIX = "hf://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
FOLDER_FILES = 1000  # files a folder may hold


@dataclass
class Stream:
    """A source read as one stream of numbered records (see the module's docstring)."""
    path: str
    kind: str
    unit: str
    items: Iterator[Item]
    size: int
    notices: list[str] = field(default_factory=list)   # filled while the items are read (encodings)
    encodings: list[str] = field(default_factory=list)

    @property
    def encoding(self) -> str:
        legacy = [e for e in self.encodings if e != "utf-8"]
        return legacy[0] if legacy else "utf-8"

    def notice(self) -> Optional[str]:
        return " ".join(self.notices) or None


def hub_ref(text: str) -> Optional[tuple[str, Optional[str]]]:
    """(dataset id, split or None) when `text` names a hub dataset: 'hf://owner/name[:split]'."""
    text = (text or "").strip()
    if not text.startswith(HUB_PREFIX):
        return None
    ref = text[len(HUB_PREFIX):]
    name, _, split = ref.partition(":")
    if not _HUB_ID.match(name) or (split and not re.match(r"^[\w.\-\[\]%:]+$", split)):
        raise UserError(f"'{text}' is not a hub dataset id: write hf://owner/name, or hf://owner/name:split "
                        "(for example hf://tatsu-lab/alpaca:train).")
    return name, split or None


def is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and any((p / m).is_file() for m in SAVED_MARKERS)


def open_source(path: str, budget: Optional[Budget] = None):
    """A RecordStream-like reader for a file, a folder of files, a save_to_disk folder or a hub id."""
    ref = hub_ref(path)
    if ref is not None:
        return _hub(path, *ref, budget)
    p = Path(str(path)).expanduser()
    if p.is_dir():
        return _saved(p, budget) if is_saved_dataset(p) else _folder(p, budget)
    return open_records(path, budget)


# ---------------------------------------------------------------- a folder of files

def folder_files(p: Path) -> list[Path]:
    """The data files in a folder and its subfolders, in name order (hidden ones left out)."""
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise UserError(f"The folder {p} holds no data files (.jsonl, .json, .csv, .tsv, .parquet, .txt). Pick a "
                        "folder with data files, or one file.")
    if len(files) > FOLDER_FILES:
        raise UserError(f"The folder {p} holds {len(files):,} data files; the studio reads at most "
                        f"{FOLDER_FILES:,} from one folder. Join them into fewer files.")
    return files


def _folder(p: Path, budget: Optional[Budget]) -> Stream:
    files = folder_files(p)
    streams: list[RecordStream] = [open_records(str(f), budget) for f in files]  # checks every file first
    units = {s.unit for s in streams}
    out = Stream(str(p), "folder", units.pop() if len(units) == 1 else "row", iter(()), sum(s.size for s in streams))

    def items() -> Iterator[Item]:
        for f, s in zip(files, streams):
            name = f.relative_to(p).as_posix()
            for item in s.items:
                if isinstance(item, RowError):
                    # The file is named in the sentence: the line number is the file's own.
                    yield RowError(item.line, item.field, f"(in {name}) {item.message}")
                else:
                    yield item
            out.encodings.append(s.encoding)
            if s.notice():
                out.notices.append(s.notice())
            if budget is not None and budget.stopped:
                return

    out.items = items()
    return out


# ---------------------------------------------------------------- datasets' save_to_disk

def _pick_split(dd, where: str, split: Optional[str]):
    names = list(dd.keys())
    if split:
        if split not in dd:
            raise UserError(f"{where} has no split '{split}'; its splits are: {', '.join(names)}.")
        return split
    return "train" if "train" in dd else names[0]


def _rows(ds, total: Optional[int], budget: Optional[Budget]) -> Iterator[Item]:
    """Numbered rows of a datasets table (or stream), stopping where the budget's time runs out."""
    for i, r in enumerate(ds, start=1):
        yield i, dict(r)
        if budget is not None and i % 256 == 0 and not budget.tick(i, max(total or i, 1), i):
            return


def _saved(p: Path, budget: Optional[Budget] = None) -> Stream:
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_from_disk(str(p), keep_in_memory=False)
    except Exception as e:  # noqa: BLE001 - damaged or foreign folders raise many types
        raise UserError(f"{p} looks like a dataset saved with save_to_disk, but it could not be opened "
                        f"({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}). Save it "
                        "again, or export it to JSON Lines.") from None
    notices = []
    if isinstance(ds, datasets.DatasetDict):
        split = _pick_split(ds, str(p), None)
        if len(ds) > 1:
            notices.append(f"{p} holds the splits {', '.join(ds.keys())}; the '{split}' split is read (use a "
                           "separate validation file for another).")
        ds = ds[split]
    size = sum(f.stat().st_size for f in p.rglob("*.arrow"))
    # One row at a time from the memory-mapped Arrow table: never a Python copy of the whole dataset.
    return Stream(str(p), "saved", "row", _rows(ds, len(ds), budget), size, notices)


# ---------------------------------------------------------------- the hub

def _hub(text: str, name: str, split: Optional[str], budget: Optional[Budget] = None) -> Stream:
    from backend.core.models import hub_reachable

    if not hub_reachable():
        raise UserError(f"The hub dataset {name} cannot be read: the Hugging Face hub is not reachable from this "
                        "machine (offline, or HF_HUB_OFFLINE is set). On a machine with internet, save it with "
                        "datasets' save_to_disk (or export it to JSON Lines) and pick that folder or file here.")
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as e:  # noqa: BLE001 - unknown ids, gated datasets and network errors raise many types
        cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"The hub dataset {name} (split {split or 'train'}) could not be opened: {cause}. Check "
                        "the id and the split (hf://owner/name:split); a gated dataset needs a token "
                        "(huggingface-cli login).") from None
    # Streamed: rows arrive as they are read; the look's row and time bounds apply as for a large file.
    return Stream(text, "hub", "row", _rows(ds, None, budget), 0)
