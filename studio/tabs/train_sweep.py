"""Sweeps in the studio: the Method tab's "Sweep" section and the Train tab's comparison table.

The Method tab's section picks 1-3 fields of the configuration and their values; "Queue the sweep"
appends every combination to the run queue (`backend.runs.sweep_queue`), whose worker trains them one
after another. The Train tab's table reads a sweep's runs from their directories (`backend.runs.sweep`):
best validation loss, the evaluation report's figures, time and peak memory, the winner starred.
"Load this run's settings" puts the winner's (or the clicked run's) config into the session, and the
page's restore chain (studio/app.py) then shows it in every tab. All the work is in the backend.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from backend.core import access
from backend.core.choices import settings_from
from backend.core.config import ConfigError, validate_config
from backend.core.errors import UserError
from backend.core.models import ModelError
from backend.runs import queue as run_queue
from backend.runs import sweep as sw
from backend.runs.notify import webhook_problem
from backend.runs.sweep_queue import queue_sweep
from studio.context import StudioContext, bind

BAD_INPUT = (UserError, ConfigError, ModelError, FileNotFoundError)
SLOTS = 3  # sw.MAX_FIELDS rows of (field, values)
COLUMNS = ["", "settings", "state", "best val loss", "at step", "eval loss", "task metric", "time",
           "peak GPU memory", "run id"]
TEXT = {
    "intro": "Train a grid of runs: pick up to three fields and their values (separated by commas). Every "
             "combination is one run of the configuration above with those values; the runs go into the "
             "Train tab's queue and are compared there.",
    "prune": "Stop clearly losing runs (median rule: a run whose best validation loss is worse than the median "
             "of the other runs' at the same step is stopped)",
    "none": "No sweep yet. Set one up in the Method tab's **Sweep** section.",
}


def _error(text: str) -> str:
    return f"<span class='ft-error'>{html.escape(text)}</span>"


# ---- pure helpers (tested without a browser) --------------------------------------------------

def axes_from(pairs: list[tuple[Optional[str], Optional[str]]]) -> list[sw.SweepAxis]:
    """The filled (field, values) rows as axes; a row with only one of the two is a sentence."""
    axes = []
    for name, values in pairs:
        name, values = (name or "").strip(), (values or "").strip()
        if not name and not values:
            continue
        if not name:
            raise UserError(f"The values {values!r} have no field: choose the field they are for.")
        axes.append(sw.SweepAxis(name, tuple(sw.parse_values(name, values))))
    return axes


def plan_markdown(rc: dict[str, Any], pairs: list[tuple[Optional[str], Optional[str]]]) -> str:
    """What "Queue the sweep" would queue (run names), or the sentence saying why it would not."""
    if not any((n or "").strip() or (v or "").strip() for n, v in pairs):
        return ""
    try:
        runs = sw.plan_sweep(validate_config(rc), axes_from(pairs))
    except BAD_INPUT as e:
        return _error(str(e))
    names = ", ".join(f"`{r.name.split(' · ')[0]}`" for r in runs)
    return f"**{len(runs)} runs:** {names}"


def queue_from_studio(workspace: Path, rc: dict[str, Any], pairs: list[tuple[Optional[str], Optional[str]]],
                      prune: bool) -> dict[str, Any]:
    """The session's config checked as the queue's Add does (paths, webhook), then the sweep queued."""
    policy = access.policy(workspace)
    policy.run_config(rc)
    cfg = validate_config(rc)
    axes = axes_from(pairs)
    # Every run of the grid, not only the base: a swept data path, model or webhook gets the same checks.
    for run in sw.plan_sweep(cfg, axes):
        policy.run_config(run.config.model_dump(mode="json"))
        problem = webhook_problem(run.config.notify.webhook)
        if problem:
            raise UserError(problem)
    return queue_sweep(workspace, cfg, axes, "median" if prune else None)


def _fmt_time(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "–"
    m, sec = divmod(int(s), 60)
    return f"{m}:{sec:02d}"


def table_rows(table: dict[str, Any]) -> list[list[Any]]:
    """The comparison's rows for the Dataframe, the winner starred."""
    rows = []
    for r in table["rows"]:
        metric = f"{r['metric']} {r['metric_value']:.3g}" if r.get("metric") else ""
        rows.append(["★ winner" if r["winner"] else "", r["name"].split(" · ")[0], r.get("state") or "",
                     round(r["best_val_loss"], 4) if isinstance(r.get("best_val_loss"), float) else None,
                     r.get("best_step"), round(r["eval_loss"], 4) if isinstance(r.get("eval_loss"), float) else None,
                     metric, _fmt_time(r.get("seconds")),
                     f"{r['peak_memory'] / 2**30:.2f} GB" if isinstance(r.get("peak_memory"), (int, float)) else "–",
                     r.get("run_id") or ""])
    return rows


def sweep_view(workspace: Path, sweep_id: Optional[str]) -> tuple[list[tuple[str, str]], Optional[str], list[list[Any]], str]:
    """(picker choices, the sweep shown (the newest when none is chosen), table rows, the note)."""
    records = sw.list_sweeps(workspace)
    choices = [(sw.sweep_label(r), r["id"]) for r in records]
    ids = [c[1] for c in choices]
    shown = sweep_id if sweep_id in ids else (ids[0] if ids else None)
    if shown is None:
        return choices, None, [], TEXT["none"]
    try:
        table = sw.comparison(workspace, shown, run_queue.read_queue(workspace)["entries"])
    except BAD_INPUT as e:
        return choices, shown, [], _error(str(e))
    pruned = [f"{r['name'].split(' · ')[0]}: {sw.prune_sentence(r['pruned'])}" for r in table["rows"] if r.get("pruned")]
    failed = [f"{r['name'].split(' · ')[0]}: {r['error']}" for r in table["rows"]
              if r.get("state") in ("failed", "out_of_memory") and r.get("error")]
    note = f"**{html.escape(table['note'])}**"
    for line in pruned:
        note += f"\n\n<span class='ft-help'>{html.escape(line)}</span>"
    for line in failed:
        note += "\n\n" + _error(line)
    return choices, shown, table_rows(table), note


def settings_of(workspace: Path, sweep_id: Optional[str], run_id: Optional[str]) -> tuple[dict[str, Any], str]:
    """(the RunConfig dict of the clicked run, or of the winner when none is clicked; the sentence said)."""
    if not sweep_id:
        raise UserError("Choose a sweep first.")
    table = sw.comparison(workspace, sweep_id)
    rows = [r for r in table["rows"] if r.get("run_id")]
    row = next((r for r in rows if r["run_id"] == run_id), None) if run_id else None
    if row is None and run_id:
        raise UserError(f"The run {run_id} is not one of the sweep {sweep_id}'s runs.")
    if row is None:
        if table["winner"] is None:
            raise UserError("This sweep has no winner yet (no run completed with a validation loss); click a run "
                            "in the table to load its settings instead.")
        row = table["rows"][table["winner"]]
    new = settings_from(row["run_dir"])
    which = "the winner" if row.get("winner") else "the chosen run"
    return new, (f"Loaded the settings of {which}, **{html.escape(row['name'])}** ({row['run_id']}), into the "
                 "Method tab.")


# ---- the Method tab's section -------------------------------------------------------------------

def build_method_section(ctx: StudioContext) -> None:
    """The "Sweep" accordion of the Method tab (it reads the session's RunConfig, never writes it)."""
    with gr.Accordion("Sweep: train a grid of runs", open=False, elem_id="sweep-section"):
        gr.Markdown(f"<span class='ft-help'>{TEXT['intro']}</span>")
        fields, values = [], []
        for i in range(SLOTS):
            with gr.Row():
                fields.append(gr.Dropdown(choices=list(sw.COMMON_FIELDS), value=None, allow_custom_value=True,
                                          label=f"Field {i + 1}", elem_id=f"sweep-field-{i}", scale=2))
                values.append(gr.Textbox(label="Values", placeholder="e.g. 1e-4, 3e-4", elem_id=f"sweep-values-{i}",
                                         scale=3))
        prune = gr.Checkbox(value=False, label=TEXT["prune"], elem_id="sweep-prune")
        plan = gr.Markdown(elem_id="sweep-plan")
        button = gr.Button("Queue the sweep", elem_id="sweep-queue")
        result = gr.Markdown(elem_id="sweep-result")
    inputs = [ctx.run_config, *[c for pair in zip(fields, values) for c in pair]]
    for comp in [*fields, *values]:
        comp.change(on_plan, inputs, plan, queue=False, show_progress="hidden")
    button.click(bind(on_queue, ctx.workspace), [*inputs, prune], result, queue=False)


def _pairs(flat: tuple[Any, ...]) -> list[tuple[Optional[str], Optional[str]]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def on_plan(rc, *flat):
    """Reads the RunConfig and the sweep rows; writes the list of runs the sweep would queue."""
    return plan_markdown(rc, _pairs(flat))


def on_queue(ws: Path, rc, *flat_and_prune):
    """Reads the RunConfig, the sweep rows and the pruning choice; queues every run of the grid."""
    *flat, prune = flat_and_prune
    try:
        record = queue_from_studio(ws, rc, _pairs(tuple(flat)), bool(prune))
    except BAD_INPUT as e:
        return _error(str(e))
    run_queue.ensure_worker(ws)
    return (f"Queued **{len(record['runs'])} runs** as sweep `{record['id']}`"
            f"{' with median pruning' if record.get('prune') else ''}. They train one after another from the "
            "Train tab's queue; its **Sweeps** table compares them.")


# ---- the Train tab's table ----------------------------------------------------------------------

def mount_table(ctx: StudioContext) -> None:
    """The Train tab's "Sweeps" section; its Load button's event joins the page's restore chain."""
    choices0, shown0, rows0, note0 = sweep_view(ctx.workspace, None)
    gr.Markdown("### Sweeps\n<span class='ft-help'>One row per run of the sweep; the winner is the completed run "
                "with the lowest validation loss. Click a row to load that run's settings instead of the "
                "winner's.</span>")
    with gr.Row():
        picker = gr.Dropdown(choices=choices0, value=shown0, label="Sweep", elem_id="sweep-picker", scale=4)
        refresh = gr.Button("↻ Refresh", elem_id="sweep-refresh", scale=1)
    table = gr.Dataframe(value=rows0, headers=COLUMNS, interactive=False, wrap=True, elem_id="sweep-table")
    note = gr.Markdown(note0, elem_id="sweep-note")
    picked = gr.State(None)
    load = gr.Button("Load this run's settings", elem_id="sweep-load")
    status = gr.Markdown(elem_id="sweep-load-status")
    timer = gr.Timer(5.0)
    timer.ft_role = "sweep-table"  # not one of the Train tab's run timers (tests/unit/test_train_polling.py)
    view = bind(on_view, ctx.workspace)
    refresh.click(view, picker, [picker, table, note], queue=False)
    picker.focus(view, picker, [picker, table, note], queue=False)  # sweeps queued since: in the list
    # The timer leaves the picker alone once a sweep is shown: an update under an open list closes it.
    timer.tick(bind(on_tick, ctx.workspace), picker, [picker, table, note], queue=False, show_progress="hidden")
    picker.input(view, picker, [picker, table, note], queue=False)
    picker.input(forget_pick, None, picked, queue=False)
    table.select(on_pick, None, picked, queue=False)
    event = load.click(bind(on_load, ctx.workspace), [picker, picked], [ctx.run_config, status])
    ctx.extras.setdefault("settings_events", []).append(event)


def on_view(ws: Path, sweep_id):
    """Reads the chosen sweep; writes the picker, the comparison table and its note."""
    choices, shown, rows, note = sweep_view(ws, sweep_id)
    return gr.update(choices=choices, value=shown), rows, note


def on_tick(ws: Path, sweep_id):
    """Timer (5 s): the shown sweep's table; the picker only when it showed none and a sweep exists."""
    choices, shown, rows, note = sweep_view(ws, sweep_id)
    picker = gr.update(choices=choices, value=shown) if shown != sweep_id else gr.skip()
    return picker, rows, note


def forget_pick():
    """Another sweep was chosen: the clicked run of the last one no longer counts."""
    return None


def on_pick(evt: gr.SelectData):
    """Reads the clicked row; remembers its run id."""
    row = evt.row_value or []
    return row[-1] if row and row[-1] else None


def on_load(ws: Path, sweep_id, run_id):
    """Reads the sweep and the clicked run; writes the RunConfig (the restore chain then fills the tabs)."""
    try:
        new, said = settings_of(ws, sweep_id, run_id)
    except BAD_INPUT as e:
        return gr.skip(), _error(str(e))
    return new, said
