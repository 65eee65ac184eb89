"""What the tabs share: the workspace and the RunConfig being built.

`run_config` holds the RunConfig as a plain dict (JSON-safe, so gr.State can keep it
per browser session). The Dataset tab writes `data`, the Method tab writes `model`,
`method`, `train` and the rest, and the Train tab validates and starts it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from backend.core.config import RunConfig


def default_run_config() -> dict[str, Any]:
    return RunConfig().model_dump(mode="json")


@dataclass
class StudioContext:
    workspace: Path
    run_config: gr.State
    # The Dataset tab's measured token lengths ({"lengths": [...], "total": rows}); the Method tab's
    # estimate sizes the batch by them instead of assuming every row is max length.
    data_lengths: Optional[gr.State] = None
    extras: dict[str, Any] = field(default_factory=dict)  # components a later tab listens to


def bind(fn: Callable[..., Any], *args: Any, name: Optional[str] = None) -> functools.partial:
    """functools.partial(fn, *args) that keeps fn's name and docstring: Gradio names an event's API
    endpoint after its function and describes it with the docstring.

    Not for handlers that take gr.SelectData/gr.EventData: Gradio finds those from the function's
    type hints, which a partial does not carry.
    """
    bound = functools.partial(fn, *args)
    bound.__name__ = name or fn.__name__  # type: ignore[attr-defined]
    bound.__doc__ = fn.__doc__
    return bound
