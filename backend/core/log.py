"""Lines a person reads in a run's train.log, written once per run (by the main process only).

The runner sends the training subprocess's stdout to train.log; every layer that has something to
tell the user about a run (a dropped row count, a method's fallback) says it through `note`.
"""
from __future__ import annotations

import os


def is_main_process() -> bool:
    """Rank 0 of a distributed run, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def note(message: str) -> None:
    """A line for train.log that a person reads."""
    print(f"[ftstudio] {message}", flush=True)
