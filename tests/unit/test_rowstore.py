"""Training rows on disk (backend.data.rowstore): the same rows, split, key and encoded dataset as a list,
with none of them held in memory."""
import gc
import json

import pytest

from backend.core.config import DataConfig
from backend.data import templates as T
from backend.data.records import load_for_training, load_rows, split_rows
from backend.data.rowstore import RowWriter, row_bytes

ROWS = [{"messages": [{"role": "user", "content": f"Wie viel ist {i} × 2? ünïcödé"},
                      {"role": "assistant", "content": f"{2 * i}."}]} for i in range(57)]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return T.get_tokenizer(str(tiny_model_dir))


def _store(tmp_path, rows=ROWS):
    w = RowWriter(tmp_path)
    for r in rows:
        w.append(r)
    return w.finish()


def test_a_store_reads_back_every_row_by_index_slice_and_iteration(tmp_path):
    store = _store(tmp_path)
    assert len(store) == len(ROWS) and list(store) == ROWS
    assert store[0] == ROWS[0] and store[-1] == ROWS[-1] and store[10:13] == ROWS[10:13]
    assert store[50:] == ROWS[50:] and store[::10] == ROWS[::10]
    assert list(store.raw_rows())[3] == row_bytes(ROWS[3])
    with pytest.raises(IndexError):
        store[len(ROWS)]
    assert len(_store(tmp_path, [])) == 0  # an empty file is a store of no rows


def test_the_file_goes_when_the_store_is_no_longer_used(tmp_path):
    store = _store(tmp_path)
    folder = store.folder
    assert (folder / "rows.jsonl").exists()
    view = store.view([1, 2])
    del store
    gc.collect()
    assert folder.exists() and view[0] == ROWS[1]  # a view keeps its store alive
    del view
    gc.collect()
    assert not folder.exists()


def test_spilled_loading_and_splitting_give_the_rows_a_list_gives(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\nnot json\n", encoding="utf-8")
    in_memory = load_rows(str(path))
    spilled = load_rows(str(path), spill=tmp_path / "rows")
    assert type(spilled.rows).__name__ == "RowStore" and isinstance(in_memory.rows, list)
    assert list(spilled.rows) == in_memory.rows and list(spilled.lines) == in_memory.lines
    assert spilled.skipped == in_memory.skipped == 1
    for share, seed in ((0.1, 7), (0.3, 1), (0.0, 3)):
        a, b = split_rows(in_memory.rows, share, seed)
        c, d = split_rows(spilled.rows, share, seed)
        assert (list(c), list(d)) == (a, b)
    cfg = DataConfig(path=str(path), validation_split=0.2)
    _, train, val = load_for_training(cfg, seed=5, spill=tmp_path / "rows")
    _, train_l, val_l = load_for_training(cfg, seed=5)
    assert (list(train), list(val)) == (train_l, val_l)


def test_a_stored_dataset_has_the_lists_cache_key_and_encodes_to_the_same_tokens(tok, tmp_path, monkeypatch):
    store = _store(tmp_path)
    view = store.view(range(5, 57))
    for cfg in (DataConfig(max_length=64, template="chatml"), DataConfig(max_length=64, packing=True)):
        assert T.dataset_key(tok, view, cfg) == T.dataset_key(tok, ROWS[5:], cfg)
        from_list = T.build_sft_dataset(tok, ROWS[5:], cfg, cache_dir=tmp_path / "a")
        from_store = T.build_sft_dataset(tok, view, cfg, cache_dir=tmp_path / "b")
        assert from_store[:] == from_list[:]
    # Forked workers read the same memory-mapped file.
    monkeypatch.setattr(T, "PROCESS_ROWS", 10)
    monkeypatch.setattr(T, "TASK_ROWS", 8)
    monkeypatch.setenv("FTSTUDIO_DATA_PROCS", "2")
    cfg = DataConfig(max_length=64)
    parallel = T.build_sft_dataset(tok, view, cfg, cache_dir=tmp_path / "c")
    assert parallel[:] == T.build_sft_dataset(tok, ROWS[5:], cfg)[:]


def test_a_failed_load_leaves_no_file_behind(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    from backend.core.errors import UserError
    with pytest.raises(UserError):
        load_rows(str(path), skip_bad_rows=False, spill=tmp_path / "rows")
    gc.collect()
    assert not any((tmp_path / "rows").iterdir())


def test_a_folder_left_by_a_killed_run_goes_when_the_next_one_starts(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left = tmp_path / f"rows-{dead}-abc"
    left.mkdir()
    (left / "rows.jsonl").write_text("{}\n")
    mine = _store(tmp_path)  # a new writer in the same folder
    assert not left.exists() and mine.folder.exists() and mine.folder.name.startswith("rows-")
