"""The Merge tab: merge a run's adapter into its base, combine adapters, download an adapter.

Merging loads whole models, so every merge runs as `ftstudio merge` in a child process
(backend.export.merge.run_merge_subprocess); this module only shows its progress lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from backend.core import access
from backend.export import merge as mg
from backend.core.config import ConfigError
from backend.core.errors import UserError
from backend.core.models import ModelError
from studio.context import StudioContext, bind
from studio.tabs import merge_export, merge_push

BAD_INPUT = (UserError, ConfigError, ModelError)
TEXT = {
    "intro": "Fold a finished run's adapter into its base model to get one ordinary model folder "
             "(no PEFT needed to load it), combine several LoRA adapters of the same base, or download "
             "an adapter. Merging runs in its own process; the rest of the studio stays usable.",
    "run": "A finished run, or type the folder of any adapter (the one holding adapter_config.json).",
    "out": "Where the merged model goes: a new or empty folder (an earlier merge's folder is replaced).",
    "combine": "Pick two or more LoRA adapters trained on the same base. Linear adds the weighted updates; "
               "TIES keeps the largest share of each update (density) and resolves sign conflicts; DARE drops "
               "a random share and rescales the rest.",
    "weights": "One weight per adapter, comma separated, in the order picked (empty = equal weights).",
    "density": "TIES/DARE: share of each adapter's update that is kept.",
    "no_pick": "Pick a run or type an adapter folder first.",
}


def _runs(ws: Path) -> list[tuple[str, str]]:
    try:
        return mg.adapter_runs(ws)
    except OSError:
        return []


def describe(choice: str) -> str:
    """Markdown about an adapter: what it is, whether it merges, its size against the merged model's."""
    if not (choice or "").strip():
        return TEXT["no_pick"]
    try:
        src = mg.locate_adapter(choice)
        ok, reason = mg.can_merge(src)
        size = mg.sizes(choice)
    except BAD_INPUT as e:
        return f"<span class='ft-error'>{e}</span>"
    lines = [f"**Adapter:** `{src.adapter_dir}` ({mg.human_bytes(size['adapter_bytes'])})",
             f"**Base model:** `{src.base}`" + (f" · method {src.method}" if src.method else ""),
             f"**Merged model size:** about {mg.human_bytes(size['merged_bytes'])}"]
    if not ok:
        lines.append(f"<span class='ft-error'>{reason}</span>")
    elif mg.trained_on_4bit(src):
        lines.append("QLoRA run: the adapter is merged into the base loaded in 16-bit, not into 4-bit weights.")
    return "\n\n".join(lines)


def default_out(ws: Path, choice: str) -> str:
    p = Path((choice or "").strip() or "adapter")
    name = p.parent.name if p.name == "adapter" else p.name
    return str(ws / "merged" / (re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"))


def _bar(fraction: float) -> str:
    n = int(round(fraction * 20))
    return "█" * n + "░" * (20 - n)


def stream_job(cmd: list[str]) -> Iterator[str]:
    """Markdown status lines for a merge/combine child process, ending with the result or the error."""
    yield "Starting the merge process…"
    for ev in mg.run_merge_subprocess(cmd):
        if "progress" in ev:
            yield f"`{_bar(ev['progress'])}` {int(ev['progress'] * 100)}% · {ev.get('message', '')}"
        elif "result" in ev:
            r = ev["result"]
            kind = "Merged model" if r.get("merged", True) else "Combined adapter"
            notes = "".join(f"\n\n{n}" for n in r.get("notes") or [])
            yield (f"<span class='ft-ok'>{kind} saved to `{r['out']}` ({mg.human_bytes(r.get('bytes'))}).</span>"
                   f"{notes}\n\nPick it in the Chat tab, or load it with `AutoModelForCausalLM.from_pretrained`.")
        else:
            yield f"<span class='ft-error'>{ev.get('error')}</span>"


def parse_weights(text: str, n: int) -> list[float]:
    text = (text or "").strip()
    if not text:
        return [1.0 / n] * n if n else []
    try:
        weights = [float(w) for w in re.split(r"[,\s]+", text) if w]
    except ValueError:
        raise UserError(f"Weights must be numbers separated by commas, like 0.5, 0.5; got '{text}'.") from None
    if len(weights) != n:
        raise UserError(f"Give one weight per adapter: {n} adapters picked but {len(weights)} weights.")
    return weights


@dataclass
class MergeView:
    """The tab's components, for wire() to attach the handlers below to."""
    ctx: StudioContext
    run: Any = None
    refresh: Any = None
    info: Any = None
    out: Any = None
    merge_btn: Any = None
    zip_btn: Any = None
    status: Any = None
    zip_status: Any = None
    zip_file: Any = None
    picks: Any = None
    combine_in: list = field(default_factory=list)  # weights, method, density, output folder, into base
    combine_btn: Any = None
    combo_status: Any = None


def _merge_layout(m: MergeView) -> None:
    """The run picker, its description, and the merge and zip buttons."""
    ws = m.ctx.workspace
    with gr.Row():
        m.run = gr.Dropdown(choices=_runs(ws), value=None, label="Run or adapter folder", info=TEXT["run"],
                            allow_custom_value=True, elem_id="merge-run", scale=4)
        m.refresh = gr.Button("↻ Refresh runs", scale=1, elem_id="merge-refresh")
    m.info = gr.Markdown(TEXT["no_pick"], elem_id="merge-info")
    m.out = gr.Textbox(label="Output folder", info=TEXT["out"], elem_id="merge-out")
    with gr.Row():
        m.merge_btn = gr.Button("Merge into base", variant="primary", elem_id="merge-button")
        m.zip_btn = gr.Button("Download adapter (zip)", elem_id="merge-zip")
    m.status = gr.Markdown("", elem_id="merge-status")
    m.zip_status = gr.Markdown("", elem_id="merge-zip-status")
    m.zip_file = gr.File(label="Adapter zip", interactive=False, elem_id="merge-zip-file")


def _combine_layout(m: MergeView) -> None:
    """The "Combine adapters" accordion."""
    ws = m.ctx.workspace
    with gr.Accordion("Combine adapters", open=False, elem_id="merge-combine"):
        gr.Markdown(TEXT["combine"])
        m.picks = gr.Dropdown(choices=_runs(ws), value=[], multiselect=True, allow_custom_value=True,
                              label="Adapters to combine", elem_id="combine-runs")
        with gr.Row():
            weights = gr.Textbox(label="Weights", info=TEXT["weights"], placeholder="0.5, 0.5",
                                 elem_id="combine-weights")
            method = gr.Radio(list(mg.COMBINE_METHODS), value="ties", label="Method", elem_id="combine-method")
            density = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="Density", info=TEXT["density"],
                                elem_id="combine-density")
        with gr.Row():
            combo_out = gr.Textbox(label="Output folder", value=str(ws / "merged" / "combined"),
                                   elem_id="combine-out")
            into_base = gr.Checkbox(False, label="Also merge into the base (a full model instead of an adapter)",
                                    elem_id="combine-into-base")
        m.combine_in = [weights, method, density, combo_out, into_base]
        m.combine_btn = gr.Button("Combine", elem_id="combine-button")
        m.combo_status = gr.Markdown("", elem_id="combine-status")


def build(ctx: StudioContext) -> None:
    gr.Markdown("## Merge\n" + TEXT["intro"])
    m = MergeView(ctx)
    _merge_layout(m)
    _combine_layout(m)
    wire(m)


# ---- handlers: the workspace first where they need it (bound in wire) ------------------------

def on_refresh(ws: Path, current: str, chosen: list[str]):
    """Reads the workspace; writes both run pickers."""
    choices = _runs(ws)
    return gr.update(choices=choices, value=current), gr.update(choices=choices, value=chosen)


def _adapter(ws: Path, choice: str) -> str:
    """The picked run or adapter folder, resolved, when the studio may read it (UserError otherwise)."""
    return str(access.policy(ws).readable(choice, "run or adapter folder"))


def on_pick(ws: Path, choice: str):
    """Reads the picked run; writes the description and a default output folder."""
    if not (choice or "").strip():
        return describe(choice), ""
    try:
        _adapter(ws, choice)
    except UserError as e:
        return f"<span class='ft-error'>{e}</span>", default_out(ws, choice)
    return describe(choice), default_out(ws, choice)


def on_merge(ws: Path, choice: str, out_dir: str) -> Iterator[Any]:
    """Reads the run and output folder; streams the merge status."""
    if not (choice or "").strip():
        yield TEXT["no_pick"]
        return
    try:
        # Both paths are checked before any work starts: the merge loads whole models.
        source = _adapter(ws, choice)
        out = access.policy(ws).writable((out_dir or "").strip() or default_out(ws, choice), "merge output folder")
        ok, reason = mg.can_merge(mg.locate_adapter(source))
    except BAD_INPUT as e:
        yield f"<span class='ft-error'>{e}</span>"
        return
    if not ok:
        yield f"<span class='ft-error'>{reason}</span>"
        return
    yield from stream_job(mg.merge_command([source], str(out)))


def on_zip(ws: Path, choice: str):
    """Reads the run; writes the zip file and its status line."""
    if not (choice or "").strip():
        return None, TEXT["no_pick"]
    try:
        source = _adapter(ws, choice)
        target = ws / "exports" / (Path(default_out(ws, choice)).name + "-adapter.zip")
        z = mg.export_zip(source, target)
    except BAD_INPUT as e:
        return None, f"<span class='ft-error'>{e}</span>"
    except OSError as e:
        return None, f"<span class='ft-error'>Could not write the zip ({e}). Check free disk space.</span>"
    return str(z), f"Adapter zipped to `{z}` ({mg.human_bytes(z.stat().st_size)})."


def on_combine(ws: Path, chosen: list[str], w: str, how: str, dens: float, dest: str, full: bool) -> Iterator[str]:
    """Reads the combine settings; streams the combine status."""
    chosen = [c for c in (chosen or []) if c and c.strip()]
    if len(chosen) < 2:
        yield "Pick at least two adapters to combine."
        return
    try:
        ws_list = parse_weights(w, len(chosen))
        chosen = [_adapter(ws, c) for c in chosen]
        dest = str(access.policy(ws).writable((dest or "").strip() or str(ws / "merged" / "combined"),
                                              "combined adapter folder"))
    except UserError as e:
        yield f"<span class='ft-error'>{e}</span>"
        return
    yield from stream_job(mg.merge_command(chosen, dest, ws_list, how, float(dens), bool(full)))


# ---- events -----------------------------------------------------------------------------------

def wire(m: MergeView) -> None:
    ws = m.ctx.workspace
    m.refresh.click(bind(on_refresh, ws), [m.run, m.picks], [m.run, m.picks], queue=False)
    m.run.change(bind(on_pick, ws), m.run, [m.info, m.out], queue=False)
    m.merge_btn.click(bind(on_merge, ws), [m.run, m.out], m.status, concurrency_id="merge", concurrency_limit=1)
    m.zip_btn.click(bind(on_zip, ws), m.run, [m.zip_file, m.zip_status])
    m.combine_btn.click(bind(on_combine, ws), [m.picks, *m.combine_in], m.combo_status,
                        concurrency_id="merge", concurrency_limit=1)
    merge_export.build(m.ctx, m.run)
    merge_push.build(m.ctx, m.run)
    m.ctx.extras["merge_run"] = m.run
