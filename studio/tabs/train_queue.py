"""The Train tab's overnight pieces: the run queue, the command preview, the evaluation report (its own
module, studio/tabs/eval_report.py) and browser notifications. Mounted by studio/tabs/train.py.

The queue lives in WORKSPACE/queue.json (backend.runs.queue); a worker thread in this process starts the
next run through the runner when the device is free. The evaluation runs as `python -m backend.cli
eval RUN_DIR --json` in a child process (eval_report), so no model is ever loaded in the UI process.
"""
from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from backend.runs import queue as run_queue
from backend.runs import rundir
from backend.core import access
from backend.core.config import ConfigError, config_to_yaml, save_config, validate_config
from backend.core.errors import UserError
from backend.core.models import ModelError
from backend.runs.notify import webhook_problem
from studio.context import StudioContext, bind
from studio.tabs import eval_report

BAD_INPUT = (UserError, ConfigError, ModelError, FileNotFoundError)
QUEUE_COLUMNS = ["#", "config", "state", "run", "note", "id"]
STATE_LABELS = {"queued": "queued", "running": "running", "completed": "completed", "stopped": "stopped",
                "failed": "failed", "out_of_memory": "out of memory"}
# Zero-width separator: the text after it only makes each notification a new value, so it always fires.
NOTE_SEP = "\u2063"
NOTIFY_JS = """(msg) => {
  const body = (msg || '').split('\\u2063')[0];
  if (body && 'Notification' in window && Notification.permission === 'granted') {
    new Notification('Fine-Tune Studio', {body: body});
  }
  return [];
}"""
PERMISSION_JS = """() => {
  if ('Notification' in window && Notification.permission === 'default') { Notification.requestPermission(); }
  return [];
}"""


def error_html(text: str) -> str:
    return f"<span class='ft-error'>{html.escape(text)}</span>"


# ---- pure helpers (tested without a browser) --------------------------------------------------

def queue_rows(workspace: Path) -> tuple[list[list[Any]], Optional[str]]:
    """(rows of the queue table, the queue's notice sentence or None)."""
    data = run_queue.read_queue(workspace)
    rows = []
    for i, e in enumerate(data["entries"], 1):
        rows.append([i, e.get("label") or "", STATE_LABELS.get(e["state"], e["state"]), e.get("run_id") or "",
                     e.get("error") or "", e["id"]])
    return rows, data.get("notice")


def queue_config(workspace: Path, rc: dict[str, Any]) -> dict[str, Any]:
    """Validate the session's RunConfig (its paths against the studio's policy, a malformed webhook too) and
    append it to the queue."""
    access.policy(workspace).run_config(rc)
    cfg = validate_config(rc)
    problem = webhook_problem(cfg.notify.webhook)
    if problem:
        raise UserError(problem)
    return run_queue.add_to_queue(workspace, cfg)


def preview_command(workspace: Path, rc: dict[str, Any]) -> tuple[str, str]:
    """(markdown with the exact command, the YAML). The YAML is saved under WORKSPACE/configs so the
    command shown runs as is; the same config always gets the same file."""
    try:
        cfg = validate_config(rc)
    except ConfigError as e:
        return error_html(str(e)), ""
    text = config_to_yaml(cfg)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    path = Path(workspace).resolve() / "configs" / f"{rundir.slugify(cfg.name or cfg.method.name) or 'run'}-{digest}.yaml"
    save_config(cfg, path)
    cmd = f"ftstudio train --workspace {Path(workspace).resolve()} {path}"
    md = (f"The exact command that trains this configuration without the studio (the YAML below is saved "
          f"as `{path}`):\n\n```bash\n{cmd}\n```")
    return md, text


def notifications(watch: dict[str, Any], workspace: Path) -> tuple[dict[str, Any], list[str]]:
    """Compare the runs and the queue with the last look; sentences for runs that ended and a queue that
    emptied since then. The first look only takes note, so old runs never notify."""
    states = {r["id"]: r["state"] for r in rundir.list_runs(workspace)}
    entries = run_queue.read_queue(workspace)["entries"]
    queue_open = any(e["state"] in run_queue.OPEN_STATES for e in entries)
    messages: list[str] = []
    if watch.get("init"):
        before = watch.get("runs", {})
        for run_id, state in states.items():
            if before.get(run_id) in rundir.ACTIVE_STATES and state in rundir.FINAL_STATES:
                messages.append(f"Run {run_id} {STATE_LABELS.get(state, state)}.")
        if watch.get("queue_open") and not queue_open:
            ok = sum(1 for e in entries if e["state"] == "completed")
            messages.append(f"The queue has finished: {ok} of {len(entries)} run(s) completed.")
    return {"init": True, "runs": states, "queue_open": queue_open}, messages


# ---- the UI -------------------------------------------------------------------------------------

def on_preview(ws: Path, rc):
    """Reads the RunConfig; shows the headless command and the YAML it saved."""
    md, text = preview_command(ws, rc)
    return gr.update(visible=True), md, text


def build_preview(ctx: StudioContext, button: gr.Button) -> None:
    """The output of the "Preview command" button, placed right under the Start row."""
    with gr.Group(visible=False) as box:
        cmd_md = gr.Markdown(elem_id="train-preview-command")
        yaml_code = gr.Code(language="yaml", interactive=False, label="Full configuration (YAML)",
                            elem_id="train-preview-yaml")
    button.click(bind(on_preview, ctx.workspace), ctx.run_config, [box, cmd_md, yaml_code], queue=False)


@dataclass
class QueueView:
    """The queue and evaluation components, so the handlers below can name them."""
    ctx: StudioContext
    notice: Any = None
    qtable: Any = None
    up: Any = None
    down: Any = None
    remove: Any = None
    empty: Any = None
    carry_on: Any = None
    picked: Any = None
    report: Any = None
    note_box: Any = None
    watch: Any = None
    timer: Any = None


def _queue_layout(v: QueueView) -> None:
    """The queue list and its controls."""
    rows0, notice0 = queue_rows(v.ctx.workspace)
    gr.Markdown("### Queue\n<span class='ft-help'>**Add to queue** puts the configuration above at the end; "
                "runs start in order when a device is free (on a machine with several GPUs, side by side, each "
                "on its own GPUs), also after a studio restart. A run that fails is marked and the next one starts.</span>")
    v.notice = gr.Markdown(error_html(notice0) if notice0 else "", elem_id="queue-notice")
    v.qtable = gr.Dataframe(value=rows0, headers=QUEUE_COLUMNS, interactive=False, wrap=True, elem_id="queue-table")
    with gr.Row():
        v.up = gr.Button("▲ Move up", elem_id="queue-up", size="sm")
        v.down = gr.Button("▼ Move down", elem_id="queue-down", size="sm")
        v.remove = gr.Button("Remove", elem_id="queue-remove", size="sm")
        v.empty = gr.Button("Empty the queue", elem_id="queue-clear", size="sm", variant="stop")
        v.carry_on = gr.Button("Resume the queue", elem_id="queue-resume", size="sm")
    v.picked = gr.State(None)


def mount(ctx: StudioContext, add_button: gr.Button, start_button: gr.Button, run_selected: Any,
          live: gr.State) -> None:
    """The queue list and its controls, the evaluation report, and notifications (end of the Train tab)."""
    run_queue.ensure_worker(ctx.workspace)  # a restarted studio carries on with what was queued
    v = QueueView(ctx)
    _queue_layout(v)
    v.report = eval_report.build(ctx)
    v.note_box = gr.Textbox(visible="hidden", elem_id="notify-text")
    v.watch = gr.State({})
    v.timer = gr.Timer(2.0)
    wire(v, add_button, start_button, run_selected, live)


# ---- handlers: the workspace first where they need it (bound in wire) ------------------------

def render_queue(ws: Path, message: Optional[str] = None):
    rows, qnotice = queue_rows(ws)
    shown = message if message is not None else (error_html(qnotice) if qnotice else "")
    return rows, shown


def on_add(ws: Path, rc):
    """Reads the RunConfig; appends it to the queue."""
    try:
        entry = queue_config(ws, rc)
    except BAD_INPUT as e:
        return render_queue(ws, error_html(str(e)))
    run_queue.ensure_worker(ws)
    return render_queue(ws, f"Queued **{html.escape(entry['label'])}**. It starts when the runs before it "
                            "have ended.")


def on_pick(evt: gr.SelectData):
    """Reads the clicked queue row; remembers its entry id."""
    row = evt.row_value or []
    return row[-1] if row else None


def edit_queue(ws: Path, action: str, entry_id):
    # No docstring: bound under the name of the lambdas it replaced, and Gradio shows a docstring in the API page.
    if not entry_id and action not in ("clear", "resume"):
        return render_queue(ws, "Click a row of the queue first.")
    try:
        if action == "clear":
            gone = run_queue.clear_queue(ws)
            return render_queue(ws, f"Emptied the queue ({gone} entr{'y' if gone == 1 else 'ies'} removed; a "
                                    "running run keeps going until it ends).")
        if action == "resume":
            paused = run_queue.queue_paused(ws)
            run_queue.resume_queue(ws)
            return render_queue(ws, "The queue carries on with the next entry." if paused
                                else "The queue is not paused.")
        if action == "remove":
            run_queue.remove_entry(ws, entry_id)
        else:
            run_queue.move_entry(ws, entry_id, -1 if action == "up" else 1)
    except BAD_INPUT as e:
        return render_queue(ws, error_html(str(e)))
    return render_queue(ws)


def on_timer(ws: Path, w):
    """Timer (2 s): the queue list, and a notification when a run or the queue has ended."""
    last = (w or {}).get("rows")
    w, messages = notifications(w, ws)
    rows, _ = queue_rows(ws)
    text = (" ".join(messages) + NOTE_SEP + str(len(w["runs"])) + rundir.now_iso()) if messages else gr.skip()
    # The table is sent only when a row changed: redrawing an unchanged table every 2 s kept the
    # browser's renderer busy for nothing.
    shown, w["rows"] = (gr.skip() if last == rows else rows), rows
    return w, shown, text


# ---- events -----------------------------------------------------------------------------------

def wire(v: QueueView, add_button: gr.Button, start_button: gr.Button, run_selected: Any, live: gr.State) -> None:
    ws, listing = v.ctx.workspace, [v.qtable, v.notice]
    add_button.click(bind(on_add, ws), v.ctx.run_config, listing, queue=False)
    add_button.click(None, None, None, js=PERMISSION_JS, queue=False)
    start_button.click(None, None, None, js=PERMISSION_JS, queue=False)
    v.qtable.select(on_pick, None, v.picked, queue=False)
    for button, action in ((v.up, "up"), (v.down, "down"), (v.remove, "remove")):
        button.click(bind(edit_queue, ws, action, name="<lambda>"), v.picked, listing, queue=False)
    v.empty.click(bind(edit_queue, ws, "clear", None, name="<lambda>"), None, listing, queue=False)
    v.carry_on.click(bind(edit_queue, ws, "resume", None, name="<lambda>"), None, listing, queue=False)
    v.timer.tick(bind(on_timer, ws), v.watch, [v.watch, v.qtable, v.note_box], queue=False, show_progress="hidden")
    v.note_box.change(None, v.note_box, None, js=NOTIFY_JS, queue=False)
    eval_report.wire(v.report, run_selected, live)
    v.ctx.extras["queue_table"] = v.qtable
