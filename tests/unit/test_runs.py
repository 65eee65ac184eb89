"""The run-directory protocol: ids, status with liveness, events tailing, checkpoints, listing."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from backend.runs import rundir
from backend.core.config import RunConfig


def test_run_id_is_timestamp_and_sanitized_slug_never_raw_user_text(tmp_path):
    cfg = RunConfig(name="../../etc/passwd; rm -rf ~ Ünïcode")
    run_dir = rundir.create_run(tmp_path, cfg)
    assert run_dir.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{8}-\d{6}-[a-z0-9-]+", run_dir.name), run_dir.name
    assert "/" not in run_dir.name and ".." not in run_dir.name


def test_run_id_falls_back_to_method_name(tmp_path):
    cfg = RunConfig.model_validate({"method": {"name": "dora"}})
    assert rundir.create_run(tmp_path, cfg).name.endswith("-dora")
    assert rundir.create_run(tmp_path, RunConfig(name="!!!")).name.endswith("-lora")


def test_create_run_writes_config_and_starting_status(tmp_path):
    cfg = RunConfig(name="demo")
    run_dir = rundir.create_run(tmp_path, cfg)
    assert RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text())) == cfg
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "starting" and status["method"] == "lora"


def test_two_runs_in_the_same_second_get_different_directories(tmp_path):
    cfg = RunConfig(name="same")
    dirs = {rundir.create_run(tmp_path, cfg) for _ in range(3)}
    assert len(dirs) == 3


def test_write_status_merges_deletes_and_rejects_unknown_states(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    rundir.write_status(run_dir, step=3, error="x")
    rundir.write_status(run_dir, error=None, loss=1.5)
    status = rundir.read_raw_status(run_dir)
    assert status["step"] == 3 and status["loss"] == 1.5 and "error" not in status
    with pytest.raises(ValueError):
        rundir.write_status(run_dir, state="exploded")
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_running_status_with_a_dead_pid_reads_as_failed_with_a_sentence(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (run_dir / "train.log").write_text("loading\nSegmentation fault\n")
    rundir.write_status(run_dir, state="running", pid=proc.pid)
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed"
    assert str(proc.pid) in status["error"] and "Segmentation fault" in status["error"]


def test_running_status_with_a_live_pid_stays_running(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    rundir.write_status(run_dir, state="running", pid=os.getpid(), pid_start=rundir.process_start_time(os.getpid()))
    assert rundir.read_status(run_dir)["state"] == "running"


def test_a_recycled_pid_is_not_mistaken_for_the_trainer(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    rundir.write_status(run_dir, state="running", pid=os.getpid(), pid_start=12345)
    if rundir.process_start_time(os.getpid()) is None:
        pytest.skip("no /proc on this system")
    assert rundir.read_status(run_dir)["state"] == "failed"


def test_starting_without_a_process_for_too_long_reads_as_failed(tmp_path, monkeypatch):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    assert rundir.read_status(run_dir)["state"] == "starting"
    monkeypatch.setattr(rundir, "STARTING_GRACE_S", -1.0)
    assert rundir.read_status(run_dir)["state"] == "failed"


def test_a_deleted_run_directory_reads_as_missing_with_a_sentence(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    import shutil
    shutil.rmtree(run_dir)
    status = rundir.read_status(run_dir)
    assert status["state"] == rundir.MISSING and "no longer exists" in status["error"]
    assert rundir.read_events(run_dir, 10) == ([], 10)
    assert rundir.last_checkpoint(run_dir) is None
    assert rundir.list_runs(tmp_path) == []


def test_events_are_tailed_from_an_offset(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    rundir.append_event(run_dir, {"type": "train", "step": 1, "loss": 2.0})
    events, offset = rundir.read_events(run_dir)
    assert [e["step"] for e in events] == [1] and "time" in events[0]
    rundir.append_event(run_dir, {"type": "train", "step": 2, "loss": 1.5})
    events, offset2 = rundir.read_events(run_dir, offset)
    assert [e["step"] for e in events] == [2] and offset2 > offset
    assert rundir.read_events(run_dir, offset2) == ([], offset2)


def test_a_half_written_last_line_waits_for_its_newline(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    rundir.append_event(run_dir, {"type": "train", "step": 1})
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write('{"step": 2, "lo')
    events, offset = rundir.read_events(run_dir)
    assert [e["step"] for e in events] == [1]
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write('ss": 1.0}\n')
    events, _ = rundir.read_events(run_dir, offset)
    assert events == [{"step": 2, "loss": 1.0}]


def test_malformed_event_lines_are_skipped_not_fatal(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    with open(run_dir / "events.jsonl", "wb") as fh:
        fh.write(b'{"step": 1}\nnot json at all\n\xff\xfe\n[1, 2]\n{"step": 2}\n')
    events, _ = rundir.read_events(run_dir)
    assert [e["step"] for e in events] == [1, 2]


def test_a_replaced_events_file_is_read_from_the_start(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    for i in range(5):
        rundir.append_event(run_dir, {"type": "train", "step": i})
    _, offset = rundir.read_events(run_dir)
    (run_dir / "events.jsonl").write_text('{"step": 9}\n')
    events, _ = rundir.read_events(run_dir, offset)
    assert [e["step"] for e in events] == [9]


def test_nan_losses_are_dropped_not_replaced(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    rundir.append_event(run_dir, {"type": "train", "step": 1, "loss": float("nan"), "grad_norm": float("inf")})
    line = (run_dir / "events.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    events, _ = rundir.read_events(run_dir)
    assert events[0]["loss"] is None and events[0]["grad_norm"] is None


def test_last_checkpoint_skips_checkpoints_cut_short(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    assert rundir.last_checkpoint(run_dir) is None
    for step, complete in ((2, True), (10, True), (12, False)):
        ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        if complete:
            from safetensors.numpy import save_file
            import numpy as np
            save_file({"w": np.zeros(2, dtype=np.float32)}, str(ckpt / "adapter_model.safetensors"))
            (ckpt / "trainer_state.json").write_text('{"global_step": %d}' % step)
    assert rundir.last_checkpoint(run_dir).name == "checkpoint-10"


def test_list_runs_reports_state_method_best_loss_and_duration(tmp_path):
    a = rundir.create_run(tmp_path, RunConfig(name="first"))
    time.sleep(1.05)
    b = rundir.create_run(tmp_path, RunConfig.model_validate({"name": "second", "method": {"name": "full"}}))
    rundir.write_status(a, state="completed", started="2024-01-01T00:00:00+00:00",
                      ended="2024-01-01T00:01:30+00:00", best_val_loss=0.5)
    rows = rundir.list_runs(tmp_path)
    assert [r["id"] for r in rows] == [b.name, a.name]
    first = rows[1]
    assert first["state"] == "completed" and first["method"] == "lora"
    assert first["best_val_loss"] == 0.5 and first["duration"] == pytest.approx(90.0)
    assert rows[0]["method"] == "full"


def test_list_runs_on_an_empty_or_absent_workspace(tmp_path):
    assert rundir.list_runs(tmp_path / "nowhere") == []
