"""Reading a dataset file into raw records, with a line (or row) number and a sentence for each problem.

JSONL is read line by line (every bad line is named and can be skipped); CSV, TSV and Parquet go
through `datasets`; JSON arrays and plain text are read directly. backend.data.records detects the layout
and normalizes the records.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from backend.core.errors import UserError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".md": "text"}

# Everything is held in memory as Python objects (several times the file size), so the
# bound is about the machine's RAM, not the disk. Override with FTSTUDIO_MAX_DATA_MB.
DEFAULT_MAX_MB = 512
# Python's JSON parser recurses once per level; a hostile file must end in a sentence, not a crash.
TOO_DEEP = ("nests lists or objects too deeply to read (thousands of levels). Flatten the data: "
            "training rows need at most a few levels.")


@dataclass
class RowError:
    line: int
    field: Optional[str]
    message: str

    def sentence(self, path: str = "", unit: str = "line") -> str:
        where = f"{path}, {unit} {self.line}" if path else f"{unit} {self.line}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class _Bad(Exception):
    """A row-level problem raised inside normalization; becomes a RowError."""

    def __init__(self, field: Optional[str], message: str):
        super().__init__(message)
        self.field = field
        self.message = message



def max_bytes() -> int:
    try:
        return int(float(os.environ.get("FTSTUDIO_MAX_DATA_MB", DEFAULT_MAX_MB)) * 1024 * 1024)
    except ValueError:
        return DEFAULT_MAX_MB * 1024 * 1024


def _check_file(path: str) -> Path:
    p = Path(path).expanduser()
    if not str(path).strip():
        raise UserError("No dataset file chosen. Upload a file or pick a bundled sample.")
    if not p.exists():
        raise UserError(f"The dataset file {p} does not exist. Check the path, or upload the file again.")
    if p.is_dir():
        raise UserError(f"{p} is a folder; choose a single data file (.jsonl, .json, .csv, .tsv, .parquet, .txt).")
    size = p.stat().st_size
    if size == 0:
        raise UserError(f"The dataset file {p} is empty (0 bytes). Choose a file that holds rows of data.")
    limit = max_bytes()
    if size > limit:
        raise UserError(
            f"The dataset file {p} is {size / 2**20:,.0f} MB; the studio loads at most {limit / 2**20:,.0f} MB "
            "into memory. Use a sample of it (for example the first 100,000 lines), split it into smaller "
            "files, or raise the limit with the FTSTUDIO_MAX_DATA_MB environment variable.")
    return p


def _kind_of(p: Path) -> str:
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise UserError(
            f"{p.name} has the extension '{p.suffix or '(none)'}', which the studio does not read. "
            "Save it as .jsonl, .json, .csv, .tsv, .parquet or .txt.")
    return kind


def _decode_line(raw: bytes, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(None, f"has bytes that are not UTF-8 text (byte {e.start + 1} of the line). "
                         "Re-save the file with UTF-8 encoding.") from None


def _read_jsonl(p: Path) -> tuple[list[tuple[int, dict]], list[RowError]]:
    # Read by hand rather than with datasets' JSON builder: that builder rejects the whole
    # file at its first bad line, and we need every bad line numbered and skippable.
    records: list[tuple[int, dict]] = []
    errors: list[RowError] = []
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark from some editors
            if not raw.strip():
                continue
            try:
                text = _decode_line(raw, lineno)
                obj = json.loads(text)
            except _Bad as b:
                errors.append(RowError(lineno, None, b.message))
                continue
            except json.JSONDecodeError as e:
                errors.append(RowError(lineno, None, f"is not valid JSON ({e.msg} at column {e.colno}). "
                                                     "Fix or remove this line."))
                continue
            except RecursionError:
                errors.append(RowError(lineno, None, TOO_DEEP))
                continue
            if not isinstance(obj, dict):
                errors.append(RowError(lineno, None, f"holds a JSON {type(obj).__name__}, not an object "
                                                     "with named fields. Each line must be one {...} object."))
                continue
            records.append((lineno, obj))
    return records, errors


def _read_utf8(p: Path) -> str:
    """The whole file as text, or a sentence naming the first line with bytes that are not UTF-8."""
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{p}, line {line}: has bytes that are not UTF-8 text. Re-save the file with "
                        "UTF-8 encoding.") from None


def _read_json(p: Path) -> tuple[list[tuple[int, dict]], list[RowError], str]:
    text = _read_utf8(p)
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n" in stripped.strip() and not _parses(stripped):
        recs, errs = _read_jsonl(p)  # JSON Lines saved with a .json extension
        return recs, errs, "line"
    try:
        data = json.loads(text)
    except RecursionError:
        raise UserError(f"{p}: {TOO_DEEP}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{p}, line {e.lineno}, column {e.colno}: the file is not valid JSON ({e.msg}). "
                        "Fix the file, or save one object per line as .jsonl so bad lines can be "
                        "skipped.") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]  # {"data": [...]} style wrappers
        else:
            data = [data]
    if not isinstance(data, list):
        raise UserError(f"{p} holds a single JSON {type(data).__name__}; it must hold a list of objects.")
    records, errors = [], []
    for i, obj in enumerate(data, start=1):
        if isinstance(obj, dict):
            records.append((i, obj))
        else:
            errors.append(RowError(i, None, f"is a JSON {type(obj).__name__}, not an object with named fields."))
    return records, errors, "row"


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (json.JSONDecodeError, RecursionError):
        return False


def _first_bad_utf8_line(p: Path) -> Optional[int]:
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return None


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while (e.__cause__ or e.__context__) and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return e


def _read_with_datasets(p: Path, kind: str) -> list[tuple[int, dict]]:
    import datasets

    datasets.disable_progress_bars()
    if kind in ("csv", "tsv"):
        bad = _first_bad_utf8_line(p)
        if bad is not None:
            raise UserError(f"{p}, line {bad}: has bytes that are not UTF-8 text. Re-save the file with "
                            "UTF-8 encoding (in a spreadsheet: 'CSV UTF-8').")
    # A throwaway cache: loading a file for a look must not grow ~/.cache.
    with tempfile.TemporaryDirectory(prefix="ftstudio-ds-") as cache:
        try:
            if kind == "parquet":
                ds = datasets.Dataset.from_parquet(str(p), keep_in_memory=True, cache_dir=cache)
            else:
                ds = datasets.Dataset.from_csv(str(p), keep_in_memory=True, cache_dir=cache,
                                               sep="\t" if kind == "tsv" else ",")
        except Exception as e:  # noqa: BLE001 - the loaders raise many types; we report the cause
            cause = _root_cause(e)
            raise UserError(f"{p} could not be read as {kind.upper()}: {str(cause).strip().splitlines()[-1]}. "
                            "Check the file (for CSV: one header line, the same number of columns on "
                            "every line, quotes around values holding commas).") from None
        rows = ds.to_list()
    # A CSV row is line N+1 of the file (the header is line 1) unless values span lines.
    offset = 1 if kind in ("csv", "tsv") else 0
    return [(i + offset, r) for i, r in enumerate(rows, start=1)]


def _read_text(p: Path) -> tuple[list[tuple[int, dict]], list[RowError]]:
    """Plain text: one document per paragraph (blank-line separated), else one per line."""
    text = _read_utf8(p)
    lines = text.splitlines()
    has_paragraphs = any(not ln.strip() for ln in lines) and sum(1 for ln in lines if ln.strip()) > 1
    records: list[tuple[int, dict]] = []
    buf: list[str] = []
    start = 0
    for i, ln in enumerate(lines, start=1):
        if has_paragraphs:
            if ln.strip():
                if not buf:
                    start = i
                buf.append(ln)
            elif buf:
                records.append((start, {"text": "\n".join(buf)}))
                buf = []
        elif ln.strip():
            records.append((i, {"text": ln}))
    if buf:
        records.append((start, {"text": "\n".join(buf)}))
    return records, []


def _refuse_utf16(p: Path) -> None:
    # Windows tools save "Unicode" text as UTF-16; every line would fail on its own, so say it once.
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UserError(f"{p} is saved as UTF-16 text; the studio reads UTF-8. Re-save it with UTF-8 encoding "
                        "(in a spreadsheet: 'CSV UTF-8'; in an editor: Save As, encoding UTF-8).")


def read_records(path: str) -> tuple[list[tuple[int, dict]], list[RowError], str, str]:
    """(line or row number, raw record) pairs, read errors, the unit ('line'/'row') and the file kind."""
    p = _check_file(path)
    kind = _kind_of(p)
    if kind != "parquet":
        _refuse_utf16(p)
    if kind == "jsonl":
        recs, errs = _read_jsonl(p)
        unit = "line"
    elif kind == "json":
        recs, errs, unit = _read_json(p)
    elif kind == "text":
        recs, errs = _read_text(p)
        unit = "line"
    else:
        recs, errs, unit = _read_with_datasets(p, kind), [], ("line" if kind in ("csv", "tsv") else "row")
    return recs, errs, unit, kind
