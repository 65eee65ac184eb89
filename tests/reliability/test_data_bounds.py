"""Data files that would exhaust memory or time: streamed reading, a bound on one line, a bounded look
(rows kept, time budget, progress), and special files named as such. Small files with lowered limits
stand in for the gigabyte files measured in docs/RELIABILITY.md.

On the main branch before this change: a FIFO or a link to /dev/zero read as "is empty (0 bytes)", a
long line was held whole and loaded, and every row of a look was kept (there was no budget to pass)."""
from __future__ import annotations

import argparse
import json
import os
import tracemalloc

import pytest

from backend.core.errors import UserError
from backend.data.records import load_rows

MB = 1024 * 1024
ROW = {"instruction": "What does the model learn?", "input": "", "output": "It learns the answers in the rows."}


def _jsonl(path, n: int) -> None:
    line = json.dumps(ROW) + "\n"
    with open(path, "w") as fh:
        fh.write(line * n)


def test_a_fifo_is_not_a_regular_file_and_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    # Opening a FIFO with no writer blocks forever: the check must not open it (the test would hang).
    with pytest.raises(UserError, match="is not a regular file") as e:
        load_rows(str(fifo))
    assert "FIFO" in str(e.value) and "empty" not in str(e.value)


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null"])
def test_a_link_to_a_device_is_not_a_regular_file(tmp_path, target):
    link = tmp_path / "data.jsonl"
    link.symlink_to(target)
    with pytest.raises(UserError, match="is not a regular file") as e:
        load_rows(str(link))
    assert "character device" in str(e.value) and "empty" not in str(e.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_line_over_the_limit_is_refused_by_its_number_without_being_held(tmp_path, monkeypatch, suffix):
    monkeypatch.setenv("FTSTUDIO_MAX_LINE_MB", "1")
    path = tmp_path / f"long{suffix}"
    good = json.dumps(ROW) if suffix == ".jsonl" else "a short line of text"
    huge = json.dumps({**ROW, "output": "x" * (6 * MB)}) if suffix == ".jsonl" else "y" * (6 * MB)
    path.write_text(f"{good}\n{huge}\n{good}\n")
    tracemalloc.start()
    try:
        ds = load_rows(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.row_count == 2 and ds.lines == [1, 3]
    assert [e.line for e in ds.errors] == [2] and "over the 1 MB limit for one row" in ds.errors[0].message
    assert "FTSTUDIO_MAX_LINE_MB" in ds.errors[0].message
    assert peak < 4 * MB, f"peaked at {peak / MB:.1f} MB: the 6 MB line was held"
    with pytest.raises(UserError, match=r"line 2: is 6\.0 MB long"):
        load_rows(str(path), skip_bad_rows=False)


def test_a_look_keeps_a_bounded_part_of_the_rows_and_counts_every_row(tmp_path, monkeypatch):
    path = tmp_path / "many.jsonl"
    _jsonl(path, 20_000)  # about 2.4 MB
    with open(path, "a") as fh:
        fh.write("{not json\n")
    monkeypatch.setenv("FTSTUDIO_DATA_KEEP_MB", "0.1")
    tracemalloc.start()
    try:
        look = load_rows(str(path), keep_all=False)
        look_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        full = load_rows(str(path))
        full_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert look.row_count == 20_000 and 0 < len(look.rows) < 2_000 and not look.complete
    assert look.skipped == 1 and look.errors[0].line == 20_001, "rows after the kept part are still checked"
    assert "FTSTUDIO_DATA_KEEP_MB" in look.note and look.summary()["rows"] == 20_000
    assert len(full.rows) == 20_000 and full.complete and full.note is None, "a training keeps every row"
    assert look_peak < full_peak / 4, (look_peak, full_peak)


def test_a_look_stops_at_its_time_budget_and_reports_progress(tmp_path):
    from backend.data.files import Budget

    path = tmp_path / "slow.jsonl"
    _jsonl(path, 5_000)
    now = [0.0]

    def clock():
        now[0] += 0.1  # the reader looks every 256 lines: 5,000 lines "take" about 2 s
        return now[0]

    seen = []
    budget = Budget(1.0, lambda done, total: seen.append((done, total)), every=0.05, clock=clock)
    ds = load_rows(str(path), keep_all=False, budget=budget)
    assert not ds.complete and "reading stopped after 1 s at line" in ds.note
    assert 0 < ds.row_count < 5_000
    assert seen and all(t == path.stat().st_size for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] < path.stat().st_size


def test_a_text_file_is_streamed_with_its_paragraphs(tmp_path, monkeypatch):
    path = tmp_path / "book.txt"
    path.write_text("first paragraph\nstill first\n\nsecond\n\n\nthird\n")
    ds = load_rows(str(path))
    assert [r["text"] for r in ds.rows] == ["first paragraph\nstill first", "second", "third"]
    assert ds.lines == [1, 4, 7]
    lines = tmp_path / "lines.txt"
    lines.write_text("one\ntwo\nthree\n")
    assert [r["text"] for r in load_rows(str(lines)).rows] == ["one", "two", "three"]


def test_inspect_reports_every_row_but_keeps_and_tokenizes_a_bounded_part(tmp_path, monkeypatch, tiny_model_dir, capsys):
    from backend.commands import data as data_cmd

    path = tmp_path / "many.jsonl"
    _jsonl(path, 3_000)
    monkeypatch.setenv("FTSTUDIO_DATA_KEEP_MB", "0.05")
    parser = argparse.ArgumentParser()
    data_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["data", "inspect", str(path), "--model", str(tiny_model_dir), "--stats-rows", "50"])
    out = data_cmd.inspect(args)
    assert out["rows"] == 3_000 and out["rows_kept"] < 3_000 and out["complete"] is False
    assert out["token_lengths"]["counted"] == 50
    assert any("FTSTUDIO_DATA_KEEP_MB" in w for w in out["warnings"])
    assert any("first 50 of 3,000 rows" in w for w in out["warnings"])


def test_the_dataset_tab_looks_with_the_bounds_and_says_so(tmp_path, monkeypatch):
    from studio.tabs.dataset import DatasetCache, split_view, status_markdown

    path = tmp_path / "many.jsonl"
    _jsonl(path, 3_000)
    monkeypatch.setenv("FTSTUDIO_DATA_KEEP_MB", "0.05")
    ds = DatasetCache().load(str(path), None, "auto", True)
    assert not ds.complete and len(ds.rows) < 3_000
    assert "3000 rows" in status_markdown(ds) and "FTSTUDIO_DATA_KEEP_MB" in status_markdown(ds)
    assert split_view(ds, {"train": {"seed": 1}}, "split", 0.1) == "2700 training rows, 300 validation rows (seed 1)."
