"""The run lifecycle under the second round of faults (issue 23 items 3-9): a layout the machine cannot
start, a full disk while starting, training or queueing, a completed run asked to resume, a resumed
run's times, a SIGKILLed trainer whose status still says "running", and a trainer paused by SIGSTOP.

No torch here: stand-in trainers and hand-made run directories, each test a second or two."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.core import io as core_io
from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.runs import queue as run_queue
from backend.runs import rundir, runner
from tests.reliability.conftest import REPO, wait_until
from tests.reliability.test_run_files import make_checkpoint

pytestmark = pytest.mark.timeout(120)


def _data_file(tmp_path: Path) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n')
    return str(path)


def _cfg(tmp_path: Path, **dist) -> RunConfig:
    return RunConfig.model_validate({"name": "life", "data": {"path": _data_file(tmp_path)},
                                     "distributed": dist or {"gpus": 1}})


def _runs(workspace: Path) -> list[Path]:
    root = rundir.runs_root(workspace)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _disk_full(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- item 3: distributed.gpus against the GPUs present ---------------------------------------------

@pytest.mark.parametrize("gpus_present, layout, says", [
    (0, {"gpus": 3}, "this machine has no GPU"),
    (2, {"gpus": 3}, "this machine has 2 GPUs"),
    (0, {"gpus": 1, "nodes": 2}, "cluster bundle"),
])
def test_more_gpus_than_the_machine_has_is_refused_before_any_run_or_process(tmp_path, fake_trainer, monkeypatch,
                                                                             gpus_present, layout, says):
    monkeypatch.setattr(runner, "_gpu_count", lambda: gpus_present)
    monkeypatch.setattr(runner, "visible_indices", lambda: None)
    ws = tmp_path / "ws"
    with pytest.raises(UserError, match=says) as err:
        runner.start_run(ws, _cfg(tmp_path, **layout))
    assert "distributed" in str(err.value) or "machines" in str(err.value)
    assert _runs(ws) == [], "no run directory, so no trainer was started"


# ---- item 4: a full disk -------------------------------------------------------------------------

def test_the_final_status_is_written_on_a_full_disk_from_the_reserved_space(tmp_path, monkeypatch):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="full"))
    rundir.write_status(run_dir, state="running", pid=os.getpid())
    real = rundir.atomic_write_json
    reserve = run_dir / rundir.RESERVE_FILE
    assert reserve.is_file() and reserve.stat().st_size >= 4096, "space is held back when the run is created"

    def full_until_reserve_freed(path, data):
        if reserve.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(rundir, "atomic_write_json", full_until_reserve_freed)
    rundir.write_status(run_dir, state="failed", error="The disk is full: ...")
    assert rundir.read_raw_status(run_dir)["state"] == "failed"
    assert not reserve.exists()


DYING_TRAINER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    # What a trainer on a full disk leaves: a traceback in train.log, and status.json still "running".
    from pathlib import Path
    from backend.runs import rundir
    rundir.write_status(Path(sys.argv[1]), state="running")
    print("Traceback (most recent call last):")
    print('  File "/x/trl/trainer/sft_trainer.py", line 1, in save')
    print("OSError: [Errno 28] No space left on device")
    sys.exit(1)
""")


def test_a_trainer_that_died_of_a_full_disk_is_recorded_as_such_by_the_runner(tmp_path, monkeypatch):
    script = tmp_path / "dying.py"
    script.write_text(DYING_TRAINER.format(repo=str(REPO)))
    monkeypatch.setattr(runner, "_launch_command", lambda run_dir, cfg, resume: [sys.executable, str(script),
                                                                                 str(run_dir)])
    run_dir = runner.start_run(tmp_path / "ws", _cfg(tmp_path))
    # Nobody reads the status: the runner's own reaper writes the ending down.
    raw = wait_until(lambda: (s := rundir.read_raw_status(run_dir))["state"] == "failed" and s, 30)
    assert raw["error"].startswith("The disk is full") and "Free some space" in raw["error"]
    assert raw["inferred"] is True and "ended" in raw


def test_a_checkpoint_is_refused_before_it_starts_when_the_disk_lacks_the_space(tmp_path, monkeypatch):
    from backend.training.callbacks import DiskSpaceCallback

    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="space"))
    make_checkpoint(run_dir, 2)
    monkeypatch.setattr(core_io, "free_bytes", lambda folder: 10_000)
    cb = DiskSpaceCallback(run_dir, model=None)
    state = SimpleNamespace(global_step=4, is_world_process_zero=True)
    with pytest.raises(UserError, match="Not enough disk space .* checkpoint-4"):
        cb.on_step_end(None, state, SimpleNamespace(should_save=True))
    assert cb.on_step_end(None, state, SimpleNamespace(should_save=False)).should_save is False
    assert not (rundir.checkpoints_dir(run_dir) / "checkpoint-4").exists()


# ---- item 5: the queue on a full disk --------------------------------------------------------------

def test_a_queue_entry_that_cannot_start_fails_once_and_pauses_the_queue(tmp_path, fake_trainer, monkeypatch):
    ws = tmp_path / "ws"
    first = run_queue.add_to_queue(ws, _cfg(tmp_path), label="first")
    second = run_queue.add_to_queue(ws, _cfg(tmp_path), label="second")
    real_write = run_queue.atomic_write_json
    reserve = ws / run_queue.QUEUE_RESERVE

    def queue_full(path, data):
        if reserve.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    # The disk is full: the run's config cannot be written, nor (until its reserve is freed) the queue.
    monkeypatch.setattr(rundir, "save_config", _disk_full)
    monkeypatch.setattr(run_queue, "atomic_write_json", queue_full)
    events = run_queue.queue_step(ws)
    kinds = [e["kind"] for e in events]
    assert kinds == ["run_end", "queue_paused"], events
    assert "disk is full" in events[0]["error"]
    entries = {e["id"]: e for e in run_queue.read_queue(ws)["entries"]}
    assert entries[first["id"]]["state"] == "failed" and "disk is full" in entries[first["id"]]["error"]
    assert entries[second["id"]]["state"] == "queued", "the next entry waits; it is not failed the same way"
    paused = run_queue.queue_paused(ws)
    assert paused and "paused" in paused and '"first"' in paused and "1 entry still wait" in paused
    assert _runs(ws) == [], "a start that failed leaves no empty run directory"

    for _ in range(5):  # no retry loop: later looks start nothing and fail nothing
        assert run_queue.queue_step(ws) == []
    assert _runs(ws) == []

    monkeypatch.undo()
    monkeypatch.setattr(runner, "_launch_command", lambda run_dir, cfg, resume: [
        sys.executable, "-c", "import time; time.sleep(30)"])
    from studio.tabs import train_queue
    train_queue.edit_queue(ws, "resume", None)  # space freed, the user presses "Resume the queue"
    assert run_queue.queue_paused(ws) is None
    events = run_queue.queue_step(ws)
    assert [e["kind"] for e in events] == ["run_start"] and events[0]["entry"] == second["id"]
    runner.stop_run(Path(events[0]["run_dir"]), timeout=0.5)


def test_the_queue_worker_backs_off_instead_of_looping_when_a_look_fails(tmp_path, monkeypatch):
    calls: list[float] = []

    def failing(ws):
        calls.append(time.monotonic())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_queue, "queue_step", failing)
    worker = run_queue.QueueWorker(tmp_path, poll=0.05).start()
    time.sleep(1.2)
    worker.stop()
    # 0.1, 0.2, 0.4, 0.8 s apart: about five looks in 1.2 s, where a fixed 0.05 s poll would make 24.
    assert 2 <= len(calls) <= 6, len(calls)
    assert worker.error and "No space left" in worker.error


# ---- items 6 and 7: resume ------------------------------------------------------------------------

def test_a_completed_run_is_not_resumed_and_train_more_is_offered(tmp_path, fake_trainer):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="done"))
    make_checkpoint(run_dir, 4)
    rundir.write_status(run_dir, state="completed", step=4, total_steps=4, ended=rundir.now_iso())
    with pytest.raises(UserError, match="completed all its steps") as err:
        runner.resume_run(run_dir)
    assert "new run from its adapter" in str(err.value)
    assert rundir.read_raw_status(run_dir)["state"] == "completed", "the run stays as it is"


def test_resume_keeps_the_creation_time_and_records_each_leg(tmp_path, fake_trainer, monkeypatch):
    ws = tmp_path / "ws"
    run_dir = runner.start_run(ws, _cfg(tmp_path))
    wait_until(lambda: rundir.read_raw_status(run_dir)["state"] == "running", 30)
    first = rundir.read_raw_status(run_dir)
    time.sleep(1.1)
    assert runner.stop_run(run_dir, timeout=20)["state"] == "stopped"
    make_checkpoint(run_dir, 2)
    time.sleep(1.1)  # a gap between the legs, which is not training time

    runner.resume_run(run_dir)
    wait_until(lambda: rundir.read_raw_status(run_dir)["state"] == "running", 30)
    time.sleep(1.1)
    assert runner.stop_run(run_dir, timeout=20)["state"] == "stopped"
    status = rundir.read_raw_status(run_dir)
    assert status["created"] == first["created"] and status["started"] == first["started"]
    legs = status["legs"]
    assert len(legs) == 2 and all(leg["state"] == "stopped" for leg in legs)
    total, this_leg = rundir.run_times(status)
    assert this_leg == pytest.approx(rundir.leg_seconds(legs[1]))
    assert total == pytest.approx(rundir.leg_seconds(legs[0]) + rundir.leg_seconds(legs[1]))
    assert total >= 2 and this_leg < total
    row = rundir.run_summary(run_dir)
    assert row["duration"] == pytest.approx(total) and row["legs"] == 2

    from studio.plots import RunSeries
    from studio.tabs import train as tab
    shown = tab.stats_markdown(RunSeries(), status, None)
    assert f"elapsed **{tab.fmt_duration(total)}** (this leg **{tab.fmt_duration(this_leg)}**, 2 legs)" in shown


def test_a_trainer_that_ends_the_moment_it_is_asked_leaves_one_leg(tmp_path, fake_trainer, monkeypatch):
    # The race a loaded CI machine hit: the trainer saw the stop request and wrote "stopped" before the
    # stopper wrote "stopping", which reopened the leg and recorded it twice (the second from the first start).
    run_dir = runner.start_run(tmp_path / "ws", _cfg(tmp_path))
    wait_until(lambda: rundir.read_raw_status(run_dir)["state"] == "running", 30)
    asked = rundir.request_stop

    def trainer_wins(path):
        asked(path)
        rundir.write_status(path, state="stopped", ended=rundir.now_iso())

    monkeypatch.setattr(rundir, "request_stop", trainer_wins)
    assert runner.stop_run(run_dir, timeout=20)["state"] == "stopped"
    wait_until(lambda: not rundir.pid_alive(rundir.read_raw_status(run_dir)["pid"]), 10)
    legs = rundir.read_raw_status(run_dir)["legs"]
    assert len(legs) == 1 and legs[0]["state"] == "stopped"


# ---- item 8: a SIGKILLed trainer's state is written back ---------------------------------------------

def test_after_sigkill_the_inferred_failed_state_is_written_back_once(tmp_path, fake_trainer, monkeypatch):
    # The reaper is the runner's; a studio restarted later has none, so it is switched off here.
    monkeypatch.setattr(runner, "_reap", lambda proc, run_dir: proc.wait())
    run_dir = runner.start_run(tmp_path / "ws", _cfg(tmp_path))
    wait_until(lambda: rundir.read_raw_status(run_dir)["state"] == "running", 30)
    pgid = rundir.read_raw_status(run_dir)["pgid"]
    os.killpg(pgid, signal.SIGKILL)
    wait_until(lambda: not rundir.pid_alive(rundir.read_raw_status(run_dir)["pid"]), 10)
    assert rundir.read_raw_status(run_dir)["state"] == "running", "nobody has looked yet"

    status = rundir.read_status(run_dir)
    raw = rundir.read_raw_status(run_dir)
    assert status["state"] == raw["state"] == "failed" and raw["inferred"] is True
    assert raw["error"] == status["error"] and "killed or crashed" in raw["error"]
    written = (run_dir / rundir.STATUS_FILE).stat().st_mtime_ns
    time.sleep(0.05)
    for _ in range(3):
        assert rundir.read_status(run_dir)["state"] == "failed"
    assert (run_dir / rundir.STATUS_FILE).stat().st_mtime_ns == written, "written back once, not per read"
    assert len(raw["legs"]) == 1


# ---- item 9: a heartbeat, and "no progress" ---------------------------------------------------------

def test_a_paused_trainer_is_flagged_with_no_progress_and_its_step_time(tmp_path):
    from backend.training.callbacks import HeartbeatCallback

    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="beat"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rundir.write_status(run_dir, state="running", pid=sleeper.pid,
                            pid_start=rundir.process_start_time(sleeper.pid))
        assert rundir.stall(run_dir) is None, "no heartbeat yet: still loading, nothing to compare with"
        beat = HeartbeatCallback(run_dir)
        state = SimpleNamespace(global_step=7, is_world_process_zero=True)
        beat.on_step_begin(None, state, None)
        time.sleep(0.05)
        beat.on_step_end(None, state, None)
        heartbeat = rundir.read_heartbeat(run_dir)
        assert heartbeat["step"] == 7 and heartbeat["step_time"] >= 0.05
        assert rundir.stall(run_dir) is None, "a fresh heartbeat is progress"

        os.kill(sleeper.pid, signal.SIGSTOP)  # alive, but making no progress
        later = heartbeat["time"] + 75
        stalled = rundir.stall(run_dir, now=later)
        assert stalled is not None and stalled["seconds"] == pytest.approx(75)
        assert stalled["message"].startswith("No progress for 75 s (step time ~")
        assert "at step 7" in stalled["message"]

        # A slow run is not a stalled one: the threshold follows its step time.
        rundir.write_heartbeat(run_dir, 8, 40.0)
        assert rundir.stall(run_dir, now=time.time() + 150) is None
        assert rundir.stall(run_dir, now=time.time() + 250) is not None

        from studio.tabs import train as tab
        status = rundir.read_status(run_dir)
        (run_dir / rundir.HEARTBEAT_FILE).write_text(
            '{"step": 8, "time": %f, "step_time": 1.0}' % (time.time() - 120))
        assert "No progress for 2 min (step time ~1.0 s)" in tab.state_sentence(run_dir.name, status, run_dir)
    finally:
        os.kill(sleeper.pid, signal.SIGCONT)
        sleeper.kill()
        sleeper.wait()
