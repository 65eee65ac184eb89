"""Bad inputs to a run and a merge (issue 23 items 11-13): data paths that are no data file, numbers
without bounds, image parts in chat data, a merge into a full disk or onto a file. Each is a sentence
(exit 2 from the command line) before any work starts, with nothing created and nothing old touched."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from backend import cli
from backend.core import io as core_io
from backend.core.config import ConfigError, validate_config
from backend.data.records import load_rows
from backend.runs import rundir, runner

pytestmark = pytest.mark.timeout(120)


def _write_config(tmp_path: Path, data_path: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "bad-data", "data": {"path": data_path}, "train": {"max_steps": 2}}))
    return path


@pytest.fixture()
def no_start(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("a run was started for a config that cannot train")
    monkeypatch.setattr(runner, "start_run", refuse)


@pytest.mark.parametrize("kind", ["folder", "/dev/zero", "missing"])
def test_a_data_path_that_is_no_data_file_is_exit_2_before_any_run(tmp_path, capsys, no_start, kind):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    data = {"folder": str(folder), "/dev/zero": "/dev/zero", "missing": str(tmp_path / "gone.jsonl")}[kind]
    ws = tmp_path / "ws"
    code = cli.main(["train", str(_write_config(tmp_path, data)), "--workspace", str(ws), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    says = {"folder": "is a folder", "/dev/zero": "is not a regular file", "missing": "does not exist"}[kind]
    assert says in err and "Traceback" not in err
    assert not rundir.runs_root(ws).exists() or not any(rundir.runs_root(ws).iterdir())


@pytest.mark.parametrize("field, value, says", [
    ("seed", 10**30, "train.seed: is too large: at most 4,294,967,295"),
    ("seed", -1, "train.seed"),
    ("epochs", float("inf"), "train.epochs: must be a finite number"),
    ("epochs", float("nan"), "train.epochs: must be a finite number"),
    ("max_steps", 10**18, "train.max_steps: is too large: at most 100,000,000"),
    ("learning_rate", float("inf"), "train.learning_rate"),
    ("max_grad_norm", float("inf"), "train.max_grad_norm: must be a finite number"),
])
def test_numbers_that_would_crash_or_run_forever_are_refused_with_the_field(field, value, says):
    with pytest.raises(ConfigError) as err:
        validate_config({"train": {field: value}})
    assert says in str(err.value)


def test_gpus_per_node_beyond_any_machine_is_a_config_error():
    with pytest.raises(ConfigError, match="distributed.gpus: is too large: at most 16"):
        validate_config({"distributed": {"gpus": 4096}})


def test_image_parts_in_messages_are_refused_naming_multimodal_data(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                   {"type": "image_url", "image_url": {"url": "cat.png"}}]},
                      {"role": "assistant", "content": "A cat."}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]},
                      {"role": "assistant", "content": "Hi."}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_rows(str(path))
    assert len(ds.rows) == 1 and ds.skipped == 1, "the image row is not trained without its picture"
    sentence = " ".join(ds.error_sentences())
    assert "line 1" in sentence and "multimodal" in sentence and "'image_url'" in sentence
    assert ds.rows[0]["messages"][0]["content"] == "Say hi"


# ---- item 13: merge -----------------------------------------------------------------------------

@pytest.fixture()
def adapter(tmp_path, tiny_model_dir) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": str(tiny_model_dir), "r": 4}))
    return folder


def _old_merge(tmp_path: Path) -> Path:
    from backend.export.merge import _MERGED_MARK

    out = tmp_path / "merged"
    out.mkdir()
    (out / _MERGED_MARK).write_text("{}")
    (out / "model.safetensors").write_bytes(b"old model")
    return out


def test_merge_into_a_full_disk_is_a_sentence_and_exit_2_with_the_old_folder_intact(tmp_path, capsys, adapter,
                                                                                   monkeypatch):
    out = _old_merge(tmp_path)
    monkeypatch.setattr(core_io, "free_bytes", lambda folder: 1000)
    code = cli.main(["merge", str(adapter), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Not enough disk space" in err and "Traceback" not in err, err
    assert (out / "model.safetensors").read_bytes() == b"old model"


def test_a_disk_that_fills_during_the_merge_is_a_sentence_and_exit_2(tmp_path, capsys, adapter, monkeypatch):
    from backend.export import merge

    out = _old_merge(tmp_path)

    def full(*a, **kw):  # what safetensors raises when the disk fills while it writes
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                           '"No space left on device" })')

    monkeypatch.setattr(merge, "_load_base", full)
    code = cli.main(["merge", str(adapter), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "The disk is full" in err and "unchanged" in err and "Traceback" not in err, err
    assert (out / "model.safetensors").read_bytes() == b"old model"
    assert not list(tmp_path.glob(".merged.partial*")), "no half-written folder is left"


def test_a_file_as_the_merge_output_is_a_sentence_and_exit_2(tmp_path, capsys, adapter):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code = cli.main(["merge", str(adapter), "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err, err
    code = cli.main(["merge", str(adapter), "--out", str(target / "inside")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and "NotADirectoryError" not in err, err
    assert target.read_text() == "mine"
    assert os.path.isfile(target)
