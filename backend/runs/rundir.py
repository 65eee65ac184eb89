"""The run-directory protocol (docs/ARCHITECTURE.md): create a run, read and write its status, append and tail its events.

A run lives only in its directory, so the UI, the CLI and a restarted studio all see the same thing.
Written by hand because no library defines this protocol; the files it writes are plain JSON/YAML.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from backend.core.config import RunConfig, save_config
from backend.core.io import atomic_write_json, free_bytes, make_reserve, read_json, write_with_reserve
from backend.core.locks import file_lock
from backend.runs.events import check_event_type
from backend.core.noise import readable_log

RUN_STATES = ("starting", "running", "stopping", "completed", "stopped", "failed", "out_of_memory")
ACTIVE_STATES = frozenset({"starting", "running", "stopping"})
FINAL_STATES = frozenset({"completed", "stopped", "failed", "out_of_memory"})
# Not a state a run is ever written in: what read_status says when the directory has gone.
MISSING = "missing"

STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
META_FILE = "meta.json"
STOP_REQUEST_FILE = "stop_request"
HEARTBEAT_FILE = "heartbeat.json"
# Space held back at creation so the final state can still be written when the trainer fills the disk.
RESERVE_FILE = ".status.reserve"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"

# A run that says "starting" but never got a process for this long did not start.
STARTING_GRACE_S = 120.0
# A running trainer whose heartbeat is older than max(STALL_MIN_S, STALL_STEPS x step time) is flagged.
STALL_MIN_S = 30.0
STALL_STEPS = 5.0
# Below this much free space, a run that ended without a word is taken to have filled the disk.
DISK_FULL_BYTES = 1 << 20


def runs_root(workspace: Path) -> Path:
    return Path(workspace) / "runs"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_iso(value: Any) -> Optional[float]:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def slugify(text: str, limit: int = 40) -> str:
    """Lowercase ASCII letters, digits and dashes only: safe as a directory name on every OS."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-")


def new_run_id(cfg: RunConfig, when: Optional[datetime] = None) -> str:
    when = when or datetime.now(timezone.utc)
    slug = slugify(cfg.name or "") or slugify(cfg.method.name) or "run"
    return f"{when.strftime('%Y%m%d-%H%M%S')}-{slug}"


def create_run(workspace: Path, cfg: RunConfig) -> Path:
    """Make WORKSPACE/runs/<id>/ with config.yaml and status.json ("starting"); returns the directory."""
    root = runs_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    base = new_run_id(cfg)
    for n in range(1, 1000):
        run_id = base if n == 1 else f"{base}-{n}"
        run_dir = root / run_id
        try:
            run_dir.mkdir()  # exclusive: two starts in the same second get different ids
        except FileExistsError:
            continue
        try:
            make_reserve(run_dir / RESERVE_FILE)
            save_config(cfg, run_dir / CONFIG_FILE)
            now = now_iso()
            atomic_write_json(run_dir / STATUS_FILE, {
                "run_id": run_id, "state": "starting", "created": now,
                "method": cfg.method.name, "model": cfg.model, "name": cfg.name,
            })
        except BaseException:
            # A start that cannot even write its config (a full disk) leaves no empty run behind.
            import shutil
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return run_dir
    raise RuntimeError(f"could not find a free run id under {root}")


def _status_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    # Runner and trainer both update status.json; the lock keeps their read-modify-write from losing fields.
    return file_lock(run_dir / ".status.lock")


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into status.json atomically (None deletes a field); returns the new status."""
    run_dir = Path(run_dir)
    if "state" in fields and fields["state"] not in RUN_STATES:
        raise ValueError(f"unknown run state {fields['state']!r}")
    with _status_lock(run_dir):
        return _write_status_locked(run_dir, fields)


def write_status_while_active(run_dir: Path, **fields: Any) -> Optional[dict[str, Any]]:
    """write_status, but only while the file still says an active state; None (nothing written) once the
    trainer has written its own ending. A stopper that wrote "stopping" over a trainer's "stopped" would
    reopen a leg that had already been closed."""
    with _status_lock(run_dir):
        if read_raw_status(run_dir).get("state") not in ACTIVE_STATES:
            return None
        return _write_status_locked(run_dir, fields)


def _write_status_locked(run_dir: Path, fields: dict[str, Any]) -> dict[str, Any]:
    status = read_json(run_dir / STATUS_FILE, {}) or {}
    was_active = status.get("state") in ACTIVE_STATES
    for k, v in fields.items():
        if v is None:
            status.pop(k, None)
        else:
            status[k] = v
    now = now_iso()
    status["updated"] = now
    if was_active and status.get("state") in FINAL_STATES:
        _close_leg(status, now)
    # On a full disk the reserve file's space is given back, so the final state still gets written.
    write_with_reserve(lambda: atomic_write_json(run_dir / STATUS_FILE, status), run_dir / RESERVE_FILE)
    return status


def _close_leg(status: dict[str, Any], now: str) -> None:
    """Record the leg (start to end of one training process) that just ended in status["legs"]."""
    legs = status.get("legs") if isinstance(status.get("legs"), list) else []
    if legs and not status.get("leg_started"):
        # This leg was closed already (its start is popped then); an active state written over the ending
        # must not add it twice, with the run's first start as its own.
        return
    start = status.get("leg_started") or status.get("started") or status.get("created")
    if not start:
        return
    legs.append({"started": start, "ended": status.get("ended") or now, "state": status.get("state"),
                 "step": status.get("step")})
    status["legs"] = legs
    status.pop("leg_started", None)


def leg_seconds(leg: dict[str, Any]) -> float:
    a, b = parse_iso(leg.get("started")), parse_iso(leg.get("ended"))
    return max(0.0, b - a) if a is not None and b is not None else 0.0


def run_times(status: dict[str, Any], now: Optional[float] = None) -> tuple[Optional[float], Optional[float]]:
    """(total training seconds over every leg, seconds of the current or last leg); None when unknown.

    A resumed run keeps its creation time and lists each leg, so a resume does not restart the clock."""
    now = time.time() if now is None else now
    legs = [leg for leg in status.get("legs") or [] if isinstance(leg, dict)]
    done = sum(leg_seconds(leg) for leg in legs)
    if status.get("state") in ACTIVE_STATES:
        start = parse_iso(status.get("leg_started") or (None if legs else status.get("started")))
        if start is None:
            return (done or None), None
        this = max(0.0, now - start)
        return done + this, this
    if legs:
        return done, leg_seconds(legs[-1])
    # Written before legs were recorded: one leg from start to end.
    start = parse_iso(status.get("started")) or parse_iso(status.get("created"))
    end = parse_iso(status.get("ended")) or parse_iso(status.get("updated"))
    if start is None or end is None:
        return None, None
    return max(0.0, end - start), max(0.0, end - start)


def process_start_time(pid: int) -> Optional[int]:
    """The kernel's start tick of `pid` (Linux), so a recycled pid is not mistaken for our trainer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: Any, start_time: Any = None) -> bool:
    """True when `pid` runs (a zombie counts as ended) and, if given, started at `start_time`."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rfind(")") + 2:].split()[0] == "Z":
            return False
    except OSError:
        pass
    if isinstance(start_time, int):
        now_start = process_start_time(pid)
        if now_start is not None and now_start != start_time:
            return False
    return True


def tail_log(run_dir: Path, max_lines: int = 30, max_bytes: int = 16384) -> str:
    """The last lines of train.log (progress bars' carriage returns resolved, known noise dropped,
    tracebacks folded into a sentence: backend.core.noise); "" when there is none."""
    try:
        with open(Path(run_dir) / LOG_FILE, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.split("\n")]
    kept = [ln for ln in readable_log("\n".join(kept)).split("\n") if ln.strip()]
    return "\n".join(kept[-max_lines:])


def _log_tail(run_dir: Path, lines: int = 1) -> str:
    return " | ".join(tail_log(run_dir, lines, 4096).splitlines())


def read_raw_status(run_dir: Path) -> dict[str, Any]:
    """status.json as written, without the liveness check."""
    status = read_json(Path(run_dir) / STATUS_FILE, None)
    return status if isinstance(status, dict) else {}


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json with liveness applied: an active state whose process is gone reads as "failed"."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {"run_id": run_dir.name, "state": MISSING,
                "error": f"The run directory {run_dir} no longer exists (it was deleted or moved)."}
    status = read_json(run_dir / STATUS_FILE, None)
    if not isinstance(status, dict):
        return {"run_id": run_dir.name, "state": "failed",
                "error": f"The run's status file {run_dir / STATUS_FILE} is missing or unreadable."}
    state = status.get("state")
    if state in ACTIVE_STATES:
        pid = status.get("pid")
        if pid is None:
            # A resume keeps `created`: its own grace runs from the leg's start.
            created = parse_iso(status.get("leg_started") or status.get("created")) or 0.0
            if time.time() - created <= STARTING_GRACE_S:
                return status
            status.update(state="failed", error="The training process never started; see train.log.")
        elif not pid_alive(pid, status.get("pid_start")):
            # Asked to stop and gone: stopped (the stopper adds how); otherwise it died on its own.
            status.update(state="stopped" if state == "stopping" else "failed",
                          error=_dead_process_sentence(run_dir, pid))
            status["ended"] = status.get("ended") or status.get("updated")
        else:
            return status
        _write_back(run_dir, status)
    return status


def _disk_full_seen(run_dir: Path) -> bool:
    """train.log says ENOSPC, or the run's filesystem is (nearly) full."""
    tail = tail_log(run_dir, 200, 65536)
    if "No space left on device" in tail or "ENOSPC" in tail or "Errno 28" in tail:
        return True
    try:
        return free_bytes(run_dir) < DISK_FULL_BYTES
    except OSError:
        return False


def _dead_process_sentence(run_dir: Path, pid: Any) -> str:
    ckpt = last_checkpoint(run_dir)
    then = (f" Resume it from the last checkpoint ({ckpt.name}, kept) or start it again." if ckpt
            else " No checkpoint had been saved; start it again.")
    if _disk_full_seen(run_dir):
        return (f"The disk is full: the training process (pid {pid}) could not write to {run_dir} and ended. "
                f"Free some space (old checkpoints and runs can go).{then}")
    last = _log_tail(run_dir)
    hint = f" The last line of train.log: {last}" if last else " See train.log."
    return f"The training process (pid {pid}) ended without reporting a result: it was killed or crashed.{hint}{then}"


def _write_back(run_dir: Path, inferred: dict[str, Any]) -> None:
    """Store the state a reader inferred for a dead process, once: under the status lock, and only
    while the file still says the same active state for the same pid (the trainer may have written
    its own ending meanwhile). A write that fails (full disk, read-only) leaves the inference to the
    next reader."""
    try:
        with _status_lock(run_dir):
            raw = read_raw_status(run_dir)
            if raw.get("state") not in ACTIVE_STATES or raw.get("pid") != inferred.get("pid"):
                return
            _write_status_locked(run_dir, {"state": inferred["state"], "error": inferred.get("error"),
                                           "ended": inferred.get("ended") or now_iso(), "inferred": True})
    except OSError:
        pass


def _clean_number(v: Any) -> Any:
    # NaN/inf are not JSON; they are dropped (None), never replaced by a made-up value.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def append_event(run_dir: Path, event: dict[str, Any]) -> None:
    """Append one JSON line to events.jsonl with a single write, so a reader never sees two events interleaved.

    The event's "type" must be one of backend.runs.events.EVENT_TYPES (ValueError otherwise)."""
    check_event_type(event)
    record = {"time": time.time(), **{k: _clean_number(v) for k, v in event.items()}}
    line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(Path(run_dir) / EVENTS_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        # A process killed mid-line (or a full disk) left a torn last line: start on a fresh line,
        # or this event would be glued to it and lost with it.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(run_dir: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events after byte `offset` and the offset to continue from. Never raises.

    A last line without its newline is still being written: it is left for the next call.
    Malformed lines are skipped. A file shorter than `offset` was replaced: read it from the start.
    """
    path = Path(run_dir) / EVENTS_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if offset > size or offset < 0:
                offset = 0
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events: list[dict[str, Any]] = []
    for raw in data[:end].split(b"\n"):
        if not raw.strip():
            continue
        try:
            ev = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(ev, dict):
            events.append(ev)
    return events, offset + end + 1


def adapter_dir(run_dir: Path) -> Path:
    return Path(run_dir) / ADAPTER_DIR


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _safetensors_problem(path: Path) -> Optional[str]:
    # Reads only the header: a file cut short (kill, full disk) is shorter than its header says.
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            size = path.stat().st_size
            if n <= 0 or 8 + n > size:
                return f"{path.name} is truncated"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{path.name} is unreadable"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)]
    if ends and 8 + n + max(ends) > size:
        return f"{path.name} is truncated"
    return None


def checkpoint_problem(ckpt: Path) -> Optional[str]:
    """Why a checkpoint directory cannot be resumed from, or None when it looks complete.

    trainer_state.json is the Trainer's last write, so without it (or with it cut short) the
    save was interrupted; a checkpoint must also hold readable weights."""
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing (the save was cut short)"
    try:
        parsed = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return "trainer_state.json is truncated or unreadable"
    if not isinstance(parsed, dict) or "global_step" not in parsed:
        return "trainer_state.json does not hold a trainer state"
    weights = [ckpt / name for name in WEIGHT_FILES if (ckpt / name).is_file()]
    if not weights:
        return "the model weights file is missing"
    for w in weights:
        if w.suffix == ".safetensors":
            problem = _safetensors_problem(w)
            if problem:
                return problem
    return None


def _numbered_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    try:
        entries = list(checkpoints_dir(run_dir).iterdir())
    except OSError:
        return []
    found = [(int(m.group(1)), p) for p in entries if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return sorted(found, reverse=True)


def usable_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, newest first: what the Chat tab can load."""
    return [(step, p) for step, p in _numbered_checkpoints(run_dir) if checkpoint_problem(p) is None]


def best_checkpoint(run_dir: Path) -> Optional[tuple[int, Path, Optional[float]]]:
    """(step, folder, validation loss) of the run's best checkpoint, as the newest checkpoint's trainer
    state names it; None without a validation set or when that folder is gone or damaged."""
    newest = last_checkpoint(run_dir)
    if newest is None:
        return None
    state = read_json(newest / "trainer_state.json", {}) or {}
    best = state.get("best_model_checkpoint")
    if not isinstance(best, str) or not best:
        return None
    folder = checkpoints_dir(run_dir) / Path(best).name  # the run directory may have moved since
    if not re.fullmatch(r"checkpoint-\d+", folder.name) or checkpoint_problem(folder) is not None:
        return None
    step = state.get("best_global_step") or int(folder.name.split("-")[1])
    metric = state.get("best_metric")
    return int(step), folder, float(metric) if isinstance(metric, (int, float)) else None


def checkpoint_report(run_dir: Path) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """(newest usable checkpoint, [(newer checkpoint passed over, why)])."""
    skipped: list[tuple[Path, str]] = []
    for _, p in _numbered_checkpoints(run_dir):
        problem = checkpoint_problem(p)
        if problem is None:
            return p, skipped
        skipped.append((p, problem))
    return None, skipped


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint; incomplete or corrupt ones (see checkpoint_problem) are passed over."""
    return checkpoint_report(run_dir)[0]


def run_summary(run_dir: Path) -> dict[str, Any]:
    """One row of the runs list; `duration` is the training time of every leg together."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    total, this_leg = run_times(status)
    return {
        "id": run_dir.name, "dir": str(run_dir), "state": status.get("state"),
        "method": status.get("method"), "model": status.get("model"), "name": status.get("name"),
        "best_val_loss": status.get("best_val_loss"), "started": status.get("started") or status.get("created"),
        "created": status.get("created"), "duration": total, "leg_duration": this_leg,
        "legs": len(status.get("legs") or []) + (1 if status.get("state") in ACTIVE_STATES else 0),
        "error": status.get("error"), "step": status.get("step"), "total_steps": status.get("total_steps"),
    }


def list_runs(workspace: Path) -> list[dict[str, Any]]:
    """Every run in the workspace, newest first. A directory that vanishes while listing is left out."""
    root = runs_root(workspace)
    try:
        dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        return []
    rows = []
    for d in sorted(dirs, key=lambda p: p.name, reverse=True):
        row = run_summary(d)
        if row["state"] != MISSING:
            rows.append(row)
    return rows


def request_stop(run_dir: Path) -> None:
    """The trainer's stop callback looks for this file at every step."""
    atomic_write_json(Path(run_dir) / STOP_REQUEST_FILE, {"requested": now_iso()})


def stop_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / STOP_REQUEST_FILE).exists()


def clear_stop_request(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(run_dir) / STOP_REQUEST_FILE).unlink()


def write_heartbeat(run_dir: Path, step: int, step_time: Optional[float]) -> None:
    """The trainer's sign of progress: the step it finished, when, and its recent time per step."""
    atomic_write_json(Path(run_dir) / HEARTBEAT_FILE, {"step": step, "time": time.time(), "step_time": step_time})


def read_heartbeat(run_dir: Path) -> Optional[dict[str, Any]]:
    beat = read_json(Path(run_dir) / HEARTBEAT_FILE, None)
    return beat if isinstance(beat, dict) and isinstance(beat.get("time"), (int, float)) else None


def stall(run_dir: Path, status: Optional[dict[str, Any]] = None, now: Optional[float] = None) -> Optional[dict[str, Any]]:
    """{"seconds", "step_time", "threshold", "message"} when a running trainer has made no progress for
    longer than max(STALL_MIN_S, STALL_STEPS x its step time); None when it is progressing (or not running).

    A stopped (SIGSTOP), deadlocked or swapping trainer still has a live pid; only its heartbeat tells."""
    status = read_status(run_dir) if status is None else status
    if status.get("state") not in ("running", "stopping"):
        return None
    beat = read_heartbeat(run_dir)
    if beat is None:
        return None  # still loading: no step has begun, so there is no pace to compare with
    now = time.time() if now is None else now
    since = now - float(beat["time"])
    step_time = beat.get("step_time") if isinstance(beat.get("step_time"), (int, float)) else None
    threshold = max(STALL_MIN_S, STALL_STEPS * (step_time or 0.0))
    if since <= threshold:
        return None
    pace = f" (step time ~{_short_seconds(step_time)})" if step_time else ""
    return {"seconds": since, "step_time": step_time, "threshold": threshold,
            "message": (f"No progress for {_short_seconds(since)}{pace}, at step {beat.get('step')}. The process is "
                        "alive but not finishing steps: it may be paused (SIGSTOP), swapping or stuck. Stop it "
                        "if it does not recover.")}


def _short_seconds(s: Optional[float]) -> str:
    if s is None:
        return "?"
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"
