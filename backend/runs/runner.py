"""The training subprocess's lifecycle: start, stop, resume, and find running runs again after a UI restart.

The UI holds no training state: everything here is derived from the run directory and the
process table, so a fresh process (a restarted studio, the CLI) sees exactly what the old one did.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from backend.core.config import RunConfig, absolute_paths, load_config
from backend.core.errors import UserError
from backend.core.gpu import list_gpus, visible_indices
from backend.core.locks import file_lock
from backend.core.paths import PROJECT_ROOT
from backend.runs import events as ev, rundir

KILL_GRACE_S = 5.0


def _gpu_count() -> int:
    try:
        return len(list_gpus())
    except Exception:  # noqa: BLE001 - a broken driver means "no usable GPU", not a crash
        return 0


class DevicesBusy(UserError):
    """Every device a run would need is taken by a run that is still going."""


def _candidate_gpus() -> list[int]:
    """GPU indices (NVML order) this studio may use: CUDA_VISIBLE_DEVICES when it was set for the studio."""
    count = _gpu_count()
    if count == 0:
        return []

    return visible_indices() or list(range(count))


def _held_devices(workspace: Path, gpus: list[int], exclude: Optional[Path] = None) -> dict[str, str]:
    """device -> id of the active run holding it. A run that recorded no devices holds them all."""
    every = ["cpu"] + [f"cuda:{i}" for i in gpus]
    held: dict[str, str] = {}
    for row in find_active_runs(workspace):
        if exclude is not None and Path(row["dir"]) == Path(exclude):
            continue
        for device in rundir.read_status(Path(row["dir"])).get("devices") or every:
            held.setdefault(device, row["id"])
    return held


def pick_devices(workspace: Path, cfg: RunConfig, exclude: Optional[Path] = None) -> list[str]:
    """The devices a new run gets: the lowest-numbered free GPUs, so runs on a multi-GPU machine
    train side by side, one per GPU (or per group of `distributed.gpus`). Without a GPU the whole
    machine is one device. When too few are free, the first ones, which the busy check then names."""
    return _plan(workspace, cfg, exclude)[0]


def _plan(workspace: Path, cfg: RunConfig, exclude: Optional[Path] = None) -> tuple[list[str], dict[str, str]]:
    """(the devices pick_devices gives, device -> run holding it), from one look at the active runs."""
    gpus = _candidate_gpus()
    held = _held_devices(workspace, gpus, exclude)
    if not gpus:
        return ["cpu"], held
    need = cfg.distributed.gpus
    free = [i for i in gpus if f"cuda:{i}" not in held]
    chosen = free[:need] if len(free) >= need else gpus[:need]
    return [f"cuda:{i}" for i in chosen], held


def devices_free(workspace: Path, cfg: RunConfig) -> bool:
    """Whether a run of cfg could start now without waiting for another to end (a look without the
    start lock: start_run checks again under it)."""
    devices, held = _plan(workspace, cfg)
    return not any(d in held for d in devices)


def _start_lock(workspace: Path) -> contextlib.AbstractContextManager[None]:
    # Held across "check who trains, create, spawn, record pid": two concurrent starts cannot both win.
    return file_lock(rundir.runs_root(workspace) / ".start.lock", make_parents=True)


def find_active_runs(workspace: Path) -> list[dict[str, Any]]:
    """Runs whose process is alive (starting, running or stopping), newest first."""
    return [r for r in rundir.list_runs(workspace) if r["state"] in rundir.ACTIVE_STATES]


def _claim_devices(workspace: Path, cfg: RunConfig, exclude: Optional[Path] = None) -> list[str]:
    """The devices for a run starting now (called under the start lock); DevicesBusy naming the run that
    holds them when too few are free."""
    devices, held = _plan(workspace, cfg, exclude)
    busy = [d for d in devices if d in held]
    if busy:
        owner = held[busy[0]]
        raise DevicesBusy(
            f"Run {owner} is already training on {', '.join(busy)}; only one training per device at a "
            f"time. Stop it in the Train tab (or wait for it to finish), then start again.")
    return devices


def _launch_command(run_dir: Path, cfg: RunConfig, resume: bool) -> list[str]:
    entry = ["-m", "backend.training.run", str(run_dir)] + (["--resume"] if resume else [])
    if cfg.distributed.gpus > 1 or cfg.distributed.nodes > 1:
        # accelerate starts one process per GPU and sets up DDP/DeepSpeed/FSDP; we do not launch ranks ourselves.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
               str(cfg.distributed.gpus * cfg.distributed.nodes), "--num_machines", str(cfg.distributed.nodes)]
        strategy = cfg.distributed.strategy
        if strategy.startswith("zero"):
            cmd += ["--use_deepspeed", "--zero_stage", strategy[-1]]
        elif strategy == "fsdp":
            cmd += ["--use_fsdp"]
        else:
            cmd += ["--multi_gpu"]
        return cmd + entry
    return [sys.executable] + entry


def _spawn(run_dir: Path, cmd: list[str], devices: Optional[list[str]] = None) -> subprocess.Popen:
    env = dict(os.environ)
    gpus = [d.split(":", 1)[1] for d in devices or [] if d.startswith("cuda:")]
    if gpus:
        # The run sees only its own GPUs; PCI order makes CUDA's numbering match NVML's, which picked them.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["PYTHONUNBUFFERED"] = "1"
    # The trainer must import this checkout even when the package is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    with open(run_dir / rundir.LOG_FILE, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(PROJECT_ROOT), env=env, start_new_session=True, close_fds=True)
    # Reap the child when it exits so it never lingers as a zombie that looks alive, then record how it
    # ended if it could not (killed, or the disk it writes to is full): read_status writes that back once.
    threading.Thread(target=_reap, args=(proc, run_dir), daemon=True, name=f"reap-{proc.pid}").start()
    return proc


def _reap(proc: subprocess.Popen, run_dir: Path) -> None:
    proc.wait()
    with contextlib.suppress(Exception):  # a daemon thread has no one to report to
        rundir.read_status(run_dir)


def _launch(run_dir: Path, cfg: RunConfig, devices: list[str], resume: bool) -> None:
    cmd = _launch_command(run_dir, cfg, resume)
    proc = _spawn(run_dir, cmd, devices)
    fields: dict[str, Any] = dict(pid=proc.pid, pgid=proc.pid, pid_start=rundir.process_start_time(proc.pid),
                                  devices=devices, command=cmd)
    if not resume:  # a resume keeps the first start; its own leg began in resume_run
        now = rundir.now_iso()
        fields.update(started=now, leg_started=now)
    rundir.write_status(run_dir, **fields)


def launch_problem(cfg: RunConfig, gpu_count: Optional[int] = None) -> Optional[str]:
    """Why this machine cannot start cfg's process layout, or None. Checked before any run directory
    or process exists, so `gpus: 3` on a CPU-only machine is a sentence, not three trainers."""
    d = cfg.distributed
    if d.nodes > 1:
        return (f"This config trains on {d.nodes} machines (distributed.nodes); the studio starts runs on this "
                "machine only. Make a cluster bundle (Method tab, or `ftstudio launch_bundle`) and start it on "
                "each node, or set distributed.nodes to 1.")
    if d.gpus <= 1:
        return None
    have = len(_candidate_gpus()) if gpu_count is None else gpu_count
    if d.gpus > have:
        found = "no GPU" if have == 0 else f"{have} GPU{'s' if have != 1 else ''}"
        return (f"distributed.gpus is {d.gpus}, but this machine has {found} for the studio to use. Set "
                f"distributed.gpus to {max(1, have)}{' (training on the CPU)' if have == 0 else ' or less'}, or "
                "make a cluster bundle for machines that have them.")
    return None


def preflight(cfg: RunConfig) -> None:
    """The checks of a start that need no model: this machine's GPUs and the data files (UserError).
    They run before a run directory or a process exists."""
    problem = launch_problem(cfg)
    if problem:
        raise UserError(problem)
    check_data_paths(cfg)
    if cfg.init_adapter and not Path(cfg.init_adapter).is_dir():
        raise UserError(f"init_adapter: the adapter folder {cfg.init_adapter} to train more from no longer exists.")


def check_data_paths(cfg: RunConfig) -> None:
    """UserError unless each data path of cfg names a regular file that can be read (not a folder, a
    device such as /dev/zero, a pipe, or a missing file): found before the run, not after the model load."""
    import stat as stat_mod

    for field in ("path", "validation_path"):
        value = getattr(cfg.data, field)
        if not value or str(value).startswith("hf://"):
            continue  # a hub dataset id: read (or refused with a sentence) by backend.data.sources
        p = Path(value).expanduser()
        if not p.is_absolute() and not p.exists() and (PROJECT_ROOT / p).exists():
            p = PROJECT_ROOT / p  # the trainer runs in the project folder: the bundled samples' relative paths
        label = f"data.{field}"
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            raise UserError(f"{label}: the dataset file {p} does not exist. Check the path, or upload the file "
                            "again.") from None
        except OSError as e:
            raise UserError(f"{label}: the dataset file {p} cannot be read ({e.strerror}).") from None
        if stat_mod.S_ISDIR(mode):
            from backend.data.sources import folder_files, is_saved_dataset

            if not is_saved_dataset(p):
                try:
                    folder_files(p)  # a folder of data files trains as one dataset
                except UserError as e:
                    raise UserError(f"{label}: {p} is a folder, and it cannot be read as a dataset: {e}") from None
            continue
        if not stat_mod.S_ISREG(mode):
            raise UserError(f"{label}: {p} is not a regular file (it is a device, a pipe or a socket); choose "
                            "a data file saved on disk.")
        if not os.access(p, os.R_OK):
            raise UserError(f"{label}: the dataset file {p} cannot be read (permission denied).")
        if p.stat().st_size == 0:
            raise UserError(f"{label}: the dataset file {p} is empty (0 bytes). Choose a file that holds rows "
                            "of data.")


def start_run(workspace: Path, cfg: RunConfig) -> Path:
    """Create the run directory and launch `python -m backend.training.run RUN_DIR`; returns the run directory."""
    workspace = Path(workspace).resolve()
    cfg = absolute_paths(cfg)  # a no-op for a queued config, whose paths were fixed when it was queued
    preflight(cfg)
    with _start_lock(workspace):
        devices = _claim_devices(workspace, cfg)
        run_dir = rundir.create_run(workspace, cfg)
        try:
            rundir.write_status(run_dir, devices=devices)
            _launch(run_dir, cfg, devices, resume=False)
        except OSError as e:
            try:
                rundir.write_status(run_dir, state="failed", ended=rundir.now_iso(),
                                    error=f"The training process could not be started: {e}.")
            except OSError:
                # Not even the status can be written (a full disk): no process ran, so no run is left.
                import shutil
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    return run_dir


def resume_run(run_dir: Path) -> Path:
    """Continue a stopped or failed run from its last checkpoint, in the same directory."""
    run_dir = Path(run_dir).resolve()
    status = rundir.read_status(run_dir)
    if status["state"] == rundir.MISSING:
        raise UserError(status["error"])
    if status["state"] in rundir.ACTIVE_STATES:
        raise UserError(f"Run {run_dir.name} is still {status['state']}; stop it before resuming.")
    if status["state"] == "completed":
        raise UserError(
            f"Run {run_dir.name} completed all its steps, so there is nothing to resume. To train it further, "
            f"start a new run from its adapter: `ftstudio train --more {run_dir} --steps N` (or the Train tab's "
            "\"Train more\"); this run stays as it is.")
    checkpoint, bad = rundir.checkpoint_report(run_dir)
    bad_text = "; ".join(f"{p.name} is damaged ({why})" for p, why in bad)
    if checkpoint is None:
        extra = f" ({bad_text})" if bad else ""
        raise UserError(f"Run {run_dir.name} has no complete checkpoint to resume from{extra}; start it again instead.")
    fallback = (f"{bad_text}: resuming from the previous checkpoint, {checkpoint.name}." if bad else None)
    cfg = load_config(run_dir / rundir.CONFIG_FILE)
    workspace = run_dir.parent.parent
    with _start_lock(workspace):
        devices = _claim_devices(workspace, cfg, exclude=run_dir)
        rundir.clear_stop_request(run_dir)
        rundir.write_status(run_dir, state="starting", error=None, ended=None, early_stopped=None,
                          resume_from=str(checkpoint), resume_count=int(status.get("resume_count") or 0) + 1,
                          leg_started=rundir.now_iso(), resumed=rundir.now_iso(), pid=None, pid_start=None,
                          inferred=None, resume_note=fallback, note=fallback)
        if fallback:
            rundir.append_event(run_dir, {"type": ev.RESUME_FALLBACK, "checkpoint": str(checkpoint),
                                        "skipped": [{"path": str(p), "problem": why} for p, why in bad],
                                        "message": fallback})
        _launch(run_dir, cfg, devices, resume=True)
    return run_dir


def train_more_config(run_dir: Path, steps: int) -> RunConfig:
    """The config of a new run that trains a completed run's adapter `steps` steps further: its own
    config, starting from its saved adapter (a full-style run: from its saved model). The finished run
    is left as it is; the new run has its own directory, curve and checkpoints."""
    from backend.core import catalog

    run_dir = Path(run_dir).resolve()
    status = rundir.read_status(run_dir)
    if status["state"] == rundir.MISSING:
        raise UserError(status["error"])
    adapter = rundir.adapter_dir(run_dir)
    if not (adapter / "adapter_model.safetensors").is_file() and not (adapter / "config.json").is_file():
        raise UserError(f"Run {run_dir.name} has no saved adapter to train more from ({status['state']}); resume "
                        "it instead, or start it again.")
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"Train more needs a number of steps of at least 1 (got {steps!r}).")
    cfg = load_config(run_dir / rundir.CONFIG_FILE)
    info = catalog.METHODS[cfg.method.name]
    update: dict[str, Any] = {"name": f"{(cfg.name or run_dir.name)[:70]} more"}
    if info.uses_peft:
        update["init_adapter"] = str(adapter)
    elif (adapter / "config.json").is_file() and not info.bottleneck:
        update["model"] = str(adapter)  # full-style: the saved folder is the whole trained model
    else:
        raise UserError(f"Run {run_dir.name} used {cfg.method.name}, whose adapters cannot be trained further "
                        "by the studio yet; start a new run instead.")
    train = cfg.train.model_copy(update={"max_steps": steps})
    return cfg.model_copy(update={**update, "train": train})


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies; count only members that still run.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2:].split()
        if len(rest) > 2 and rest[2] == str(pgid) and rest[0] != "Z":
            return True
    return False


def _wait(predicate, timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# A graceful stop waits for the step under way, then the checkpoint and adapter saves: the wait follows
# the measured step time (heartbeat.json), never less than STOP_GRACE_MIN_S.
STOP_GRACE_MIN_S = 30.0
STOP_GRACE_STEPS = 2.5
STOP_SAVE_S = 30.0


def stop_grace(run_dir: Path) -> float:
    """Seconds a graceful stop waits before it terminates the trainer: 2.5 steps and a save at the pace
    the run has measured, at least STOP_GRACE_MIN_S (a 35-s step gets ~2 minutes, not 30 s)."""
    beat = rundir.read_heartbeat(run_dir) or {}
    step = beat.get("step_time") if isinstance(beat.get("step_time"), (int, float)) else 0.0
    return max(STOP_GRACE_MIN_S, STOP_GRACE_STEPS * step + STOP_SAVE_S)


def stop_in_background(run_dir: Path) -> float:
    """Ask for a graceful stop and return at once (the studio's Stop); a daemon thread escalates after the
    grace. Returns the grace in seconds; the status carries `stop_deadline` for the remaining wait."""
    grace = stop_grace(run_dir)
    status = rundir.read_status(run_dir)
    if status["state"] not in rundir.ACTIVE_STATES:
        return grace
    rundir.request_stop(run_dir)
    rundir.write_status(run_dir, state="stopping", stop_requested=rundir.now_iso(), stop_grace_s=round(grace, 1),
                        stop_deadline=_iso_in(grace))
    threading.Thread(target=stop_run, args=(run_dir, grace), daemon=True, name=f"stop-{run_dir.name}").start()
    return grace


def stop_now(run_dir: Path) -> dict[str, Any]:
    """"Stop now": terminate at once without waiting for the step; the last checkpoint is kept."""
    return stop_run(run_dir, timeout=0.0, now=True)


def _iso_in(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(timespec="seconds")


def stop_run(run_dir: Path, timeout: Optional[float] = None, now: bool = False) -> dict[str, Any]:
    """Ask the trainer to stop (it finishes its step, then saves a checkpoint and the adapter); after
    `timeout` seconds (default: stop_grace, from the measured step time) terminate, then kill, its whole
    process group. Returns the final status."""
    run_dir = Path(run_dir)
    status = rundir.read_status(run_dir)
    if status["state"] not in rundir.ACTIVE_STATES:
        return status
    if timeout is None:
        timeout = stop_grace(run_dir)
    pid, pgid = status.get("pid"), status.get("pgid") or status.get("pid")
    fields: dict[str, Any] = {"state": "stopping", "stop_deadline": _iso_in(timeout), "stop_grace_s": round(timeout, 1)}
    if status.get("state") != "stopping":
        fields["stop_requested"] = rundir.now_iso()
    if now:
        fields["stop_now"] = True
    # "stopping" goes in before the request, and only over an active state: a trainer that sees the
    # request can write its own "stopped" at once, and that ending must stay the last word.
    if rundir.write_status_while_active(run_dir, **fields) is None:
        return rundir.read_status(run_dir)
    rundir.request_stop(run_dir)
    alive = lambda: rundir.pid_alive(pid, status.get("pid_start"))  # noqa: E731
    forced = False
    if not _wait(lambda: not alive(), timeout):
        forced = True
        _signal_group(pgid, signal.SIGTERM)
        if not _wait(lambda: not alive(), KILL_GRACE_S):
            _signal_group(pgid, signal.SIGKILL)
            _wait(lambda: not alive(), KILL_GRACE_S)
    # The leader may be gone while its children (data workers, accelerate ranks) are not: no orphans.
    if isinstance(pgid, int) and _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        if not _wait(lambda: not _group_alive(pgid), KILL_GRACE_S):
            _signal_group(pgid, signal.SIGKILL)
            _wait(lambda: not _group_alive(pgid), KILL_GRACE_S)
    final = rundir.read_raw_status(run_dir)
    # A reader may have written the inferred ending first, or the trainer its "terminated" one; the
    # stopper knows better how it ended.
    if final.get("state") in rundir.ACTIVE_STATES or final.get("inferred") or (forced and final.get("state") == "stopped"):
        ckpt = rundir.last_checkpoint(run_dir)
        kept = f" The last checkpoint is kept: {ckpt.name}." if ckpt else " No checkpoint had been saved yet."
        if now or rundir.read_raw_status(run_dir).get("stop_now"):
            why = "was stopped at once on request (Stop now), without finishing its step"
        elif forced:
            why = (f"did not finish its step and save within {timeout:.0f} s and was killed "
                   "(a step took longer than the wait)")
        else:
            why = "ended while stopping"
        rundir.write_status(run_dir, state="stopped", ended=final.get("ended") or rundir.now_iso(),
                            error=f"The training process {why}.{kept}", inferred=None)
    return rundir.read_status(run_dir)


def wait_for_run(run_dir: Path, timeout: Optional[float] = None, poll: float = 0.5) -> dict[str, Any]:
    """Block until the run reaches a final state (or `timeout`); returns its status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = rundir.read_status(run_dir)
        if status["state"] not in rundir.ACTIVE_STATES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(poll)
