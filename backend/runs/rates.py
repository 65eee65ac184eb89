"""Training speed measured by earlier runs, so a new run's time can be foretold before it starts.

The estimator knows how many real tokens a run will train (`Estimate.data`), but not how fast this
machine trains them: that is measured, never guessed. Each run's `train` events carry the real tokens
per second the trainer saw (padding left out), and `meta.json` names the device it ran on; a run of the
same model with the same method on the same kind of device is the best predictor there is.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from backend.runs import events as ev
from backend.runs import rundir

MIN_POINTS = 3     # fewer logged rates than this say more about the warm-up than about the speed
SKIP_FIRST = 1     # the first logged interval holds compilation, caches and data loading
MAX_RUNS = 30      # newest runs looked at: a rate from long ago may be from other software


@dataclass(frozen=True)
class MeasuredRate:
    tokens_per_s: float   # median of the run's logged real-token rates
    run_id: str
    points: int           # how many logged rates the median is over
    device: str           # "cuda" or "cpu"


def device_of(run_dir: Path) -> Optional[str]:
    """The device type a run trained on, from its meta.json (None when it was never written)."""
    meta = rundir.read_json(Path(run_dir) / rundir.META_FILE, None)
    devices = meta.get("devices") if isinstance(meta, dict) else None
    if isinstance(devices, list) and devices and isinstance(devices[0], dict):
        kind = devices[0].get("type")
        return str(kind) if kind else None
    return None


def run_rate(run_dir: Path) -> Optional[tuple[float, int]]:
    """(median real tokens per second, number of rates) from a run's train events; None below MIN_POINTS."""
    events, _ = rundir.read_events(Path(run_dir))
    rates = [float(e["tokens_per_s"]) for e in events
             if e.get("type") == ev.TRAIN and isinstance(e.get("tokens_per_s"), (int, float)) and e["tokens_per_s"] > 0]
    rates = rates[SKIP_FIRST:]
    if len(rates) < MIN_POINTS:
        return None
    return statistics.median(rates), len(rates)


def measured_rate(workspace: Path, model: str, method: str, device: str) -> Optional[MeasuredRate]:
    """The newest run of this model and method on this device type that logged enough rates."""
    for row in rundir.list_runs(Path(workspace))[:MAX_RUNS]:
        # Any state: a stopped or failed run's logged rates were measured all the same.
        if row.get("model") != model or row.get("method") != method:
            continue
        run_dir = Path(row["dir"])
        if device_of(run_dir) != device:
            continue
        found = run_rate(run_dir)
        if found:
            return MeasuredRate(tokens_per_s=found[0], run_id=row["id"], points=found[1], device=device)
    return None


def rate_json(rate: Optional[MeasuredRate]) -> Optional[dict[str, Any]]:
    return None if rate is None else {"tokens_per_s": rate.tokens_per_s, "run_id": rate.run_id,
                                      "points": rate.points, "device": rate.device}
