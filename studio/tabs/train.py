"""The Train tab: start, stop and resume runs, watch them live, list and compare them.

The tab holds no training state. A 1-second timer reads the viewed run's status and the events
appended since the last tick (a byte offset kept per browser session), so closing the page or
restarting the studio loses nothing: the first tick finds a running run again. The timers run only
while the tab is shown (`follow_tabs`), and a tick sends only what changed: nothing at all when the
run's files are as they were, and the charts only when new points arrived.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from backend.runs import runner
from backend.runs import rundir
from backend.core import access
from backend.core.config import ConfigError, RunConfig, config_to_yaml, load_config, validate_config
from backend.core.errors import UserError
from backend.core.models import ModelError
from backend.runs.notify import webhook_problem
from backend.training.checks import data_problems, start_problems
from backend.core.choices import save_choices, selected_run_dir
from studio.context import StudioContext, bind
from studio.progress import shows
from studio.plots import RunSeries, loss_figure, lr_grad_figure, metric_figure, overlay_figure
from studio.tabs import cluster_bundle, eval_report, trackers, train_queue, train_sweep

BAD_INPUT = (UserError, ConfigError, ModelError, FileNotFoundError)
# The comparison overlay's choices: the loss curves, or the headline task metric over checkpoints.
COMPARE_PLOTS = {"loss": "training and validation loss", "task metric": "headline task metric by checkpoint"}
RUN_COLUMNS = ["run", "state", "method", "model", "best val loss", "duration", "adapter eval loss",
               "eval loss vs base", "headline metric"]
TEXT = {
    "intro": "Start trains the configuration below (dataset from the **Dataset** tab, model and method from "
             "the **Method** tab) in its own process. Charts update every second; you can close the page or "
             "restart the studio and come back: the run keeps going.",
    "no_run": "No run yet. Check the configuration above and press **Start**.",
    "pick_run": "Select a run in the table to see it here.",
    "stopped_click": "Stop asked: the run saves a checkpoint and its adapter, then ends.",
}
STATE_WORDS = {
    "starting": "is starting: loading the model and the data",
    "running": "is training",
    "stopping": "is stopping: finishing its current step, then saving a checkpoint and the adapter",
    "completed": "completed",
    "stopped": "stopped",
    "failed": "failed",
    "out_of_memory": "ran out of GPU memory",
}


# ---- pure helpers (tested without a browser) --------------------------------------------------

def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def config_summary(rc: dict[str, Any]) -> tuple[str, str]:
    """(markdown naming the model, dataset and method; the YAML) for the config the Start button uses."""
    try:
        cfg = validate_config(rc)
    except ConfigError as e:
        return f"<span class='ft-error'>{html.escape(str(e))}</span>", ""
    t = cfg.train
    steps = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    val = (f"validation file `{cfg.data.validation_path}`" if cfg.data.validation_path
           else f"{cfg.data.validation_split:.0%} held out for validation" if cfg.data.validation_split
           else "no validation set")
    early = (f"early stopping after {cfg.early_stopping.patience} evaluations without improvement"
             if cfg.early_stopping.patience else "no early stopping")
    problems = data_problems(cfg)
    warn = ("\n\n<span class='ft-error' id='train-problems'>Fix before starting: "
            f"{html.escape(' '.join(problems.values()))}</span>" if problems else "")
    md = (f"**Model** `{cfg.model}` · **Dataset** `{cfg.data.path}` ({val}) · **Method** {cfg.method.name}"
          f"\n\n{steps}, batch {t.batch_size} × {t.gradient_accumulation} accumulation, learning rate "
          f"{t.learning_rate:g}, {t.precision}, {t.optimizer}, evaluate every {t.eval_steps} steps, {early}."
          + warn)
    return md, config_to_yaml(cfg)


def state_sentence(run_id: str, status: dict[str, Any], run_dir: Optional[Path] = None) -> str:
    state = status.get("state")
    if state == rundir.MISSING:
        return f"<span class='ft-error'>{html.escape(status.get('error', ''))}</span>"
    words = STATE_WORDS.get(state, str(state))
    text = f"Run **{run_id}** {words}."
    detail = status.get("error") or status.get("note")
    if state == "completed" and status.get("adapter"):
        text += f" Adapter saved in `{status['adapter']}`."
    if detail:
        cls = "ft-error" if state in ("failed", "out_of_memory") else "ft-help"
        text += f"\n\n<span class='{cls}'>{html.escape(str(detail))}</span>"
    if state == "stopping":
        text += " " + stopping_wait(status)
    stalled = rundir.stall(Path(run_dir), status) if run_dir else None
    if stalled:
        text += f"\n\n<span class='ft-error' id='train-stalled'>{html.escape(stalled['message'])}</span>"
    return text


def stopping_wait(status: dict[str, Any], now: Optional[float] = None) -> str:
    """How long a graceful stop still waits before it stops the run by force, and the way out."""
    deadline = rundir.parse_iso(status.get("stop_deadline"))
    if deadline is None:
        return "Press **Stop now** to end it at once (the last checkpoint is kept)."
    left = max(0.0, deadline - (time.time() if now is None else now))
    return (f"It is stopped by force in **{fmt_duration(left)}** if it has not ended by then (the wait follows "
            f"its step time). Press **Stop now** to end it at once; the last checkpoint is kept.")


def with_message(lv: dict[str, Any], text: str) -> str:
    """The state line, with the last button's message kept under it until the user acts again."""
    message = lv.get("message")
    return f"{text}\n\n{message}" if message else text


def progress_html(series: RunSeries, status: dict[str, Any]) -> str:
    """The run's bar: its steps, or, before the first step, the data preparation the trainer reports
    (status.json's `preparing`: tokenizing a large file takes minutes)."""
    total = series.total_steps or status.get("total_steps")
    step = max(series.step, int(status.get("step") or 0))
    frac = min(1.0, step / total) if total else 0.0
    label = f"step {step} / {total}" if total else f"step {step}"
    preparing = status.get("preparing")
    if not step and isinstance(preparing, dict) and status.get("state") in rundir.ACTIVE_STATES:
        frac = min(1.0, max(0.0, float(preparing.get("fraction") or 0.0)))
        label = f"preparing the data: {html.escape(str(preparing.get('text') or ''))}"
    return (f"<div id='train-progress' style='width:100%;background:#e5e7eb;border-radius:6px;height:22px;"
            f"position:relative'><div style='width:{frac * 100:.1f}%;background:#2563eb;height:100%;"
            f"border-radius:6px'></div><span style='position:absolute;left:8px;top:1px;font-size:0.85em;"
            f"color:#111'>{label} ({frac:.0%})</span></div>")


def stats_markdown(series: RunSeries, status: dict[str, Any], estimate_bytes: Optional[int]) -> str:
    active = status.get("state") in rundir.ACTIVE_STATES
    total, this_leg = rundir.run_times(status)
    legs = len(status.get("legs") or []) + (1 if active else 0)
    elapsed = fmt_duration(total)
    if legs > 1 and this_leg is not None:  # a resumed run: the whole training time, and this leg's
        elapsed += f"** (this leg **{fmt_duration(this_leg)}**, {legs} legs)"
    else:
        elapsed += "**"
    eta = series.eta_seconds() if active else None
    tps = f"{series.tokens_per_s:,.0f}" if series.tokens_per_s is not None else "–"
    mem = fmt_bytes(series.gpu_mem) if series.gpu_mem is not None else "– (no GPU)"
    est = fmt_bytes(estimate_bytes) if estimate_bytes else "–"
    best = f"{series.best_val_loss:.4f} (step {series.best_step})" if series.best_val_loss is not None else "–"
    epoch = f"{series.epoch:.2f}" if isinstance(series.epoch, (int, float)) else "–"
    return (f"epoch **{epoch}** · elapsed **{elapsed} · ETA **{fmt_duration(eta)}** · "
            f"tokens/s **{tps}** · GPU memory **{mem}** (estimate {est}) · best validation loss **{best}**")


def runs_rows(workspace: Path) -> list[list[Any]]:
    rows = []
    for r in rundir.list_runs(workspace):
        best = r.get("best_val_loss")
        model = r.get("model") or ""
        rows.append([r["id"], r["state"], r.get("method") or "", Path(model).name if "/" in model else model,
                     round(best, 4) if isinstance(best, (int, float)) else None, fmt_duration(r.get("duration")),
                     *eval_report.eval_numbers(Path(r["dir"])), eval_report.headline_text(Path(r["dir"]))])
    return rows


def new_live(run_dir: Optional[str]) -> dict[str, Any]:
    """Per-session view of one run: where in events.jsonl we are, what has been folded in, the run files'
    signature at the last tick and the texts last sent (so a tick sends only what changed)."""
    return {"run_dir": run_dir, "offset": 0, "series": RunSeries(), "estimate": None, "estimated": False,
            "files": None, "shown": {}}


# The files a tick reads; when none of them changed, nothing on the page can have changed either,
# except the clock-driven texts of an active run (elapsed, ETA, the stop's countdown).
WATCHED_FILES = (rundir.STATUS_FILE, rundir.EVENTS_FILE, rundir.HEARTBEAT_FILE, rundir.LOG_FILE)


def files_signature(run_dir: Path) -> tuple:
    """(size, mtime) of each watched file of the run; a cheap stat, no reading."""
    sig = []
    for name in WATCHED_FILES:
        try:
            st = (run_dir / name).stat()
            sig.append((st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append(None)
    return tuple(sig)


def _estimate_bytes(run_dir: Path) -> Optional[int]:
    try:
        from backend.estimator import estimate
        return int(estimate(load_config(run_dir / rundir.CONFIG_FILE)).total_bytes)
    except Exception:  # noqa: BLE001 - the estimate is context, never a reason to fail the view
        return None


def refresh_live(live: dict[str, Any], workspace: Path) -> tuple[dict[str, Any], bool, dict[str, Any]]:
    """Attach to a running run if none is viewed; fold new events in. Returns (live, charts changed, status)."""
    if not live.get("run_dir"):
        active = runner.find_active_runs(workspace)
        if not active:
            return live, False, {}
        live = new_live(active[0]["dir"])
    run_dir = Path(live["run_dir"])
    status = rundir.read_status(run_dir)
    events, live["offset"] = rundir.read_events(run_dir, live["offset"])
    changed = live["series"].add(events)
    if not live["estimated"] and status.get("state") != rundir.MISSING:
        live["estimate"], live["estimated"] = _estimate_bytes(run_dir), True
    return live, changed, status


def series_of(run_dir: Path) -> RunSeries:
    s = RunSeries()
    s.add(rundir.read_events(run_dir)[0])
    return s


# ---- the tab ----------------------------------------------------------------------------------

@dataclass
class TrainView:
    """The tab's components, so the handlers below can name the ones they read and write."""
    ctx: StudioContext
    summary: Any = None
    yaml_view: Any = None
    start: Any = None
    stop: Any = None
    stop_now: Any = None
    resume: Any = None
    add_queue: Any = None
    state_md: Any = None
    progress: Any = None
    stats: Any = None
    loss_plot: Any = None
    lr_plot: Any = None
    log: Any = None
    table: Any = None
    compare: Any = None
    compare_what: Any = None
    refresh: Any = None
    overlay: Any = None
    live: Any = None
    tick: Any = None
    slow_tick: Any = None
    listed: Any = None

    @property
    def view_outputs(self) -> list:
        return [self.live, self.state_md, self.progress, self.stats, self.loss_plot, self.lr_plot, self.log]


def _controls_layout(v: TrainView) -> None:
    """The config summary, trackers, the Start/Stop row with its panels, and the live view of one run."""
    ctx = v.ctx
    md0, yaml0 = config_summary(ctx.run_config.value or RunConfig().model_dump(mode="json"))
    v.summary = gr.Markdown(md0, elem_id="train-config")
    with gr.Accordion("Full configuration (YAML) and the command that repeats it", open=False):
        v.yaml_view = gr.Code(yaml0, language="yaml", interactive=False, elem_id="train-yaml")
        gr.Markdown("From a shell: save the YAML as `run.yaml` and run `ftstudio train run.yaml`.")
    trackers.build_trackers(ctx)
    with gr.Row():
        v.start = gr.Button("Start", variant="primary", elem_id="train-start")
        v.stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        v.stop_now = gr.Button("Stop now", variant="stop", size="sm", elem_id="train-stop-now")
        v.resume = gr.Button("Resume", elem_id="train-resume")
        v.add_queue = gr.Button("Add to queue", elem_id="train-add-queue")
        preview = gr.Button("Preview command", elem_id="train-preview")
    train_queue.build_preview(ctx, preview)
    cluster_bundle.build(ctx)
    v.state_md = gr.Markdown(TEXT["no_run"], elem_id="train-state")
    v.progress = gr.HTML(progress_html(RunSeries(), {}), elem_id="train-progress-bar")
    v.stats = gr.Markdown("", elem_id="train-stats")
    with gr.Row():
        v.loss_plot = gr.Plot(loss_figure(RunSeries()), label="Loss", elem_id="train-loss-plot")
        v.lr_plot = gr.Plot(lr_grad_figure(RunSeries()), label="Learning rate and gradient norm",
                            elem_id="train-lr-plot")
    v.log = gr.Textbox(label="Log (last lines of train.log)", lines=8, max_lines=8, interactive=False,
                       autoscroll=True, elem_id="train-log")


def _runs_layout(v: TrainView) -> None:
    """The runs table and the loss overlay of chosen runs."""
    ws = v.ctx.workspace
    gr.Markdown("### Runs")
    with gr.Row():
        v.table = gr.Dataframe(value=runs_rows(ws), headers=RUN_COLUMNS, interactive=False, wrap=True,
                               elem_id="runs-table", scale=4)
    gr.Markdown("<span class='ft-help'>Click a run to view it above.</span>")
    with gr.Row():
        v.compare = gr.Dropdown(choices=[r[0] for r in runs_rows(ws)], value=[], multiselect=True,
                                label="Compare runs (overlay their loss curves)", elem_id="runs-compare", scale=4)
        v.compare_what = gr.Radio(choices=list(COMPARE_PLOTS), value="loss", label="Plot",
                                  elem_id="runs-compare-what", scale=2)
        v.refresh = gr.Button("↻ Refresh", elem_id="runs-refresh", scale=1)
    v.overlay = gr.Plot(overlay_figure({}), label="Compare", elem_id="runs-overlay-plot")


def build(ctx: StudioContext) -> None:
    gr.Markdown("## Train\n" + TEXT["intro"])
    v = TrainView(ctx)
    _controls_layout(v)
    _runs_layout(v)
    train_sweep.mount_table(ctx)  # the sweeps' comparison table: studio/tabs/train_sweep.py
    v.live = gr.State(new_live(None))
    v.listed = gr.State(None)  # the runs-table rows last sent, so the 5-s refresh sends only a change
    # Both timers start stopped: the page opens on the Dataset tab, and follow_tabs runs them only
    # while the Train tab is shown, so a hidden Train tab keeps the browser's renderer idle.
    v.tick = gr.Timer(1.0, active=False)
    v.slow_tick = gr.Timer(5.0, active=False)
    ctx.extras["train_timers"] = [v.tick, v.slow_tick]
    ctx.extras["train_table"] = (v.compare, v.listed, v.table)
    wire(v)


def timers_update(shown: bool):
    """The Train tab's two timers, running only while the tab is shown."""
    return gr.Timer(active=shown), gr.Timer(active=shown)


def follow_tabs(ctx: StudioContext, tabs: dict[str, Any]) -> None:
    """Selecting a tab starts the Train tab's timers (its own) or stops them (any other); studio/app.py
    calls this once every tab is built. Coming back, the first tick reads what was written meanwhile
    (the events from the saved offset), and the runs table is refreshed at once."""
    timers = ctx.extras["train_timers"]
    compare, listed, table = ctx.extras["train_table"]
    for tab_id, tab in tabs.items():
        shown = tab_id == "train"
        event = tab.select(bind(timers_update, shown, name="<lambda>"), None, timers, queue=False,
                           show_progress="hidden")
        if shown:
            event.then(bind(on_slow_tick, ctx.workspace), [compare, listed], [listed, table, compare],
                       queue=False, show_progress="hidden")


# ---- handlers: each takes the workspace or the context first (bound in wire) ------------------

def render(ws: Path, lv: dict[str, Any], force: bool = False):
    """Reads the session's live view; writes the run's state, progress, stats, charts and log.

    Without `force` (a timer tick) only what changed is sent: a text equal to the one last sent, and
    the figures when no new points arrived, are gr.skip(), so the browser redraws nothing. When none
    of the run's files changed, a finished run costs one stat per file and an active one a re-render
    of its clock-driven texts only."""
    viewed = lv.get("run_dir")
    # Stat before the reads: a write landing between them makes the next tick read again, never miss it.
    before = files_signature(Path(viewed)) if viewed else None
    if viewed and not force and lv.get("files") == before:
        status = rundir.read_status(Path(lv["run_dir"])) if lv.get("active") else None
        if status is None:
            return [lv] + [gr.skip()] * 6
        state_t, progress_t, stats_t, log_t = _changed_texts(lv, _texts(lv, status, with_log=False))
        return [lv, state_t, progress_t, stats_t, gr.skip(), gr.skip(), log_t]
    lv, changed, status = refresh_live(lv, ws)
    if not lv.get("run_dir"):
        return [lv] + [gr.skip()] * 6
    run_dir = Path(lv["run_dir"])
    series = lv["series"]
    # A run attached just now has no signature from before its reads: the next tick reads it once more.
    lv["files"] = before if lv["run_dir"] == viewed else None
    lv["active"] = status.get("state") in rundir.ACTIVE_STATES
    charts = (loss_figure(series, f"Loss: {run_dir.name}"), lr_grad_figure(series)) \
        if (changed or force) else (gr.skip(), gr.skip())
    state_t, progress_t, stats_t, log_t = _changed_texts(lv, _texts(lv, status), force)
    return [lv, state_t, progress_t, stats_t, *charts, log_t]


def _texts(lv: dict[str, Any], status: dict[str, Any], with_log: bool = True) -> dict[str, Any]:
    run_dir = Path(lv["run_dir"])
    series = lv["series"]
    texts = {"state": with_message(lv, state_sentence(run_dir.name, status, run_dir)),
             "progress": progress_html(series, status), "stats": stats_markdown(series, status, lv["estimate"])}
    if with_log:
        texts["log"] = rundir.tail_log(run_dir, 30)
    return texts


def _changed_texts(lv: dict[str, Any], texts: dict[str, Any], force: bool = False) -> list[Any]:
    """The state, progress, stats and log texts: each one new since the last send, or gr.skip()."""
    shown = lv.setdefault("shown", {})
    out = []
    for key in ("state", "progress", "stats", "log"):
        if key in texts and (force or shown.get(key) != texts[key]):
            shown[key] = texts[key]
            out.append(texts[key])
        else:
            out.append(gr.skip())
    return out


def on_tick(ws: Path, lv):
    """Timer (1 s, while the Train tab is shown): tails the viewed run's events from the saved offset;
    sends only what changed."""
    return render(ws, lv)


def on_config(rc):
    """Reads the session RunConfig; writes the summary and the YAML."""
    return config_summary(rc)


def on_start(ctx: StudioContext, rc, lv):
    """Reads the RunConfig; starts a run and views it."""
    try:
        access.policy(ctx.workspace).run_config(rc)
        cfg = validate_config(rc)
        if webhook_problem(cfg.notify.webhook):
            raise UserError(webhook_problem(cfg.notify.webhook))
        # Data, mapping, template and objective are checked here, in a second, not after a model load.
        problem = start_problems(cfg)
        if problem:
            raise UserError(f"Not started: {problem}")
        for key in ("chat_client", "arena"):  # the chat's and the arena's models would compete for GPU memory
            if ctx.extras.get(key) is not None:
                ctx.extras[key].shutdown()
        run_dir = runner.start_run(ctx.workspace, cfg)
        remember_run(ctx.workspace, Path(run_dir).name)
    except BAD_INPUT as e:
        return [lv, f"<span class='ft-error'>{html.escape(str(e))}</span>"] + [gr.skip()] * 5
    except OSError as e:
        return [lv, f"<span class='ft-error'>The run could not be started: {html.escape(str(e))}</span>"] \
            + [gr.skip()] * 5
    return render(ctx.workspace, new_live(str(run_dir)), force=True)


def on_stop(ws: Path, lv):
    """Reads the viewed run; asks it to stop (checkpoint + adapter), escalating after 30 s."""
    if not lv.get("run_dir"):
        return [lv, TEXT["no_run"]] + [gr.skip()] * 5
    status = rundir.read_status(Path(lv["run_dir"]))
    if status.get("state") not in rundir.ACTIVE_STATES:
        return [lv, f"Run **{Path(lv['run_dir']).name}** is not running "
                    f"({status.get('state')}); nothing to stop."] + [gr.skip()] * 5
    grace = runner.stop_in_background(Path(lv["run_dir"]))
    lv = {**lv, "message": f"<span class='ft-help'>Stop asked at {time.strftime('%H:%M:%S')}: the run finishes "
                           f"its current step and saves (waiting up to {fmt_duration(grace)}).</span>"}
    return render(ws, lv, force=True)


def on_stop_now(ws: Path, lv):
    """Reads the viewed run; ends it at once, without waiting for its step (the last checkpoint is kept)."""
    if not lv.get("run_dir"):
        return [lv, TEXT["no_run"]] + [gr.skip()] * 5
    status = runner.stop_now(Path(lv["run_dir"]))
    lv = {**lv, "message": f"<span class='ft-help'>{html.escape(str(status.get('error') or 'Stopped.'))}</span>"}
    return render(ws, lv, force=True)


def on_resume(ws: Path, lv):
    """Reads the viewed run; resumes it from its last checkpoint in the same directory."""
    if not lv.get("run_dir"):
        return [lv, TEXT["pick_run"]] + [gr.skip()] * 5
    try:
        runner.resume_run(Path(lv["run_dir"]))
    except BAD_INPUT as e:
        # Kept under the state line until the next action: the next tick must not wipe it after a second.
        lv = {**lv, "message": f"<span class='ft-error'>{html.escape(str(e))}</span>"}
        return render(ws, lv, force=True)
    return render(ws, {**lv, "message": None}, force=True)


def view_row(ws: Path, row: Optional[list], lv):
    """The clicked runs-table row (its values); views that run from its first event."""
    row = row if row is not None else []
    if not row:
        return [lv] + [gr.skip()] * 6
    remember_run(ws, str(row[0]))
    return render(ws, new_live(str(rundir.runs_root(ws) / str(row[0]))), force=True)


def remember_run(ws: Path, run_id: str) -> None:
    """The run the Train tab shows is one of the user's choices: it comes back after a reload."""
    try:
        save_choices(ws, selected_run=run_id)
    except OSError:
        pass  # a read-only workspace loses only this convenience


def restore_view(ws: Path, lv):
    """Page load: view the run the user last looked at, if it still exists."""
    run_dir = selected_run_dir(ws)
    if run_dir is None:
        return [lv] + [gr.skip()] * 6
    return render(ws, new_live(str(run_dir)), force=True)


def on_refresh(ws: Path, chosen):
    """Reads the workspace; writes the runs table and the compare choices."""
    rows = runs_rows(ws)
    ids = [r[0] for r in rows]
    return rows, gr.update(choices=ids, value=[c for c in (chosen or []) if c in ids])


def on_slow_tick(ws: Path, chosen, listed):
    """Timer (5 s, while the Train tab is shown): the runs table and compare choices, only when a row
    changed (a redrawn table costs the browser more than the read costs here)."""
    rows, compare = on_refresh(ws, chosen)
    if rows == listed:
        return listed, gr.skip(), gr.skip()
    return rows, rows, compare


def metric_series(run_dir: Path) -> dict[str, Any]:
    """The run's headline task metric over its evaluated checkpoints, and its validation losses."""
    s = series_of(run_dir)
    name, points = eval_report.metric_points(run_dir, s.step or None)
    title = eval_report.METRICS[name].title if name in eval_report.METRICS else (name or "")
    return {"metric": title, "points": points, "val_steps": s.val_steps, "val_loss": s.val_loss}


def on_compare(ws: Path, chosen, what: str = "loss"):
    """Reads the chosen runs' events (and eval.json for the task metric); writes the overlay chart."""
    runs = {}
    for run_id in chosen or []:
        run_dir = rundir.runs_root(ws) / str(run_id)
        if run_dir.is_dir():
            runs[str(run_id)] = metric_series(run_dir) if what == "task metric" else series_of(run_dir)
    return metric_figure(runs) if what == "task metric" else overlay_figure(runs)


# ---- events -----------------------------------------------------------------------------------

def wire(v: TrainView) -> None:
    ctx, ws, live, view_outputs = v.ctx, v.ctx.workspace, v.live, v.view_outputs
    refresh = bind(on_refresh, ws)

    def on_select(evt: gr.SelectData, lv):
        """Reads the clicked table row; views that run from its first event."""
        # Not a partial: Gradio finds the gr.SelectData argument from the function's type hints.
        return view_row(ws, evt.row_value, lv)

    v.tick.tick(bind(on_tick, ws), live, view_outputs, queue=False, show_progress="hidden")
    v.slow_tick.tick(bind(on_slow_tick, ws), [v.compare, v.listed], [v.listed, v.table, v.compare], queue=False,
                     show_progress="hidden")
    ctx.run_config.change(on_config, ctx.run_config, [v.summary, v.yaml_view], queue=False)
    starting = shows("Checking the data, mapping and template, then starting the run…", bind(on_start, ctx),
                     [ctx.run_config, live])
    v.start.click(starting, [ctx.run_config, live], view_outputs, concurrency_id="train-control",
                  concurrency_limit=1).then(refresh, v.compare, [v.table, v.compare])
    v.stop.click(bind(on_stop, ws), live, view_outputs, concurrency_id="train-control", concurrency_limit=1) \
        .then(refresh, v.compare, [v.table, v.compare])
    v.stop_now.click(bind(on_stop_now, ws), live, view_outputs, queue=False) \
        .then(refresh, v.compare, [v.table, v.compare])
    v.resume.click(shows("Checking the checkpoints and resuming the run…", bind(on_resume, ws), [live]), live,
                   view_outputs, concurrency_id="train-control", concurrency_limit=1)
    selected = v.table.select(on_select, live, view_outputs, queue=False)
    v.refresh.click(refresh, v.compare, [v.table, v.compare], queue=False)
    v.compare.change(bind(on_compare, ws), [v.compare, v.compare_what], v.overlay)
    v.compare_what.change(bind(on_compare, ws), [v.compare, v.compare_what], v.overlay)
    ctx.extras["train_live"] = live
    ctx.extras.setdefault("restore_steps", []).append((bind(restore_view, ws), live, view_outputs))
    train_queue.mount(ctx, v.add_queue, v.start, selected, live)
