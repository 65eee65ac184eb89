"""The run queue: WORKSPACE/queue.json holds configs to train in order.

The queue lives in a file (written atomically, under a lock) so a restarted studio finds it
and carries on. `queue_step` is one look at the queue: it records runs that ended and starts
the next queued configs through `backend.runs.runner` while devices are free (one run at a time on a
CPU or one GPU; on several GPUs, runs side by side, each on the GPUs `runner.pick_devices` gives it). The
`QueueWorker` thread only calls `queue_step` on a timer; training always happens in the
runner's subprocess, never in the process that hosts the worker.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from backend.core.config import ConfigError, RunConfig, absolute_paths, validate_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_json, is_disk_full, make_reserve, write_with_reserve
from backend.core.locks import file_lock
from backend.core.models import BUNDLED, ModelError, resolve_model
from backend.runs import rundir, runner, sweep

log = logging.getLogger(__name__)

QUEUE_FILE = "queue.json"
# Space held back so the queue can still record a failed start when the disk is full.
QUEUE_RESERVE = ".queue.reserve"
QUEUE_VERSION = 1
QUEUED, RUNNING = "queued", "running"
OPEN_STATES = frozenset({QUEUED, RUNNING})


def queue_path(workspace: Path) -> Path:
    return Path(workspace) / QUEUE_FILE


def _locked(workspace: Path) -> contextlib.AbstractContextManager[None]:
    # The UI's buttons and the worker thread (or a second studio) all read-modify-write the file.
    return file_lock(Path(workspace) / ".queue.lock", make_parents=True)


def _entry_ok(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("id"), str) and isinstance(e.get("config"), dict)
            and isinstance(e.get("state"), str))


def _set_aside(path: Path, move: bool) -> Path:
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    if move:
        os.replace(path, aside)
    else:
        aside.write_bytes(path.read_bytes())
    return aside


def _load(workspace: Path) -> dict[str, Any]:
    """The queue as stored. A file that is not a queue is moved aside with a sentence for the UI;
    entries that make no sense are dropped from a copy set aside, and the rest kept."""
    path = queue_path(workspace)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"version": QUEUE_VERSION, "entries": [], "notice": None}
    except (OSError, UnicodeDecodeError) as e:
        text, err = None, e
    else:
        err = None
    data: Any = None
    if text is not None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            err = e
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        aside = _set_aside(path, move=True)
        why = f" ({err})" if err else ""
        notice = (f"The queue file {path} could not be read{why}, so it was moved aside to {aside.name} and the "
                  "queue starts empty. Open that file to recover what was queued, and add the configs again.")
        log.warning(notice)
        fresh = {"version": QUEUE_VERSION, "entries": [], "notice": notice}
        atomic_write_json(path, fresh)
        return fresh
    good = [e for e in data["entries"] if _entry_ok(e)]
    if len(good) != len(data["entries"]):
        aside = _set_aside(path, move=False)
        dropped = len(data["entries"]) - len(good)
        data["notice"] = (f"{dropped} entr{'y' if dropped == 1 else 'ies'} of the queue file {path} made no sense "
                          f"and {'was' if dropped == 1 else 'were'} left out; the original file is kept as "
                          f"{aside.name}. The other entries are unchanged.")
        data["entries"] = good
        atomic_write_json(path, data)
    data.setdefault("notice", None)
    return data


def _save(workspace: Path, data: dict[str, Any]) -> None:
    data["version"] = QUEUE_VERSION
    write_with_reserve(lambda: atomic_write_json(queue_path(workspace), data), Path(workspace) / QUEUE_RESERVE)


def _unpause(data: dict[str, Any]) -> None:
    """The user acted on the queue (added, removed, moved, cleared, dismissed): it carries on."""
    if data.pop("paused", None):
        data["notice"] = None


def read_queue(workspace: Path) -> dict[str, Any]:
    """{"entries": [...], "notice": sentence or None}. Entries keep their order; finished ones stay, marked."""
    with _locked(workspace):
        return _load(workspace)


def _mutate(workspace: Path, fn: Callable[[dict[str, Any]], Any]) -> Any:
    with _locked(workspace):
        data = _load(workspace)
        result = fn(data)
        _save(workspace, data)
        return result


def _find(data: dict[str, Any], entry_id: str) -> int:
    for i, e in enumerate(data["entries"]):
        if e["id"] == entry_id:
            return i
    raise UserError(f"That queue entry ({entry_id}) is no longer in the queue; refresh the list.")


def add_to_queue(workspace: Path, cfg: RunConfig, label: Optional[str] = None,
                 sweep_run: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Append a validated config at the end of the queue; returns the new entry. `sweep_run`
    ({"id": sweep id, "index": run index}) marks an entry of a sweep (backend.runs.sweep)."""
    cfg = absolute_paths(cfg)  # fixed when queued: a studio restarted elsewhere still finds the files
    entry = {"id": uuid.uuid4().hex[:12], "config": cfg.model_dump(mode="json"), "state": QUEUED,
             "label": label or cfg.name or f"{cfg.method.name} on {Path(cfg.model).name or cfg.model}",
             "added": rundir.now_iso()}
    if sweep_run:
        entry["sweep"] = dict(sweep_run)

    def add(data):
        data["entries"].append(entry)
        _unpause(data)
    _mutate(workspace, add)
    reserve = Path(workspace) / QUEUE_RESERVE
    if not reserve.exists():
        make_reserve(reserve)
    return entry


def remove_entry(workspace: Path, entry_id: str) -> None:
    """Take an entry out of the queue. A running entry stays: stop its run first."""
    def remove(data):
        i = _find(data, entry_id)
        if data["entries"][i]["state"] == RUNNING:
            raise UserError("That queue entry is training right now; stop its run first, then remove it.")
        del data["entries"][i]
        _unpause(data)
    _mutate(workspace, remove)


def move_entry(workspace: Path, entry_id: str, offset: int) -> None:
    """Move an entry `offset` places (negative: earlier), within the list's bounds."""
    def move(data):
        entries = data["entries"]
        i = _find(data, entry_id)
        j = max(0, min(len(entries) - 1, i + offset))
        entries.insert(j, entries.pop(i))
        _unpause(data)
    _mutate(workspace, move)


def clear_queue(workspace: Path) -> int:
    """Empty the queue (a running entry stays until its run ends); returns how many entries went."""
    def clear(data):
        before = len(data["entries"])
        data["entries"] = [e for e in data["entries"] if e["state"] == RUNNING]
        data["notice"] = None
        data.pop("paused", None)
        return before - len(data["entries"])
    return _mutate(workspace, clear)


def dismiss_notice(workspace: Path) -> None:
    def dismiss(data):
        data["notice"] = None
        data.pop("paused", None)
    _mutate(workspace, dismiss)


def resume_queue(workspace: Path) -> None:
    """Carry on after a pause (a start that failed): the next queued entry starts on the next look."""
    dismiss_notice(workspace)


def queue_paused(workspace: Path) -> Optional[str]:
    """The sentence the queue paused with, or None while it runs."""
    data = read_queue(workspace)
    return data.get("notice") if data.get("paused") else None


def pending_count(workspace: Path) -> int:
    return sum(1 for e in read_queue(workspace)["entries"] if e["state"] in OPEN_STATES)


def _check_startable(config: dict[str, Any]) -> RunConfig:
    """The config as a RunConfig, or UserError/ConfigError/ModelError with the sentence for this entry."""
    cfg = validate_config(config, source="the queued config")
    if cfg.model not in BUNDLED:  # the bundled model is converted on first use, never missing
        resolved = resolve_model(cfg.model)
        if resolved.kind == "local" and not Path(resolved.source).is_dir():
            raise ModelError(f"The model directory {resolved.source} no longer exists.")
    for field in ("path", "validation_path"):
        value = getattr(cfg.data, field)
        if value and not Path(value).exists():
            raise UserError(f"The data file {value} ({field.replace('_', ' ')}) no longer exists; "
                            "remove this entry and queue the config again with a file that exists.")
    return cfg


def _finish(entry: dict[str, Any], state: str, error: Optional[str], **more: Any) -> dict[str, Any]:
    entry.update(state=state, error=error, ended=rundir.now_iso(), **more)
    return {"kind": "run_end", "entry": entry["id"], "label": entry.get("label"), "state": state,
            "run_dir": entry.get("run_dir"), "error": error}


def _start_failure(exc: BaseException) -> str:
    if is_disk_full(exc):
        return (f"the disk is full ({exc}); free some space (old checkpoints and runs can go)")
    return str(exc).rstrip(".")


def queue_step(workspace: Path) -> list[dict[str, Any]]:
    """Look at the queue once: record runs that ended, start the next config if the device is free.

    Returns what happened as events: {"kind": "run_end" | "run_start" | "queue_end", ...}.
    """
    workspace = Path(workspace).resolve()
    events: list[dict[str, Any]] = []
    with _locked(workspace):
        data = _load(workspace)
        entries = data["entries"]
        had_open = any(e["state"] in OPEN_STATES for e in entries)
        if not had_open:
            return events  # nothing to watch: no need to look at the runs
        for e in entries:
            if e["state"] != RUNNING:
                continue
            status = rundir.read_status(Path(e.get("run_dir") or ""))
            if status.get("state") in rundir.ACTIVE_STATES:
                continue
            state = status.get("state") if status.get("state") in rundir.FINAL_STATES else "failed"
            events.append(_finish(e, state, status.get("error"), best_val_loss=status.get("best_val_loss")))
        # Entries start in order while devices are free: one at a time on a CPU or a single GPU, side by
        # side on a multi-GPU machine (each on its own GPUs). Runs started by hand hold their devices too.
        while not data.get("paused"):
            nxt = next((e for e in entries if e["state"] == QUEUED), None)
            if nxt is None:
                break
            try:
                cfg = _check_startable(nxt["config"])
                if not runner.devices_free(workspace, cfg):
                    break  # the head of the queue waits; later entries do not overtake it
                run_dir = runner.start_run(workspace, cfg)
            except runner.DevicesBusy:
                break  # someone else started a run in between: try again on the next look
            except (UserError, ConfigError, ModelError) as exc:
                events.append(_finish(nxt, "failed", str(exc)))  # this entry's own problem: the next may start
                continue
            except OSError as exc:
                # The machine's problem (a full disk, no process can be started), not the entry's: the
                # queue pauses, since the next entry (or this one again) would fail the same way each look.
                reason = _start_failure(exc)
                events.append(_finish(nxt, "failed", reason))
                label = nxt.get("label") or nxt["id"]
                waiting = sum(1 for e in entries if e["state"] == QUEUED)
                data["paused"] = True
                data["notice"] = (f"The queue is paused: the entry \"{label}\" could not start ({reason}). "
                                  f"{waiting} entr{'y' if waiting == 1 else 'ies'} still wait. Fix the cause, then "
                                  "press \"Resume the queue\" (or add, move or remove an entry) to carry on.")
                events.append({"kind": "queue_paused", "entry": nxt["id"], "message": data["notice"]})
                break
            nxt.update(state=RUNNING, run_dir=str(run_dir), run_id=run_dir.name, started=rundir.now_iso(),
                       error=None)
            events.append({"kind": "run_start", "entry": nxt["id"], "label": nxt.get("label"),
                           "run_dir": str(run_dir)})
        # Sweep entries: where their runs went, and the median rule's stop of a clearly losing one.
        events.extend(sweep.watch_queue(workspace, entries))
        if had_open and not data.get("paused") and not any(e["state"] in OPEN_STATES for e in entries):
            done = [e for e in entries if e["state"] not in OPEN_STATES]
            ok = sum(1 for e in done if e["state"] == "completed")
            events.append({"kind": "queue_end", "completed": ok, "not_completed": len(done) - ok})
        if events:
            _save(workspace, data)
    return events


class QueueWorker:
    """A daemon thread that calls `queue_step` every `poll` seconds until stopped."""

    MAX_BACKOFF_S = 300.0
    error: Optional[str] = None

    def __init__(self, workspace: Path, poll: float = 2.0,
                 on_event: Optional[Callable[[dict[str, Any]], None]] = None):
        self.workspace = Path(workspace).resolve()
        self.poll = poll
        self.on_event = on_event
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "QueueWorker":
        if not self.alive:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True, name=f"queue-{self.workspace.name}")
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stops looking at the queue; a run it started keeps training and is picked up by the next worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                for ev in queue_step(self.workspace):
                    log.info("queue: %s", ev)
                    if self.on_event is not None:
                        self.on_event(ev)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the worker must outlive one bad look at the queue
                failures += 1
                # Not a retry loop: a pass that fails (say, the queue file cannot be written on a full
                # disk) waits twice as long each time, up to MAX_BACKOFF_S, and is logged once per change.
                self.error = f"The queue could not be looked at ({type(exc).__name__}: {exc}); trying again later."
                if failures == 1:
                    log.exception("queue worker: one pass failed")
            self._stop.wait(min(self.MAX_BACKOFF_S, self.poll * (2 ** failures)) if failures else self.poll)


_workers: dict[Path, QueueWorker] = {}
_workers_lock = threading.Lock()


def ensure_worker(workspace: Path, poll: float = 2.0) -> QueueWorker:
    """The one worker of this process for `workspace`, started if it was not (studio start, restart)."""
    key = Path(workspace).resolve()
    with _workers_lock:
        worker = _workers.get(key)
        if worker is None or not worker.alive:
            worker = _workers[key] = QueueWorker(key, poll=poll).start()
        return worker
