"""Each training fault ends in a final state with a sentence and keeps the last good checkpoint.
The trainer runs in this process (backend.training.run.run) to spare a Python start-up per fault."""
from __future__ import annotations

import signal

import pytest

from backend.runs import rundir
from backend.training import run as train
from tests.integration.test_train_runner import tiny_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture()
def run_in_process(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")  # train.run sets it; restore afterwards
    previous = signal.getsignal(signal.SIGTERM)

    def go(fault: str, **train_cfg):
        monkeypatch.setenv("FTSTUDIO_FAULT", fault)
        cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, **train_cfg)
        run_dir = rundir.create_run(tmp_path / "ws", cfg)
        code = train.run(run_dir)
        return run_dir, code, rundir.read_status(run_dir)

    yield go
    signal.signal(signal.SIGTERM, previous)


def test_out_of_memory_says_so_with_suggestions_and_keeps_the_checkpoint(run_in_process):
    run_dir, code, status = run_in_process("oom@step3", max_steps=6)
    assert code == 1 and status["state"] == "out_of_memory"
    assert "ran out of memory" in status["error"] and "To fit:" in status["error"]
    assert "checkpoint-2" in status["error"] and rundir.last_checkpoint(run_dir).name == "checkpoint-2"
    assert [e for e in rundir.read_events(run_dir)[0] if e["type"] == "error"][0]["state"] == "out_of_memory"


def test_an_exception_in_collation_fails_with_a_sentence_naming_the_batch(run_in_process):
    run_dir, code, status = run_in_process("collate_error@5", max_steps=6)
    assert code == 1 and status["state"] == "failed"
    assert "could not be batched" in status["error"] and "batch 5" in status["error"]
    kept = rundir.last_checkpoint(run_dir)
    assert kept is not None and kept.name in status["error"]


def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint(run_in_process):
    run_dir, code, status = run_in_process("disk_full@save2", max_steps=6)
    assert code == 1 and status["state"] == "failed"
    assert "disk is full" in status["error"] and "checkpoint-2" in status["error"]
    assert (run_dir / "checkpoints" / "checkpoint-4").is_dir(), "the cut-short checkpoint exists..."
    assert rundir.last_checkpoint(run_dir).name == "checkpoint-2", "...but is never resumed from"


def test_a_missing_data_file_fails_with_a_sentence_naming_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")
    previous = signal.getsignal(signal.SIGTERM)
    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=2)
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    (tmp_path / "train.jsonl").unlink()
    try:
        assert train.run(run_dir) == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and "train.jsonl" in status["error"]
    assert "Traceback" not in status["error"]
