"""More sources (backend.data.sources): a folder of data files, a save_to_disk folder, and a hub dataset id,
which is refused with a sentence where the hub cannot be reached (as here: the tests run offline)."""
import json

import pytest

from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.data.records import load_rows
from backend.data.sources import hub_ref
from backend.runs.runner import check_data_paths


def test_a_folder_of_files_loads_as_one_dataset_and_names_the_file_of_a_bad_row(tmp_path):
    d = tmp_path / "parts"
    (d / "more").mkdir(parents=True)
    (d / "a.jsonl").write_text(json.dumps({"prompt": "p1", "completion": "c1"}) + "\nnot json\n")
    (d / "more" / "b.csv").write_text("prompt,completion\np2,c2\np3,c3\n")
    (d / ".hidden.jsonl").write_text(json.dumps({"prompt": "secret", "completion": "x"}) + "\n")
    (d / "notes.bin").write_bytes(b"\x00\x01")
    ds = load_rows(str(d))
    assert [r["prompt"] for r in ds.rows] == ["p1", "p2", "p3"]
    assert ds.skipped == 1 and "(in a.jsonl)" in ds.errors[0].message and ds.errors[0].line == 2
    check_data_paths(RunConfig.model_validate({"data": {"path": str(d)}}))  # a folder can train
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no data files"):
        load_rows(str(empty))


def test_a_save_to_disk_folder_reads_its_train_split_with_a_notice(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["q1", "q2"], "answer": ["a1", "a2"]}),
        "test": datasets.Dataset.from_dict({"question": ["t1"], "answer": ["b1"]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    ds = load_rows(str(tmp_path / "saved"))
    assert ds.mapping == {"prompt": "question", "completion": "answer"} and ds.row_count == 2
    assert ds.rows[1]["messages"][1]["content"] == "a2" and "'train' split" in ds.notices[0]
    datasets.Dataset.from_dict({"text": ["one", "two", "three"]}).save_to_disk(str(tmp_path / "one"))
    assert [r["text"] for r in load_rows(str(tmp_path / "one")).rows] == ["one", "two", "three"]


def test_a_hub_dataset_id_says_in_a_sentence_that_the_hub_is_not_reachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_ref("hf://tatsu-lab/alpaca:train") == ("tatsu-lab/alpaca", "train")
    assert hub_ref("hf://tatsu-lab/alpaca") == ("tatsu-lab/alpaca", None) and hub_ref("data/x.jsonl") is None
    with pytest.raises(UserError, match="hub is not reachable from this machine.*save_to_disk"):
        load_rows("hf://tatsu-lab/alpaca:train")
    with pytest.raises(UserError, match="not a hub dataset id"):
        load_rows("hf://not an id")
    check_data_paths(RunConfig.model_validate({"data": {"path": "hf://tatsu-lab/alpaca"}}))


def test_parquet_is_streamed_a_batch_at_a_time(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from backend.data import files
    from backend.data.files import Budget

    path = tmp_path / "big.parquet"
    n = 3000
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(n)], "completion": [f"a{i}" for i in range(n)]}),
                   str(path), row_group_size=500)
    assert files.max_bytes("parquet") == files.max_bytes("jsonl"), "parquet has the streamed bound"
    monkeypatch.setattr(files, "PARQUET_BATCH", 100)
    ds = load_rows(str(path))
    assert ds.row_count == n and ds.rows[-1] == {"prompt": f"q{n - 1}", "completion": f"a{n - 1}"}
    clock = iter(range(0, 10**6, 10))  # ten seconds pass at every look at the clock
    stopped = load_rows(str(path), keep_all=False, budget=Budget(5, clock=lambda: next(clock)))
    assert 0 < stopped.row_count < n and "reading stopped" in stopped.note
