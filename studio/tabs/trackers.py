"""Experiment trackers for a run: TensorBoard always, MLflow and Weights & Biases when installed.

Writes RunConfig.report_to. The trainer keeps every tracker offline by default (TensorBoard files and
an MLflow file store in the run directory, W&B in offline mode), so no run ever waits for a login.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import gradio as gr

from studio.context import StudioContext

TRACKERS = {"tensorboard": "TensorBoard", "mlflow": "MLflow", "wandb": "Weights & Biases"}


def installed_trackers() -> list[str]:
    # TensorBoard ships with the studio; the others are optional packages.
    return [name for name in TRACKERS if name == "tensorboard" or importlib.util.find_spec(name) is not None]


def tracker_note(available: list[str]) -> str:
    missing = [TRACKERS[n] for n in TRACKERS if n not in available]
    text = ("<span class='ft-help'>Every run writes TensorBoard event files into its run directory "
            "(`tensorboard --logdir workspace/runs`). MLflow logs into `RUN_DIR/mlruns` unless "
            "`MLFLOW_TRACKING_URI` is set; W&B runs offline unless you are logged in (`WANDB_API_KEY`).")
    if missing:
        pkgs = " / ".join(n for n in ("mlflow", "wandb") if n not in available)
        text += f" {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (`pip install {pkgs}`)."
    return text + "</span>"


def chosen(rc: dict[str, Any], available: list[str]) -> list[str]:
    return [n for n in (rc or {}).get("report_to") or [] if n in available]


def build_trackers(ctx: StudioContext) -> gr.CheckboxGroup:
    available = installed_trackers()
    box = gr.CheckboxGroup(choices=[(TRACKERS[n], n) for n in available],
                           value=chosen(ctx.run_config.value, available), label="Experiment trackers",
                           elem_id="report-to")
    gr.Markdown(tracker_note(available))

    def on_pick(picked, rc):
        """Reads the ticked trackers; writes RunConfig.report_to (trackers that are not installed are kept off)."""
        rc = dict(rc or {})
        rc["report_to"] = [n for n in TRACKERS if n in (picked or [])]
        return rc

    def on_config(rc):
        """Follows report_to edits from other tabs (a preset, a loaded YAML)."""
        return chosen(rc, available)

    box.input(on_pick, [box, ctx.run_config], ctx.run_config, queue=False)
    ctx.run_config.change(on_config, ctx.run_config, box, queue=False)
    return box
