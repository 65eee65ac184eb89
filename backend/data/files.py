"""Reading a dataset file into raw records, with a line (or row) number and a sentence for each problem.

JSONL and plain text are streamed a line at a time (every bad line is named and can be skipped; a line over
FTSTUDIO_MAX_LINE_MB is refused by its number without being held) and Parquet a batch of rows at a time, so
these may be larger than memory; CSV and TSV go through `datasets` and JSON arrays are parsed whole, within
FTSTUDIO_MAX_DATA_MB. Text that is not UTF-8 is read as Windows-1252 with a notice (backend.data.encodings).
A FIFO, a device or a link to one is "not a regular file". A `Budget` bounds a read's time and reports its
progress. backend.data.records detects the layout and normalizes the records; backend.data.sources adds
folders, save_to_disk folders and hub ids.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Union

from backend.core.errors import UserError
from backend.data.encodings import Decoder, Undecodable

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".md": "text"}

MB = 1024 * 1024
# JSON, CSV, TSV and Parquet are parsed whole (several times the file size in memory), so their bound is
# about the machine's RAM. JSON Lines and text are streamed a line at a time, so theirs is about time.
# FTSTUDIO_MAX_DATA_MB overrides both.
DEFAULT_MAX_MB = 512
DEFAULT_STREAMED_MB = 8192
STREAMED = ("jsonl", "text", "parquet")  # Parquet is read a row group at a time (_iter_parquet)
# One row is held whole (and later tokenized whole): a longer line is refused by its number.
DEFAULT_MAX_LINE_MB = 16
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


Item = Union[tuple[int, dict], RowError]  # what a reader yields: a numbered record, or a numbered problem


class _Bad(Exception):
    """A row-level problem raised inside normalization; becomes a RowError."""

    def __init__(self, field: Optional[str], message: str):
        super().__init__(message)
        self.field = field
        self.message = message



def _env_mb(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return float(default)
    return value if value > 0 else float(default)


def max_bytes(kind: Optional[str] = None) -> int:
    """The largest file the studio reads. JSON Lines and text are streamed (a row at a time), so they may
    be larger than the kinds parsed whole; FTSTUDIO_MAX_DATA_MB sets one bound for every kind."""
    if "FTSTUDIO_MAX_DATA_MB" in os.environ:
        return int(_env_mb("FTSTUDIO_MAX_DATA_MB", DEFAULT_MAX_MB) * MB)
    return int((DEFAULT_STREAMED_MB if kind in STREAMED else DEFAULT_MAX_MB) * MB)


def max_line_bytes() -> int:
    """The longest single line (one JSONL row, one line of text) read; a longer one is refused by number."""
    return int(_env_mb("FTSTUDIO_MAX_LINE_MB", DEFAULT_MAX_LINE_MB) * MB)


def _check_file(path: str) -> Path:
    p = Path(path).expanduser()
    if not str(path).strip():
        raise UserError("No dataset file chosen. Upload a file or pick a bundled sample.")
    if not p.exists():
        raise UserError(f"The dataset file {p} does not exist. Check the path, or upload the file again.")
    if p.is_dir():
        raise UserError(f"{p} is a folder; choose a single data file (.jsonl, .json, .csv, .tsv, .parquet, .txt).")
    st = p.stat()  # follows a symbolic link: what counts is what it points to
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block the reader forever and /dev/zero never ends: neither is "empty".
        raise UserError(f"The dataset file {p} is not a regular file (it is a {_file_type(st.st_mode)}). "
                        "Choose a data file saved on disk.")
    size = st.st_size
    if size == 0:
        raise UserError(f"The dataset file {p} is empty (0 bytes). Choose a file that holds rows of data.")
    limit = max_bytes(SUFFIXES.get(p.suffix.lower()))
    if size > limit:
        raise UserError(
            f"The dataset file {p} is {size / 2**20:,.0f} MB; the studio reads at most {limit / 2**20:,.0f} MB "
            "of this kind of file. Use a sample of it (for example the first 100,000 lines), split it into smaller "
            "files, or raise the limit with the FTSTUDIO_MAX_DATA_MB environment variable.")
    return p


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _kind_of(p: Path) -> str:
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise UserError(
            f"{p.name} has the extension '{p.suffix or '(none)'}', which the studio does not read. "
            "Save it as .jsonl, .json, .csv, .tsv, .parquet or .txt.")
    return kind


class Budget:
    """How long a read may take, and who hears how far it got.

    `progress(done_bytes, total_bytes)` is called at most every `every` seconds. When `seconds` pass, the
    reader stops at the next line and `stopped` says where; the rows read so far are kept."""

    def __init__(self, seconds: Optional[float] = None, progress: Optional[Callable[[int, int], None]] = None,
                 every: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.progress, self.every, self.clock = seconds, progress, every, clock
        self.started = clock()
        self._last = self.started
        self.stopped: Optional[str] = None

    def tick(self, done: int, total: int, lineno: int) -> bool:
        """False when the time is up (and records why); reports progress when due."""
        now = self.clock()
        if self.progress is not None and now - self._last >= self.every:
            self._last = now
            self.progress(done, total)
        if self.seconds is not None and now - self.started > self.seconds:
            self.stopped = (f"reading stopped after {self.seconds:g} s at line {lineno:,} ({done / MB:,.0f} MB of "
                            f"{total / MB:,.0f} MB); the rest of the file was not read")
            return False
        return True


def _lines(fh: BinaryIO, total: int, budget: Optional[Budget]) -> Iterator[tuple[int, Optional[bytes], int]]:
    """(line number, the line's bytes, its length) for each line; bytes is None for a line over the limit,
    which is skipped without being held in memory."""
    limit = max_line_bytes()
    done = 0
    lineno = 0
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        size = len(raw)
        if size > limit and not raw.endswith(b"\n"):
            raw = None
            while True:  # the rest of the long line, in pieces that are dropped
                chunk = fh.readline(1 << 20)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
        done += size
        yield lineno, raw, size
        if budget is not None and lineno % 256 == 0 and not budget.tick(done, total, lineno):
            return


def _too_long(size: int) -> str:
    return (f"is {size / MB:,.1f} MB long, over the {max_line_bytes() / MB:,.0f} MB limit for one row. Split it, "
            "shorten it, or raise the limit with the FTSTUDIO_MAX_LINE_MB environment variable.")


def _decode_line(raw: bytes, decoder: Decoder) -> str:
    try:
        return decoder.decode(raw)
    except Undecodable as e:
        raise _Bad(None, str(e)) from None


def _iter_jsonl(p: Path, budget: Optional[Budget] = None, decoder: Optional[Decoder] = None) -> Iterator[Item]:
    # Read by hand rather than with datasets' JSON builder: that builder rejects the whole
    # file at its first bad line, and we need every bad line numbered and skippable. One line
    # at a time, so memory holds one row, never the file.
    # The encoding is decided line by line (backend.data.encodings): a Windows-1252 file is read, not refused.
    decoder = decoder if decoder is not None else Decoder()
    total = p.stat().st_size
    with open(p, "rb") as fh:
        for lineno, raw, size in _lines(fh, total, budget):
            if raw is None:
                yield RowError(lineno, None, _too_long(size))
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark from some editors
            if not raw.strip():
                continue
            try:
                text = _decode_line(raw, decoder)
                obj = json.loads(text)
            except _Bad as b:
                yield RowError(lineno, None, b.message)
                continue
            except json.JSONDecodeError as e:
                yield RowError(lineno, None, f"is not valid JSON ({e.msg} at column {e.colno}). "
                                             "Fix or remove this line.")
                continue
            except RecursionError:
                yield RowError(lineno, None, TOO_DEEP)
                continue
            if not isinstance(obj, dict):
                yield RowError(lineno, None, f"holds a JSON {type(obj).__name__}, not an object "
                                             "with named fields. Each line must be one {...} object.")
                continue
            yield lineno, obj


def _read_jsonl(p: Path, decoder: Optional[Decoder] = None) -> tuple[list[tuple[int, dict]], list[RowError]]:
    records: list[tuple[int, dict]] = []
    errors: list[RowError] = []
    for item in _iter_jsonl(p, decoder=decoder):
        (errors if isinstance(item, RowError) else records).append(item)  # type: ignore[arg-type]
    return records, errors


def _read_whole(p: Path, decoder: Decoder) -> str:
    """The whole file as text in its encoding (UTF-8, or Windows-1252 when it is not UTF-8), or a sentence
    naming the first line no encoding reads."""
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for lineno, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            decoder.decode(line[3:] if lineno == 1 and line.startswith(b"\xef\xbb\xbf") else line)
        except Undecodable as e:
            raise UserError(f"{p}, line {lineno}: {e}") from None
    return raw.decode(decoder.encoding)


def _read_json(p: Path, decoder: Decoder) -> tuple[list[tuple[int, dict]], list[RowError], str]:
    text = _read_whole(p, decoder)
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n" in stripped.strip() and not _parses(stripped):
        recs, errs = _read_jsonl(p, Decoder())  # JSON Lines saved with a .json extension
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


def _csv_encoding(p: Path, decoder: Decoder) -> str:
    """The CSV's encoding, after a first pass a line at a time; a line no encoding reads is refused by number."""
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                decoder.decode(raw[3:] if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else raw)
            except Undecodable as e:
                raise UserError(f"{p}, line {lineno}: {str(e).rstrip('.')} (in a spreadsheet: "
                                "'CSV UTF-8').") from None
    return decoder.encoding


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while (e.__cause__ or e.__context__) and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return e


PARQUET_BATCH = 1024  # rows per Arrow batch: memory holds one batch, not the file


def _iter_parquet(p: Path, budget: Optional[Budget] = None) -> Iterator[Item]:
    """Parquet a batch of rows at a time (pyarrow), so a file larger than memory can be read."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(p))
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError...
        raise UserError(f"{p} could not be read as PARQUET: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}. "
                        "Check that the file is a complete Parquet file (re-export it).") from None
    total = p.stat().st_size
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
            for row in batch.to_pylist():
                n += 1
                yield n, row
            if budget is not None and not budget.tick(int(total * n / max(pf.metadata.num_rows, 1)), total, n):
                return
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged row group
        raise UserError(f"{p}, row {n + 1}: the Parquet data could not be read ({str(e).strip()[:200]}). "
                        "Re-export the file.") from None


def _iter_with_datasets(p: Path, kind: str, decoder: Optional[Decoder] = None) -> Iterator[Item]:
    encoding = "utf-8"
    if kind in ("csv", "tsv"):  # before importing datasets: a refused file costs no import
        encoding = _csv_encoding(p, decoder if decoder is not None else Decoder())
    import datasets

    datasets.disable_progress_bars()
    # A throwaway cache: loading a file for a look must not grow ~/.cache.
    with tempfile.TemporaryDirectory(prefix="ftstudio-ds-") as cache:
        try:
            if kind == "parquet":
                ds = datasets.Dataset.from_parquet(str(p), keep_in_memory=True, cache_dir=cache)
            else:
                ds = datasets.Dataset.from_csv(str(p), keep_in_memory=True, cache_dir=cache,
                                               sep="\t" if kind == "tsv" else ",",
                                               encoding="utf-8-sig" if encoding == "utf-8" else "cp1252")
        except Exception as e:  # noqa: BLE001 - the loaders raise many types; we report the cause
            cause = _root_cause(e)
            raise UserError(f"{p} could not be read as {kind.upper()}: {str(cause).strip().splitlines()[-1]}. "
                            "Check the file (for CSV: one header line, the same number of columns on "
                            "every line, quotes around values holding commas).") from None
        # A CSV row is line N+1 of the file (the header is line 1) unless values span lines.
        offset = 1 if kind in ("csv", "tsv") else 0
        # One row at a time from the Arrow table: never a second, Python-object copy of the whole file.
        for i, r in enumerate(ds, start=1):
            yield i + offset, r


def _text_lines(p: Path, budget: Optional[Budget],
                decoder: Optional[Decoder] = None) -> Iterator[tuple[int, Optional[str], int]]:
    """(line number, the line without its end, its size) for a text file (UTF-8 or Windows-1252); None for a
    line over the limit. A line no encoding reads ends the read with a sentence naming it."""
    decoder = decoder if decoder is not None else Decoder()
    total = p.stat().st_size
    with open(p, "rb") as fh:
        for lineno, raw, size in _lines(fh, total, budget):
            if raw is None:
                yield lineno, None, size
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = decoder.decode(raw)
            except Undecodable as e:
                raise UserError(f"{p}, line {lineno}: {e}") from None
            yield lineno, line.rstrip("\r\n"), size


def _has_paragraphs(p: Path) -> bool:
    """True when the file has a blank line and more than one line of text (a first pass, a line at a time)."""
    blank = False
    filled = 0
    for _, line, _ in _text_lines(p, None):
        if line is not None and not line.strip():
            blank = True
        else:
            filled += 1
        if blank and filled > 1:
            return True
    return False


def _iter_text(p: Path, budget: Optional[Budget] = None, decoder: Optional[Decoder] = None) -> Iterator[Item]:
    """Plain text: one document per paragraph (blank-line separated), else one per line."""
    paragraphs = _has_paragraphs(p)
    buf: list[str] = []
    held = 0
    start = 0
    for i, ln, size in _text_lines(p, budget, decoder):
        if ln is None:
            yield RowError(i, None, _too_long(size))
            continue
        if paragraphs:
            if ln.strip():
                if not buf:
                    start = i
                held += len(ln)
                if held > max_line_bytes():  # a paragraph is one row: the same bound as a line
                    yield RowError(start, None, "starts a paragraph that " + _too_long(held))
                    buf, held = [], 0
                    continue
                buf.append(ln)
            elif buf:
                yield start, {"text": "\n".join(buf)}
                buf, held = [], 0
        elif ln.strip():
            yield i, {"text": ln}
    if buf:
        yield start, {"text": "\n".join(buf)}


def _read_text(p: Path) -> tuple[list[tuple[int, dict]], list[RowError]]:
    records, errors = [], []
    for item in _iter_text(p):
        (errors if isinstance(item, RowError) else records).append(item)  # type: ignore[arg-type]
    return records, errors


def _refuse_utf16(p: Path) -> None:
    # Windows tools save "Unicode" text as UTF-16; every line would fail on its own, so say it once.
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UserError(f"{p} is saved as UTF-16 text; the studio reads UTF-8. Re-save it with UTF-8 encoding "
                        "(in a spreadsheet: 'CSV UTF-8'; in an editor: Save As, encoding UTF-8).")


@dataclass
class RecordStream:
    """A dataset file being read: its kind, its unit ('line'/'row'), and the items, each a
    (line or row number, raw record) pair or a RowError, in file order."""
    path: Path
    kind: str
    unit: str
    items: Iterator[Item]
    size: int
    decoder: Decoder = field(default_factory=Decoder)  # its encoding is known once the items are read

    @property
    def encoding(self) -> str:
        """'utf-8', 'cp1252' or 'latin-1'; final once every item has been read."""
        return self.decoder.name

    def notice(self) -> Optional[str]:
        """A sentence when the file was not UTF-8 (read once every item has been read), else None."""
        return self.decoder.notice(str(self.path))


def open_records(path: str, budget: Optional[Budget] = None) -> RecordStream:
    """Check the file (it exists, is a regular file, is not too big, has a known extension, is not UTF-16)
    and start reading it. JSON Lines and text stream a line at a time; JSON, CSV, TSV and Parquet are
    parsed whole (bounded by max_bytes) and then handed out a row at a time."""
    p = _check_file(path)
    kind = _kind_of(p)
    if kind != "parquet":
        _refuse_utf16(p)
    size = p.stat().st_size
    dec = Decoder()
    if kind == "jsonl":
        return RecordStream(p, kind, "line", _iter_jsonl(p, budget, dec), size, dec)
    if kind == "text":
        return RecordStream(p, kind, "line", _iter_text(p, budget, dec), size, dec)
    if kind == "json":
        recs, errs, unit = _read_json(p, dec)
        items = sorted([*recs, *errs], key=lambda it: it.line if isinstance(it, RowError) else it[0])
        return RecordStream(p, kind, unit, iter(items), size, dec)
    if kind == "parquet":
        return RecordStream(p, kind, "row", _iter_parquet(p, budget), size, dec)
    return RecordStream(p, kind, "line" if kind in ("csv", "tsv") else "row", _iter_with_datasets(p, kind, dec),
                        size, dec)


def read_records(path: str) -> tuple[list[tuple[int, dict]], list[RowError], str, str]:
    """(line or row number, raw record) pairs, read errors, the unit ('line'/'row') and the file kind."""
    stream = open_records(path)
    recs: list[tuple[int, dict]] = []
    errs: list[RowError] = []
    for item in stream.items:
        (errs if isinstance(item, RowError) else recs).append(item)  # type: ignore[arg-type]
    return recs, errs, stream.unit, stream.kind
