"""Putting a sweep into the run queue, and taking it out again.

`queue_sweep` is what the Method tab's "Queue the sweep" and `ftstudio sweep` both call: the grid is
planned and checked first (nothing is queued when one value is bad), the sweep's record is written, then
each run is appended to `WORKSPACE/queue.json` marked with the sweep's id, so the queue's worker trains
them in order like any other entry. `cancel_sweep` removes the waiting runs and stops the running one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.runs import queue as run_queue
from backend.runs import rundir, runner
from backend.runs.sweep import SweepAxis, create_record, load_sweep, plan_sweep, update_runs


def queue_sweep(workspace: Path, base: RunConfig, axes: list[SweepAxis], prune: Optional[str] = None) -> dict[str, Any]:
    """Plan the grid over `base`, record the sweep and queue its runs; returns the sweep's record."""
    runs = plan_sweep(base, axes)
    record = create_record(workspace, runs, axes, prune)
    entries: dict[int, dict[str, Any]] = {}
    for i, run in enumerate(runs):
        entry = run_queue.add_to_queue(workspace, run.config, label=run.name,
                                       sweep_run={"id": record["id"], "index": i})
        entries[i] = {"entry": entry["id"]}
    return update_runs(workspace, record["id"], entries)


def sweep_entries(workspace: Path, sweep_id: str) -> list[dict[str, Any]]:
    """The queue's entries of one sweep, in queue order."""
    return [e for e in run_queue.read_queue(workspace)["entries"]
            if isinstance(e.get("sweep"), dict) and e["sweep"].get("id") == sweep_id]


def sweep_done(workspace: Path, sweep_id: str) -> bool:
    """True when none of the sweep's entries waits or trains any more."""
    return not any(e["state"] in run_queue.OPEN_STATES for e in sweep_entries(workspace, sweep_id))


def cancel_sweep(workspace: Path, sweep_id: str, timeout: float = 60.0) -> dict[str, int]:
    """Remove the sweep's waiting entries from the queue and stop its running run (a checkpoint is kept)."""
    load_sweep(workspace, sweep_id)  # a sentence for an unknown id
    removed = stopped = 0
    for e in sweep_entries(workspace, sweep_id):
        if e["state"] == run_queue.QUEUED:
            try:
                run_queue.remove_entry(workspace, e["id"])
                removed += 1
            except UserError:
                pass  # it started in between: stopped below on the next look
        elif e["state"] == run_queue.RUNNING and e.get("run_dir"):
            if rundir.read_status(Path(e["run_dir"])).get("state") in rundir.ACTIVE_STATES:
                runner.stop_run(Path(e["run_dir"]), timeout=timeout)
                stopped += 1
    return {"removed": removed, "stopped": stopped}
