"""Plotly figures for the Train tab, built from already-parsed run events.

`RunSeries` accumulates a run's events as the Train tab's timer brings them in (only the new ones
each tick); the figure functions turn a series into plotly figures.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend.runs import events as run_events

SMOOTHING = 0.8
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")


# The alignment metrics worth a curve (the rest stay in events.jsonl).
ALIGNMENT_SHOWN = ("rewards/margins", "rewards/accuracies", "accuracy", "margin", "kl", "reward")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing, so the first points are not pulled to 0."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


@dataclass
class RunSeries:
    """Everything the live view shows about one run, folded from its events."""
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr_steps: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    gn_steps: list[int] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_step: Optional[int] = None
    best_val_loss: Optional[float] = None
    early_stop_step: Optional[int] = None
    total_steps: Optional[int] = None
    step: int = 0
    epoch: Optional[float] = None
    tokens_per_s: Optional[float] = None
    gpu_mem: Optional[int] = None
    first_step: Optional[int] = None        # the first step of this session (after a resume)
    first_step_time: Optional[float] = None
    last_step_time: Optional[float] = None
    resumes: list[int] = field(default_factory=list)
    unfreezes: list[tuple[int, str]] = field(default_factory=list)   # gradual unfreezing: (step, label)
    # Alignment trainers' own metrics (reward margins, accuracies, ...): name -> (steps, values)
    alignment: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    def add(self, events: Iterable[dict[str, Any]]) -> bool:
        """Fold in new events; True when anything a chart shows changed."""
        changed = False
        for ev in events:
            kind = ev.get("type")
            step = ev.get("step")
            if kind == run_events.TRAIN_BEGIN:
                self.total_steps = ev.get("total_steps") or self.total_steps
                self.first_step, self.first_step_time = ev.get("step"), ev.get("time")
            elif kind == run_events.TRAIN and isinstance(step, int):
                changed = True
                self._rewind(step)
                self.step, self.epoch = step, ev.get("epoch", self.epoch)
                self.last_step_time = ev.get("time")
                if _finite(ev.get("loss")):
                    self.steps.append(step)
                    self.loss.append(float(ev["loss"]))
                if _finite(ev.get("lr")):
                    self.lr_steps.append(step)
                    self.lr.append(float(ev["lr"]))
                if _finite(ev.get("grad_norm")):
                    self.gn_steps.append(step)
                    self.grad_norm.append(float(ev["grad_norm"]))
                if _finite(ev.get("tokens_per_s")):
                    self.tokens_per_s = float(ev["tokens_per_s"])
                mem = ev.get("gpu_mem_used") or ev.get("gpu_mem_peak")
                if _finite(mem):
                    self.gpu_mem = int(mem)
            elif kind == run_events.EVAL and _finite(ev.get("val_loss")):
                changed = True
                self._rewind_series(self.val_steps, self.val_loss, int(step or 0))
                self.val_steps.append(int(step or 0))
                self.val_loss.append(float(ev["val_loss"]))
                if _finite(ev.get("best_val_loss")):
                    self.best_val_loss, self.best_step = float(ev["best_val_loss"]), ev.get("best_step")
            elif kind == run_events.EARLY_STOP:
                changed = True
                self.early_stop_step = step
                self.best_step = ev.get("best_step", self.best_step)
            elif kind == run_events.UNFREEZE and isinstance(step, int):
                changed = True
                self.unfreezes.append((step, f"layer {ev.get('layer')} unfrozen"))
            elif kind == run_events.ALIGNMENT and isinstance(step, int):
                changed = True
                prefix = "val " if ev.get("phase") == "eval" else ""
                # GRPO/RLOO log one mean per reward source ("rewards/<name>/mean") next to their sum.
                keys = [*ALIGNMENT_SHOWN, *sorted(k for k in ev if k.startswith("rewards/") and k.endswith("/mean"))]
                for key in keys:
                    if _finite(ev.get(key)):
                        xs, ys = self.alignment.setdefault(prefix + key, ([], []))
                        self._rewind_series(xs, ys, step)
                        xs.append(step)
                        ys.append(float(ev[key]))
            elif kind == run_events.RESUME:
                changed = True
                digits = re.search(r"checkpoint-(\d+)", str(ev.get("checkpoint") or ""))
                self.resumes.append(int(digits.group(1)) if digits else self.step)
        return changed

    @staticmethod
    def _rewind_series(xs: list[int], ys: list[float], step: int) -> None:
        while xs and xs[-1] >= step:
            xs.pop()
            ys.pop()

    def _rewind(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: the new points replace the old ones,
        so the curve joins at the checkpoint instead of doubling back."""
        for xs, ys in ((self.steps, self.loss), (self.lr_steps, self.lr), (self.gn_steps, self.grad_norm),
                       (self.val_steps, self.val_loss)):
            self._rewind_series(xs, ys, step)

    def eta_seconds(self) -> Optional[float]:
        if not (self.total_steps and self.first_step is not None and self.first_step_time and self.last_step_time):
            return None
        done = self.step - self.first_step
        if done <= 0:
            return None
        per_step = (self.last_step_time - self.first_step_time) / done
        return max(0.0, (self.total_steps - self.step) * per_step)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, height=320, margin=dict(l=40, r=20, t=40, b=40),
                      annotations=[dict(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)])
    return fig


def loss_figure(s: RunSeries, title: str = "Loss") -> go.Figure:
    """Training loss (raw and smoothed) and validation loss against step; early stop and best marked."""
    if not s.steps and not s.val_steps:
        return _empty(title, "No loss logged yet")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=s.steps, y=s.loss, name="train loss", mode="lines",
                             line=dict(color=COLORS[0], width=1), opacity=0.35))
    fig.add_trace(go.Scatter(x=s.steps, y=smooth(s.loss), name="train loss (smoothed)", mode="lines",
                             line=dict(color=COLORS[0], width=2)))
    if s.val_steps:
        fig.add_trace(go.Scatter(x=s.val_steps, y=s.val_loss, name="validation loss", mode="lines+markers",
                                 line=dict(color=COLORS[1], width=2)))
    if s.best_step is not None and s.best_val_loss is not None:
        fig.add_trace(go.Scatter(x=[s.best_step], y=[s.best_val_loss], name="best checkpoint", mode="markers",
                                 marker=dict(symbol="star", size=14, color="#f59e0b",
                                             line=dict(color="black", width=1))))
    if s.early_stop_step is not None:
        fig.add_vline(x=s.early_stop_step, line_dash="dash", line_color="#6b7280",
                      annotation_text="early stop", annotation_position="top left")
    for step in s.resumes:
        fig.add_vline(x=step, line_dash="dot", line_color="#9ca3af", annotation_text="resumed")
    for step, label in s.unfreezes:
        fig.add_vline(x=step, line_dash="dashdot", line_color="#0d9488", annotation_text=label,
                      annotation_position="bottom right")
    fig.update_layout(title=title, height=320, margin=dict(l=40, r=20, t=40, b=40), xaxis_title="step",
                      yaxis_title="loss", legend=dict(orientation="h", y=-0.25), uirevision="loss")
    return fig


def lr_grad_figure(s: RunSeries) -> go.Figure:
    """Learning rate and gradient norm, one above the other, sharing the step axis; alignment runs get a
    third panel with the reward margins and accuracies their trainers log."""
    if not s.lr_steps and not s.gn_steps:
        return _empty("Learning rate and gradient norm", "Nothing logged yet")
    rows = 3 if s.alignment else 2
    titles = ("learning rate", "gradient norm") + (("rewards (alignment)",) if s.alignment else ())
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.1, subplot_titles=titles)
    fig.add_trace(go.Scatter(x=s.lr_steps, y=s.lr, name="learning rate", mode="lines",
                             line=dict(color=COLORS[2])), row=1, col=1)
    fig.add_trace(go.Scatter(x=s.gn_steps, y=s.grad_norm, name="gradient norm", mode="lines",
                             line=dict(color=COLORS[3])), row=2, col=1)
    for i, (name, (xs, ys)) in enumerate(sorted(s.alignment.items())):
        fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines+markers",
                                 line=dict(color=COLORS[(4 + i) % len(COLORS)])), row=3, col=1)
    fig.update_layout(height=320 + (140 if s.alignment else 0), margin=dict(l=50, r=20, t=40, b=40),
                      showlegend=bool(s.alignment), legend=dict(orientation="h", y=-0.15), uirevision="lr")
    fig.update_xaxes(title_text="step", row=rows, col=1)
    # A constant schedule would be drawn around zero on plotly's default ±1 range; start the axis at 0
    # and show small rates as 2e-4 rather than 0.0002 rounded to 0.
    fig.update_yaxes(rangemode="tozero", exponentformat="e", row=1, col=1)
    if s.lr and max(s.lr) == min(s.lr) and s.lr[0] > 0:
        fig.update_yaxes(range=[0, 1.5 * s.lr[0]], row=1, col=1)
    return fig


def overlay_figure(series: dict[str, RunSeries]) -> go.Figure:
    """Several runs' losses on one chart: smoothed training loss solid, validation loss dashed."""
    if not series:
        return _empty("Compare runs", "Pick runs to compare")
    fig = go.Figure()
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        if s.steps:
            fig.add_trace(go.Scatter(x=s.steps, y=smooth(s.loss), name=f"{name} train", mode="lines",
                                     line=dict(color=color, width=2)))
        if s.val_steps:
            fig.add_trace(go.Scatter(x=s.val_steps, y=s.val_loss, name=f"{name} val", mode="lines+markers",
                                     line=dict(color=color, width=2, dash="dash")))
    fig.update_layout(title="Compare runs", height=360, margin=dict(l=40, r=20, t=40, b=40), xaxis_title="step",
                      yaxis_title="loss", legend=dict(orientation="h", y=-0.25))
    return fig


def metric_figure(runs: dict[str, dict[str, Any]]) -> go.Figure:
    """A task metric across checkpoints (solid, left axis) beside the validation loss (dotted, right axis),
    per run: did the metric peak before the loss bottomed out? runs: {name: {"metric": title,
    "points": [(step, value)], "val_steps": [...], "val_loss": [...]}}."""
    if not any(r.get("points") for r in runs.values()):
        return _empty("Task metric across checkpoints",
                      "No checkpoint metrics yet: evaluate with task metrics and checkpoints 'all'")
    fig = go.Figure()
    titles = []
    for i, (name, r) in enumerate(runs.items()):
        color = COLORS[i % len(COLORS)]
        if r.get("points"):
            titles.append(r["metric"])
            xs, ys = zip(*r["points"])
            fig.add_trace(go.Scatter(x=list(xs), y=list(ys), name=f"{name} {r['metric']}", mode="lines+markers",
                                     line=dict(color=color, width=2)))
        if r.get("val_steps"):
            fig.add_trace(go.Scatter(x=r["val_steps"], y=r["val_loss"], name=f"{name} val loss", yaxis="y2",
                                     mode="lines+markers", line=dict(color=color, width=1, dash="dot")))
    fig.update_layout(title="Task metric across checkpoints", height=360, margin=dict(l=40, r=40, t=40, b=40),
                      xaxis_title="step", yaxis_title=" / ".join(dict.fromkeys(titles)),
                      yaxis2=dict(title="validation loss", overlaying="y", side="right"),
                      legend=dict(orientation="h", y=-0.25))
    return fig
