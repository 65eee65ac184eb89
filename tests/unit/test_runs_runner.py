"""The runner's process handling with stand-in trainer processes (no torch): one training per device,
stop escalation without orphans, re-attach from a fresh call, kill from outside."""
from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backend.core.paths import PROJECT_ROOT
from backend.runs import runner
from backend.runs import rundir
from backend.core.config import RunConfig
from backend.core.errors import UserError

# A stand-in trainer: marks itself running, spawns a grandchild in its group, then either honours the
# stop request file (graceful) or ignores it and SIGTERM (stubborn).
FAKE_TRAINER = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from backend.runs import rundir
    run_dir = Path(sys.argv[1]); mode = {mode!r}
    rundir.write_status(run_dir, state="running")
    child = subprocess.Popen(["sleep", "600"])
    (run_dir / "child.pid").write_text(str(child.pid))
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        if mode == "graceful" and rundir.stop_requested(run_dir):
            rundir.write_status(run_dir, state="stopped", ended=rundir.now_iso())
            child.terminate(); child.wait()
            sys.exit(0)
        time.sleep(0.05)
""")


@pytest.fixture()
def fake_trainer(monkeypatch, tmp_path):
    def use(mode: str):
        script = tmp_path / f"fake_{mode}.py"
        script.write_text(FAKE_TRAINER.format(repo=str(PROJECT_ROOT), mode=mode))
        monkeypatch.setattr(runner, "_launch_command",
                            lambda run_dir, cfg, resume: [sys.executable, str(script), str(run_dir)])
    return use


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    return rundir.pid_alive(pid)


def _start(workspace, fake_trainer, mode):
    fake_trainer(mode)
    run_dir = runner.start_run(workspace, RunConfig(name=mode))
    assert _wait_for(lambda: (run_dir / "child.pid").exists() and rundir.read_status(run_dir)["state"] == "running")
    return run_dir


def test_graceful_stop_uses_the_stop_request_and_leaves_no_process(tmp_path, fake_trainer):
    run_dir = _start(tmp_path, fake_trainer, "graceful")
    pid = rundir.read_status(run_dir)["pid"]
    child = int((run_dir / "child.pid").read_text())
    status = runner.stop_run(run_dir, timeout=10)
    assert status["state"] == "stopped" and "error" not in status
    assert not _alive(pid) and not _alive(child)


def test_forced_stop_kills_the_whole_process_group(tmp_path, fake_trainer, monkeypatch):
    monkeypatch.setattr(runner, "KILL_GRACE_S", 1.0)
    run_dir = _start(tmp_path, fake_trainer, "stubborn")
    pid = rundir.read_status(run_dir)["pid"]
    child = int((run_dir / "child.pid").read_text())
    status = runner.stop_run(run_dir, timeout=0.5)
    assert status["state"] == "stopped"
    assert "killed" in status["error"] and "No checkpoint" in status["error"]
    assert _wait_for(lambda: not _alive(pid) and not _alive(child), 5)


def test_a_second_start_on_the_same_device_is_refused_naming_the_running_run(tmp_path, fake_trainer):
    run_dir = _start(tmp_path, fake_trainer, "graceful")
    try:
        with pytest.raises(UserError, match=run_dir.name):
            runner.start_run(tmp_path, RunConfig(name="second"))
        assert len(rundir.list_runs(tmp_path)) == 1
    finally:
        runner.stop_run(run_dir, timeout=10)


def test_concurrent_starts_cannot_both_win(tmp_path, fake_trainer):
    fake_trainer("graceful")
    results: list = []
    barrier = threading.Barrier(2)

    def go(i):
        barrier.wait()
        try:
            results.append(runner.start_run(tmp_path, RunConfig(name=f"c{i}")))
        except UserError as e:
            results.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    started = [r for r in results if isinstance(r, Path)]
    assert len(started) == 1 and sum(isinstance(r, UserError) for r in results) == 1
    runner.stop_run(started[0], timeout=10)


def test_a_fresh_runner_call_finds_the_running_run_and_can_stop_it(tmp_path, fake_trainer):
    run_dir = _start(tmp_path, fake_trainer, "graceful")
    # "UI restart": nothing is kept in memory; the workspace alone is enough.
    active = runner.find_active_runs(tmp_path)
    assert [a["id"] for a in active] == [run_dir.name] and active[0]["state"] == "running"
    assert runner.stop_run(Path(active[0]["dir"]), timeout=10)["state"] == "stopped"
    assert runner.find_active_runs(tmp_path) == []


def test_a_trainer_killed_from_outside_reads_as_failed(tmp_path, fake_trainer):
    run_dir = _start(tmp_path, fake_trainer, "stubborn")
    status = rundir.read_status(run_dir)
    os.killpg(status["pgid"], signal.SIGKILL)
    assert _wait_for(lambda: rundir.read_status(run_dir)["state"] == "failed", 10)
    assert "killed or crashed" in rundir.read_status(run_dir)["error"]
    assert runner.find_active_runs(tmp_path) == []


def test_resume_needs_a_finished_run_with_a_complete_checkpoint(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    rundir.write_status(run_dir, state="running", pid=os.getpid())
    with pytest.raises(UserError, match="stop it"):
        runner.resume_run(run_dir)
    rundir.write_status(run_dir, state="failed")
    with pytest.raises(UserError, match="no complete checkpoint"):
        runner.resume_run(run_dir)


def test_stop_on_a_finished_run_changes_nothing(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig())
    rundir.write_status(run_dir, state="completed")
    assert runner.stop_run(run_dir)["state"] == "completed"
    assert not rundir.stop_requested(run_dir)


def test_more_than_one_gpu_launches_through_accelerate(tmp_path):
    cfg = RunConfig.model_validate({"distributed": {"gpus": 4, "strategy": "zero3"}})
    cmd = runner._launch_command(tmp_path, cfg, resume=True)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and "--use_deepspeed" in cmd
    assert cmd[-4:] == ["-m", "backend.training.run", str(tmp_path), "--resume"]
    assert runner._launch_command(tmp_path, RunConfig(), resume=False)[1:] == ["-m", "backend.training.run", str(tmp_path)]


def test_on_two_gpus_the_queue_runs_two_trainings_side_by_side_each_on_its_own_gpu(tmp_path, fake_trainer,
                                                                                     monkeypatch):
    from backend.runs import queue as q

    monkeypatch.setattr(runner, "_gpu_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_trainer("graceful")
    real_spawn = runner._spawn

    def spawn(run_dir, cmd, devices=None):  # record what each trainer would see
        proc = real_spawn(run_dir, cmd, devices)
        (run_dir / "visible.txt").write_text(",".join(d.split(":")[1] for d in devices if d.startswith("cuda")))
        return proc

    monkeypatch.setattr(runner, "_spawn", spawn)
    ws = tmp_path / "ws"
    for name in ("first", "second", "third"):
        q.add_to_queue(ws, RunConfig(name=name))
    started = [e for e in q.queue_step(ws) if e["kind"] == "run_start"]
    try:
        assert [e["label"] for e in started] == ["first", "second"]
        dirs = [Path(e["run_dir"]) for e in started]
        assert [(d / "visible.txt").read_text() for d in dirs] == ["0", "1"]
        assert [rundir.read_status(d)["devices"] for d in dirs] == [["cuda:0"], ["cuda:1"]]
        assert [e["state"] for e in q.read_queue(ws)["entries"]] == ["running", "running", "queued"]
        # A hand-started run finds no free GPU and names the run that holds the first one.
        with pytest.raises(UserError, match=dirs[0].name):
            runner.start_run(ws, RunConfig(name="by-hand"))
        runner.stop_run(dirs[1], timeout=10)
        third = [e for e in q.queue_step(ws) if e["kind"] == "run_start"]
        assert [e["label"] for e in third] == ["third"]
        assert rundir.read_status(Path(third[0]["run_dir"]))["devices"] == ["cuda:1"]
        dirs.append(Path(third[0]["run_dir"]))
    finally:
        for d in rundir.list_runs(ws):
            if d["state"] in rundir.ACTIVE_STATES:
                runner.stop_run(Path(d["dir"]), timeout=10)


def test_the_studios_own_cuda_visible_devices_limit_the_gpus_runs_get(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_gpu_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert runner.pick_devices(tmp_path, RunConfig()) == ["cuda:2"]
    assert runner.pick_devices(tmp_path, RunConfig.model_validate({"distributed": {"gpus": 2}})) == ["cuda:2", "cuda:3"]
    monkeypatch.setattr(runner, "_gpu_count", lambda: 0)  # no driver: the variable alone makes no GPU
    assert runner.pick_devices(tmp_path, RunConfig()) == ["cpu"]


def test_memory_readings_follow_the_gpu_a_restricted_run_sees(monkeypatch):
    from backend.training.callbacks import nvml_index

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert nvml_index(0) == 3 and nvml_index(1) == 5
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_index(1) == 1
