"""The Dataset tab: pick a file, check how it was read, see every token the model will train on.

All parsing, templating and labelling is done by backend.data.records / backend.data.templates; this
module only lays out widgets, keeps the loaded dataset in a small per-app cache, and
writes the chosen settings into the RunConfig's `data` section.
"""
from __future__ import annotations

import html
import json
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from pydantic import ValidationError

from backend.core.config import ConfigError, DataConfig, validate_config
from backend.data.records import FORMATS, LoadedDataset, load_rows, split_rows
from backend.core.errors import UserError
from backend.core.models import DEFAULT_MODEL, ModelError
from backend.data.templates import (TEMPLATE_TITLES, TEMPLATES, get_tokenizer, preview_packed, preview_row,
                               token_length_stats)
from studio.context import StudioContext
from backend.core.paths import SAMPLES_DIR

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
NONE = "(none)"
MAP_ROLES = ("prompt", "input", "completion", "system", "messages", "text", "chosen", "rejected", "label")
TABLE_ROWS = 200          # rows shown in the table
STATS_ROWS = 3000         # rows tokenized for the histogram (the CLI counts all)
TOKENS_SHOWN = 2048       # tokens drawn in the coloured preview
BAD_INPUT = (UserError, ModelError, ConfigError, FileNotFoundError)

TEXT = {
    "intro": "Pick a bundled sample or upload your own file (JSONL, JSON, CSV/TSV, Parquet or plain text). "
             "The layout is detected; correct the column mapping if it guessed wrong.",
    "legend": ("<span class='tok graded'>graded</span> trains (label = token id) · "
               "<span class='tok prompt'>prompt</span> masked (label −100) · "
               "<span class='tok special'>special</span> · <span class='tok padding'>padding</span> · "
               "<span class='tok truncated'>truncated</span> cut by max length · "
               "<span class='tok boundary'>│</span> packed rows joined. Hover a token for its id and label."),
    "mapping": "Which column plays which part. Leave a role on (none) if the file has no such column.",
    "objective_hint": {"preference": "Preference pairs train with DPO, ORPO or a reward model: pick that "
                                     "objective on the Method tab (their prompts also feed GRPO/RLOO).",
                       "kto": "Labelled completions train with KTO: pick it on the Method tab.",
                       "text": "Plain text trains every token (continued pre-training)."},
}

STYLE = """<style>
#token-preview .toks{font-family:ui-monospace,monospace;font-size:13px;line-height:1.9;white-space:pre-wrap;word-break:break-all}
.tok{border-radius:3px;padding:1px 0;margin:0 1px}
.tok.graded{background:#bbf7d0;color:#14532d}
.tok.prompt{background:#e5e7eb;color:#374151}
.tok.special{background:#e9d5ff;color:#581c87}
.tok.padding{background:#f3f4f6;color:#9ca3af}
.tok.truncated{background:#fecaca;color:#7f1d1d;text-decoration:line-through}
.tok.boundary{color:#dc2626;font-weight:700}
#rendered-text pre{white-space:pre-wrap;font-size:13px;max-height:360px;overflow:auto}
</style>"""


# ---------------------------------------------------------------- pure view helpers

def sample_choices() -> list[str]:
    if not SAMPLES_DIR.exists():
        return []
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if p.suffix in DATA_SUFFIXES)


def _short(value: Any, n: int = 160) -> str:
    s = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "…"


def rows_table(ds: LoadedDataset) -> list[list[Any]]:
    """One line per row: number, source line and a short text per field."""
    out = []
    for i, (row, line) in enumerate(zip(ds.rows[:TABLE_ROWS], ds.lines)):
        if "messages" in row:
            parts = " ⏎ ".join(f"{m['role']}: {m['content']}" for m in row["messages"])
            out.append([i, line, _short(parts, 300), ""])
        elif "text" in row:
            out.append([i, line, _short(row["text"], 300), ""])
        else:
            first = row.get("prompt", "")
            rest = {k: v for k, v in row.items() if k != "prompt"}
            out.append([i, line, _short(first), _short(rest, 300)])
    return out


def tokens_html(tokens: list[dict], note: Optional[str] = None) -> str:
    spans = []
    for t in tokens[:TOKENS_SHOWN]:
        if t.get("boundary"):
            spans.append("<span class='tok boundary' title='next packed row starts here'>│</span>")
        text = t["text"] or "∅"
        shown = html.escape(text).replace("\n", "↵\n")
        label = "—" if t["label"] is None else t["label"]
        tip = f"id {t['id']} · label {label} · attention {t['attention']} · {t['role']}"
        if "row" in t:
            tip += f" · row {t['row']}"
        spans.append(f"<span class='tok {t['role']}' title='{html.escape(tip)}'>{shown}</span>")
    more = len(tokens) - TOKENS_SHOWN
    tail = f"<p>… {more} more token(s) not drawn; see the token table.</p>" if more > 0 else ""
    head = f"<p class='ft-help'>{html.escape(note)}</p>" if note else ""
    return f"{STYLE}{head}<div class='toks'>{''.join(spans)}</div>{tail}"


def token_rows(tokens: list[dict]) -> list[list[Any]]:
    return [[i, t["text"], t["id"], "" if t["label"] is None else t["label"], t["attention"], t["role"]]
            for i, t in enumerate(tokens)]


def length_figure(stats: dict, max_length: int):
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=stats["lengths"], nbinsx=40, marker_color="#60a5fa", name="rows"))
    fig.add_vline(x=max_length, line_dash="dash", line_color="#dc2626",
                  annotation_text=f"max length {max_length}", annotation_position="top right")
    fig.update_layout(
        title=f"Tokens per row — {stats['truncated']} of {stats['counted']} ({stats['truncated_share']:.1%}) "
              "longer than max length",
        xaxis_title="tokens", yaxis_title="rows", height=300, margin=dict(l=40, r=20, t=50, b=40),
        showlegend=False)
    return fig


def stats_markdown(ds: LoadedDataset, stats: dict, max_length: int) -> str:
    sampled = f" (first {stats['counted']} of {stats['total']} rows)" if stats["counted"] < stats["total"] else ""
    lines = [f"**{len(ds.rows)} rows** · tokens per row{sampled}: min {stats['min']}, median {stats['median']}, "
             f"mean {stats['mean']}, max {stats['max']} · {stats['tokens']:,} tokens in all"]
    if stats["truncated"]:
        lines.append(f"<span class='ft-error'>{stats['truncated']} row(s) ({stats['truncated_share']:.1%}) are "
                     f"longer than {max_length} tokens and will be cut; {stats['lost_answers']} lose their whole "
                     "answer and are left out of training. Raise max length or shorten them.</span>")
    return "\n\n".join(lines)


def status_markdown(ds: LoadedDataset) -> str:
    name = Path(ds.path).name
    msg = (f"<span class='ft-ok'>Loaded **{name}**: {len(ds.rows)} rows, read as **{ds.source_format}** → "
           f"**{ds.format}**.</span>")
    if ds.skipped:
        msg += (f" <span class='ft-error'>{ds.skipped} bad row(s) skipped</span> (listed below; fix them in "
                "the file, or leave them out).")
    hint = TEXT["objective_hint"].get(ds.format)
    return msg + (f"\n\n{hint}" if hint else "")


def errors_markdown(ds: LoadedDataset) -> str:
    if not ds.errors:
        return ""
    items = "\n".join(f"- {html.escape(s)}" for s in ds.error_sentences(20))
    more = f"\n\n… and {len(ds.errors) - 20} more." if len(ds.errors) > 20 else ""
    return f"**Skipped rows**\n\n{items}{more}"


def error_sentence(e: Exception) -> str:
    if isinstance(e, BAD_INPUT):
        return f"<span class='ft-error'>{html.escape(str(e))}</span>"
    return (f"<span class='ft-error'>Something went wrong: {html.escape(type(e).__name__)}: "
            f"{html.escape(str(e))}. Nothing was changed; try another file or setting.</span>")


def with_data(run_config: dict, **fields: Any) -> dict:
    """A copy of the RunConfig dict with `data` fields replaced, validated by DataConfig."""
    cfg = json.loads(json.dumps(run_config or {}))
    data = dict(cfg.get("data") or {})
    data.update(fields)
    cfg["data"] = checked_data(data).model_dump(mode="json")
    return cfg


def checked_data(data: dict) -> DataConfig:
    """DataConfig, or a UserError whose sentence names the bad setting."""
    try:
        return DataConfig(**data)
    except ValidationError:
        try:
            validate_config({"data": data})
        except ConfigError as e:
            raise UserError(str(e).replace("The run configuration has", "The data settings have")) from None
        raise


# ---------------------------------------------------------------- loaded-dataset cache

class DatasetCache:
    """The last few parsed files, so switching rows or settings never re-reads the file."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[str, LoadedDataset] = OrderedDict()

    def load(self, path: str, mapping: Optional[dict], fmt: str, skip: bool) -> LoadedDataset:
        p = Path(path)
        stamp = p.stat().st_mtime_ns if p.exists() else 0
        key = json.dumps([str(p), stamp, mapping or {}, fmt, skip], sort_keys=True)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        ds = load_rows(path, mapping, fmt, skip_bad_rows=skip)
        self._items[key] = ds
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return ds


def keep_upload(workspace: Path, tmp_path: str) -> str:
    """Copy an upload out of Gradio's temp folder: the training subprocess reads it later."""
    src = Path(tmp_path)
    dest_dir = workspace / "uploads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in src.name)[-100:] or "data"
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for n in range(1, 1000):
        dest = dest_dir / (f"{stamp}-{safe}" if n == 1 else f"{stamp}-{n}-{safe}")
        try:
            # Exclusive: a second upload of the same name in the same second must not replace the
            # copy a run's config already points at.
            with open(dest, "xb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out)
        except FileExistsError:
            continue
        return str(dest)
    raise OSError(f"no free upload name for {safe} in {dest_dir}")


# ---------------------------------------------------------------- the tab

def build(ctx: StudioContext) -> None:
    cache = DatasetCache()
    gr.Markdown("## Dataset")
    gr.Markdown(TEXT["intro"], elem_classes="ft-help")
    with gr.Row():
        sample = gr.Dropdown(sample_choices(), value=None, label="Bundled sample", elem_id="dataset-sample", scale=1)
        upload = gr.File(label="Upload a file", file_types=list(DATA_SUFFIXES), type="filepath",
                         elem_id="dataset-file", scale=2)
        path_box = gr.Textbox(label="…or a path on this machine", placeholder="/data/my.jsonl",
                              elem_id="dataset-path", scale=2)
    status = gr.Markdown("No dataset loaded yet.", elem_id="dataset-status")
    path_state = gr.State("")
    src_state = gr.State({"mapping": None, "format": "auto"})  # what was asked for, to find the cached load

    with gr.Accordion("Format and column mapping", open=False, elem_id="dataset-mapping-box"):
        gr.Markdown(TEXT["mapping"], elem_classes="ft-help")
        with gr.Row():
            fmt = gr.Dropdown(["auto", *FORMATS], value="auto", label="Format", elem_id="dataset-format")
            skip = gr.Checkbox(True, label="Skip bad rows (counted and listed)", elem_id="dataset-skip")
            apply_map = gr.Button("Apply mapping", elem_id="dataset-apply-mapping")
        with gr.Row():
            role_boxes = [gr.Dropdown([NONE], value=NONE, label=r, elem_id=f"dataset-map-{r}", min_width=110)
                          for r in MAP_ROLES]
    errors_md = gr.Markdown("", elem_id="dataset-errors")
    table = gr.Dataframe(headers=["#", "line", "content", "other fields"], value=[], interactive=False,
                         wrap=True, max_height=320, column_widths=["6%", "7%", "60%", "27%"], elem_id="dataset-rows", label="Rows (click one to preview it)")

    with gr.Row():
        with gr.Column(scale=3):
            stats_md = gr.Markdown("", elem_id="dataset-stats")
            hist = gr.Plot(label="Token lengths", elem_id="token-histogram")
        with gr.Column(scale=2):
            split_mode = gr.Radio(["split", "separate file"], value="split", label="Validation data",
                                  elem_id="dataset-split-mode")
            val_split = gr.Slider(0.0, 0.5, value=0.1, step=0.01, label="Validation share (seeded split)",
                                  elem_id="dataset-validation-split")
            val_file = gr.File(label="Validation file", file_types=list(DATA_SUFFIXES), type="filepath",
                               visible=False, elem_id="dataset-validation-file")
            split_md = gr.Markdown("", elem_id="dataset-split-info")

    with gr.Row():
        template = gr.Dropdown([(TEMPLATE_TITLES[k], k) for k in ("auto", *TEMPLATES)], value="auto",
                               label="Chat template", elem_id="dataset-template")
        system_prompt = gr.Textbox(label="System prompt (for rows without one)", elem_id="dataset-system-prompt")
        max_length = gr.Number(512, label="Max length (tokens)", precision=0,
                               elem_id="dataset-max-length")
    with gr.Row():
        train_on_prompt = gr.Checkbox(False, label="Train on prompt (loss on every token)",
                                      elem_id="dataset-train-on-prompt")
        last_turn = gr.Checkbox(False, label="Only the last assistant turn", elem_id="dataset-last-turn-only")
        packing = gr.Checkbox(False, label="Packing (join short rows)", elem_id="dataset-packing")
        row_no = gr.Number(0, label="Row to preview", precision=0, minimum=0, elem_id="preview-row")
    rendered = gr.HTML("", elem_id="rendered-text", label="Rendered text")
    gr.HTML(f"{STYLE}<p class='ft-help'>{TEXT['legend']}</p>")
    preview_html = gr.HTML("", elem_id="token-preview")
    with gr.Accordion("Token table (id, label, attention mask)", open=False):
        tok_table = gr.Dataframe(headers=["pos", "text", "id", "label", "attention", "role"], value=[],
                                 interactive=False, max_height=400, elem_id="token-table")

    settings = [template, system_prompt, max_length, train_on_prompt, last_turn, packing]

    # ---- callbacks (each returns a dict of the components it changes)

    def data_cfg(path, tmpl, sysp, maxlen, top, last, pack, run_config) -> DataConfig:
        base = (run_config or {}).get("data") or {}
        return checked_data({**base, "path": path or base.get("path", ""), "template": tmpl or "auto",
                             "system_prompt": sysp or None, "max_length": int(maxlen or 512),
                             "train_on_prompt": bool(top), "last_turn_only": bool(last), "packing": bool(pack)})

    def model_of(run_config) -> str:
        return (run_config or {}).get("model") or DEFAULT_MODEL

    def token_view(ds, cfg, row, run_config) -> dict:
        """Stats, histogram and preview; reads the cached dataset, writes the token widgets."""
        try:
            tok = get_tokenizer(model_of(run_config))
            stats = token_length_stats(tok, ds.rows, cfg, limit=STATS_ROWS)
        except Exception as e:  # noqa: BLE001 - shown as a sentence, the rows stay visible
            return {stats_md: error_sentence(e), hist: None, rendered: "", preview_html: "", tok_table: []}
        return {stats_md: stats_markdown(ds, stats, cfg.max_length), hist: length_figure(stats, cfg.max_length),
                **row_view(ds, cfg, row, run_config)}

    def row_view(ds, cfg, row, run_config) -> dict:
        """Rendered text and coloured tokens of one row."""
        try:
            i = int(row or 0)
            if not 0 <= i < len(ds.rows):
                raise UserError(f"Row {i} does not exist: the dataset has rows 0 to {len(ds.rows) - 1}.")
            tok = get_tokenizer(model_of(run_config))
            if cfg.packing:
                p = preview_packed(tok, ds.rows, i, cfg)
                note = f"Packed sequence holding rows {p['rows'][0]}–{p['rows'][-1]} ({p['length']} tokens)."
            else:
                p = preview_row(tok, ds.rows[i], cfg)
                note = p.get("note")
        except Exception as e:  # noqa: BLE001
            return {rendered: "", preview_html: error_sentence(e), tok_table: []}
        return {rendered: f"{STYLE}<pre>{html.escape(p['text'])}</pre>",
                preview_html: tokens_html(p["tokens"], note), tok_table: token_rows(p["tokens"])}

    def split_view(ds, run_config, mode, share) -> str:
        if mode == "separate file":
            vpath = ((run_config or {}).get("data") or {}).get("validation_path")
            return f"Validation rows come from **{Path(vpath).name}**." if vpath else "Upload a validation file."
        seed = ((run_config or {}).get("train") or {}).get("seed", 42)
        train, val = split_rows(ds.rows, float(share), int(seed))
        return f"{len(train)} training rows, {len(val)} validation rows (seed {seed})."

    def load_all(path, fmt_v, mapping, skip_v, tmpl, sysp, maxlen, top, last, pack, mode, share, run_config):
        """Reads the file; writes status, mapping, table, stats, preview and run_config."""
        if not path:
            return {status: "No dataset loaded yet."}
        try:
            ds = cache.load(path, mapping, fmt_v, bool(skip_v))
            cfg = data_cfg(path, tmpl, sysp, maxlen, top, last, pack, run_config)
            new_rc = with_data(run_config, path=path, format=ds.format, mapping=ds.mapping,
                               skip_bad_rows=bool(skip_v), **_switches(cfg))
        except Exception as e:  # noqa: BLE001
            return {status: error_sentence(e)}
        cols = [NONE, *ds.columns]
        out = {status: status_markdown(ds), errors_md: errors_markdown(ds), table: rows_table(ds),
               path_state: path, src_state: {"mapping": mapping, "format": fmt_v}, ctx.run_config: new_rc,
               split_md: split_view(ds, new_rc, mode, share)}
        out.update({box: gr.update(choices=cols, value=ds.mapping.get(role, NONE))
                    for role, box in zip(MAP_ROLES, role_boxes)})
        out.update(token_view(ds, cfg, 0, new_rc))
        out[row_no] = 0
        return out

    def _switches(cfg: DataConfig) -> dict:
        return {k: getattr(cfg, k) for k in ("template", "system_prompt", "max_length", "train_on_prompt",
                                             "last_turn_only", "packing")}

    def current(path, src, skip_v, run_config):
        src = src or {}
        return cache.load(path, src.get("mapping"), src.get("format") or "auto", bool(skip_v))

    def on_settings(path, src, skip_v, tmpl, sysp, maxlen, top, last, pack, row, run_config):
        """Template/switch change: re-tokenizes the cached rows; writes token widgets and run_config."""
        try:
            cfg = data_cfg(path, tmpl, sysp, maxlen, top, last, pack, run_config)
            new_rc = with_data(run_config, **_switches(cfg))
        except Exception as e:  # noqa: BLE001
            return {stats_md: error_sentence(e)}
        if not path:
            return {ctx.run_config: new_rc}
        try:
            ds = current(path, src, skip_v, run_config)
        except Exception as e:  # noqa: BLE001
            return {status: error_sentence(e), ctx.run_config: new_rc}
        return {ctx.run_config: new_rc, **token_view(ds, cfg, row, new_rc)}

    def on_row(path, src, skip_v, tmpl, sysp, maxlen, top, last, pack, row, run_config):
        """Row number change: writes the rendered text and token preview only."""
        if not path:
            return {}
        try:
            ds = current(path, src, skip_v, run_config)
            cfg = data_cfg(path, tmpl, sysp, maxlen, top, last, pack, run_config)
        except Exception as e:  # noqa: BLE001
            return {preview_html: error_sentence(e)}
        return row_view(ds, cfg, row, run_config)

    def on_split(path, src, skip_v, mode, share, vfile, run_config):
        """Split settings: writes data.validation_split / validation_path and the split summary."""
        try:
            if mode == "separate file":
                vpath = keep_upload(ctx.workspace, vfile) if vfile else None
                if vpath:
                    vds = load_rows(vpath, None, "auto")
                    if path:
                        main_fmt = current(path, src, skip_v, run_config).format
                        if vds.format != main_fmt:
                            raise UserError(f"The validation file reads as {vds.format} data but the training "
                                            f"file as {main_fmt}; use files with the same layout.")
                new_rc = with_data(run_config, validation_path=vpath)
            else:
                new_rc = with_data(run_config, validation_path=None, validation_split=float(share))
            text = split_view(current(path, src, skip_v, new_rc), new_rc, mode, share) if path else ""
        except Exception as e:  # noqa: BLE001
            return {split_md: error_sentence(e)}
        return {ctx.run_config: new_rc, split_md: text, val_file: gr.update(visible=mode == "separate file")}

    token_outputs = {stats_md, hist, rendered, preview_html, tok_table}
    all_outputs = {status, errors_md, table, src_state, path_state, ctx.run_config, split_md, row_no,
                   *role_boxes, *token_outputs}
    common_in = [fmt, skip, *settings]
    tail_in = [split_mode, val_split, ctx.run_config]

    def from_sample(name, fmt_v, skip_v, *rest):
        if not name:
            return {}
        return load_all(str(SAMPLES_DIR / name), "auto", None, skip_v, *rest)

    def from_upload(tmp, fmt_v, skip_v, *rest):
        if not tmp:
            return {}
        try:
            kept = keep_upload(ctx.workspace, tmp)
        except OSError as e:
            return {status: error_sentence(UserError(f"Could not keep the uploaded file: {e}."))}
        return load_all(kept, "auto", None, skip_v, *rest)

    def from_path(text, fmt_v, skip_v, *rest):
        return load_all((text or "").strip(), "auto", None, skip_v, *rest)

    def from_mapping(path, fmt_v, skip_v, *rest_and_roles):
        rest, roles = rest_and_roles[:-len(MAP_ROLES)], rest_and_roles[-len(MAP_ROLES):]
        mapping = {r: v for r, v in zip(MAP_ROLES, roles) if v and v != NONE}
        return load_all(path, fmt_v, mapping or None, skip_v, *rest)

    sample.input(from_sample, [sample, *common_in, *tail_in], all_outputs)
    upload.upload(from_upload, [upload, *common_in, *tail_in], all_outputs)
    path_box.submit(from_path, [path_box, *common_in, *tail_in], all_outputs)
    apply_map.click(from_mapping, [path_state, *common_in, *tail_in, *role_boxes], all_outputs)
    skip.change(from_mapping, [path_state, *common_in, *tail_in, *role_boxes], all_outputs)

    settings_in = [path_state, src_state, skip, *settings, row_no, ctx.run_config]
    settings_out = {ctx.run_config, status, *token_outputs}
    for comp in (template, train_on_prompt, last_turn, packing):
        comp.change(on_settings, settings_in, settings_out)
    for comp in (system_prompt, max_length):
        comp.blur(on_settings, settings_in, settings_out)
        comp.submit(on_settings, settings_in, settings_out)
    row_no.change(on_row, settings_in, {rendered, preview_html, tok_table})

    def on_select(evt: gr.SelectData):
        return int(evt.index[0]) if evt and evt.index is not None else 0

    table.select(on_select, None, row_no)

    split_in = [path_state, src_state, skip, split_mode, val_split, val_file, ctx.run_config]
    split_out = {ctx.run_config, split_md, val_file}
    split_mode.change(on_split, split_in, split_out)
    val_split.release(on_split, split_in, split_out)
    val_file.upload(on_split, split_in, split_out)
    ctx.extras["dataset_status"] = status

    def sync_from_config(run_config, maxlen, pack):
        """Reads run_config (the Method tab edits max_length/packing too); writes those two widgets."""
        data = (run_config or {}).get("data") or {}
        new_len, new_pack = data.get("max_length", maxlen), bool(data.get("packing", pack))
        return (gr.update(value=new_len) if new_len != maxlen else gr.update(),
                gr.update(value=new_pack) if new_pack != bool(pack) else gr.update())

    ctx.run_config.change(sync_from_config, [ctx.run_config, max_length, packing], [max_length, packing])

    # Show the default sample on page load: the RunConfig already points at it, so the
    # page should say what would train if the user changes nothing.
    root = gr.context.Context.root_block
    default = Path(DataConfig().path).name
    if root is not None and default in sample_choices():
        root.load(lambda *a: {sample: default, **from_sample(default, *a)},
                  [*common_in, *tail_in], all_outputs | {sample})
