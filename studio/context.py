"""What the tabs share: the workspace and the RunConfig being built.

`run_config` holds the RunConfig as a plain dict (JSON-safe, so gr.State can keep it
per browser session). The Dataset tab writes `data`, the Method tab writes `model`,
`method`, `train` and the rest, and the Train tab validates and starts it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from backend.core.config import RunConfig


def default_run_config() -> dict[str, Any]:
    return RunConfig().model_dump(mode="json")


@dataclass
class StudioContext:
    workspace: Path
    run_config: gr.State
    extras: dict[str, Any] = field(default_factory=dict)  # components a later tab listens to
