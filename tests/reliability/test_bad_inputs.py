"""The bad-input corpus, generated at test time, through backend.data.records.load_rows: every file ends in a
sentence (UserError) or a clean load with skipped-row counts, within a time bound and a memory bound."""
from __future__ import annotations

import json
import random
import time
import tracemalloc
from typing import Callable

import pytest

from backend.data.records import load_rows
from backend.core.errors import UserError

pytestmark = pytest.mark.timeout(120)

MB = 2**20


def _rows(n: int) -> str:
    return "".join(json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}) + "\n" for i in range(n))


def _hundred_k_one_percent_broken() -> bytes:
    lines = []
    for i in range(100_000):
        good = json.dumps({"prompt": f"q{i}", "completion": f"a{i}"})
        lines.append(good[:-1] if i % 100 == 7 else good)  # every 100th row loses its closing brace
    return ("\n".join(lines) + "\n").encode()


# name -> (file bytes, expected: "error" or "load", time bound s, traced-memory bound MB)
CORPUS: dict[str, tuple[Callable[[], bytes], str, float, int]] = {
    "random-binary.jsonl": (lambda: random.Random(1).randbytes(256 * 1024), "error", 10, 64),
    "random-binary.csv": (lambda: random.Random(2).randbytes(256 * 1024), "error", 30, 256),
    "random-binary.parquet": (lambda: random.Random(3).randbytes(64 * 1024), "error", 30, 256),
    "random-binary.json": (lambda: random.Random(4).randbytes(64 * 1024), "error", 10, 64),
    # Latin-1 / Windows-1252 is read (with a notice, backend.data.encodings); a byte neither defines is refused.
    "latin-1.jsonl": (lambda: _rows(50).replace("question", "caf\u00e9 question").encode("latin-1"), "load", 10, 64),
    "cp1252-undefined-byte.csv": (lambda: b"prompt,completion\nq\x81,a\n", "error", 30, 256),
    "utf-16.jsonl": (lambda: _rows(50).encode("utf-16"), "error", 10, 64),
    "utf-16.csv": (lambda: "prompt,completion\nhi,there\n".encode("utf-16"), "error", 30, 256),
    "ten-mb-single-line.jsonl": (lambda: (json.dumps({"prompt": "x" * (10 * MB), "completion": "y"}) + "\n").encode(),
                                 "load", 20, 200),
    "ten-mb-single-line.txt": (lambda: b"z" * (10 * MB), "load", 20, 200),
    "ten-mb-not-json.jsonl": (lambda: b"{" * (10 * MB) + b"\n", "error", 20, 200),
    "nested-10k.json": (lambda: b"[" * 10_000 + b"]" * 10_000, "error", 10, 64),
    "nested-10k-in-a-row.jsonl": (lambda: b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b', "completion": "x"}\n'
                                  + _rows(3).encode(), "load", 10, 64),
    "nested-10k-objects.json": (lambda: b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "error", 10, 64),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_bad_file_ends_in_a_sentence_or_a_clean_load_within_bounds(tmp_path, name):
    make, expected, seconds, mem_mb = CORPUS[name]
    path = tmp_path / name
    path.write_bytes(make())
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            ds = load_rows(str(path))
            outcome, message = "load", None
        except UserError as e:
            outcome, message = "error", str(e)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome == expected, (name, message)
    if outcome == "error":
        assert name in message, "the sentence names the file"
        assert "Traceback" not in message and len(message) < 2000
    else:
        assert ds.rows, "a clean load has rows"
    assert elapsed < seconds, f"{name} took {elapsed:.1f} s (bound {seconds} s)"
    assert peak < mem_mb * MB, f"{name} peaked at {peak / MB:.0f} MB (bound {mem_mb} MB)"


def test_a_nested_row_is_skipped_and_counted_the_rest_loads(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_bytes(CORPUS["nested-10k-in-a-row.jsonl"][0]())
    ds = load_rows(str(path))
    assert len(ds.rows) == 3 and ds.skipped == 1
    assert ds.errors[0].line == 1 and "too deeply" in ds.errors[0].message


def test_hundred_thousand_rows_with_one_percent_broken_load_cleanly_with_counts(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(_hundred_k_one_percent_broken())
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        ds = load_rows(str(path))
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(ds.rows) == 99_000 and ds.skipped == 1_000
    assert {e.line for e in ds.errors[:3]} == {8, 108, 208}, "each skipped row is named by its line"
    assert elapsed < 60, f"100k rows took {elapsed:.1f} s (bound 60 s)"
    assert peak < 400 * MB, f"100k rows peaked at {peak / MB:.0f} MB (bound 400 MB)"


def test_formula_like_csv_cells_load_as_plain_text_and_are_never_evaluated(tmp_path):
    cells = ["=cmd|' /C calc'!A0", "=1+1", "@SUM(A1:A2)", "+2+3", "-3", '=HYPERLINK("http://example.invalid")',
             "=2*3"]
    marker = tmp_path / "pwned"
    cells.append(f"=cmd|' /C touch {marker}'!A0")
    path = tmp_path / "formulas.csv"
    body = "prompt,completion\n" + "".join(
        f'"{c.replace(chr(34), chr(34) * 2)}","answer {i}"\n' for i, c in enumerate(cells))
    path.write_text(body, encoding="utf-8")
    ds = load_rows(str(path))
    assert [r["prompt"] for r in ds.rows] == cells, "each cell is its own text, unchanged"
    assert all(isinstance(r["prompt"], str) for r in ds.rows)
    assert not marker.exists()


def test_path_names_with_dots_unicode_and_spaces(tmp_path):
    folder = tmp_path / "my data été" / "sub dir"
    folder.mkdir(parents=True)
    path = folder / "données d'été 🙂.jsonl"
    path.write_text(_rows(4), encoding="utf-8")
    via_dots = tmp_path / "my data été" / "sub dir" / ".." / "sub dir" / path.name
    assert len(load_rows(str(via_dots)).rows) == 4
    assert len(load_rows(str(path)).rows) == 4
    missing = tmp_path / "my data été" / ".." / ".." / "nope ü.jsonl"
    with pytest.raises(UserError, match="does not exist"):
        load_rows(str(missing))
    # A folder is a source of its own now (backend.data.sources): its data files, here the one above.
    assert len(load_rows(str(folder / "..")).rows) == 4
    (tmp_path / "empty été").mkdir()
    with pytest.raises(UserError, match="folder"):
        load_rows(str(tmp_path / "empty été"))


def test_a_file_over_the_size_bound_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setenv("FTSTUDIO_MAX_DATA_MB", "1")
    path = tmp_path / "too big.jsonl"
    with open(path, "wb") as fh:
        fh.truncate(50 * MB)  # sparse: costs no disk, and would cost memory only if it were read
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="FTSTUDIO_MAX_DATA_MB"):
            load_rows(str(path))
        assert tracemalloc.get_traced_memory()[1] < 1 * MB
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["utf-16.jsonl", "utf-16.csv"])
def test_utf16_files_are_named_as_utf16_once(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(CORPUS[name][0]())
    with pytest.raises(UserError, match="saved as UTF-16") as e:
        load_rows(str(path))
    assert "line" not in str(e.value).split("UTF-16")[0], "one sentence for the file, not one per line"
