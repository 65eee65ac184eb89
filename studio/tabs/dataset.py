"""The Dataset tab: pick a file, check how it was read, see every token the model will train on.

All parsing, templating and labelling is done by backend.data.records / backend.data.templates; this
module only lays out widgets, keeps the loaded dataset in a small per-app cache, and
writes the chosen settings into the RunConfig's `data` section. What it draws (tables, token
preview, histogram) is in studio/tabs/dataset_view.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from pydantic import ValidationError

from backend.core import access
from backend.core.config import ConfigError, DataConfig, validate_config
from backend.data import health, reasoning, sources
from backend.data.records import FORMATS, LoadedDataset, load_rows, split_rows, split_sizes
from backend.core.errors import UserError
from backend.core.models import DEFAULT_MODEL, ModelError
from backend.data import special_tokens
from backend.data.templates import (TEMPLATE_TITLES, TEMPLATES, get_tokenizer, preview_packed, preview_row,
                               token_length_stats)
from studio.context import StudioContext, bind
from studio.progress import listen, shows
from studio.tabs.dataset_view import (STYLE, errors_markdown, health_markdown, length_figure, rows_table,
                                      stats_markdown, token_rows, tokens_html)
from backend.core.paths import SAMPLES_DIR

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
NONE = "(none)"
MAP_ROLES = ("prompt", "input", "completion", "system", "messages", "text", "chosen", "rejected", "label", "tools")
STATS_ROWS = 3000         # rows tokenized for the histogram (the CLI counts all)
HEALTH_ROWS = 20_000      # rows the tab's health check compares (about 2.5 ms a row on one CPU core)
BAD_INPUT = (UserError, ModelError, ConfigError, FileNotFoundError)

TEXT = {
    "intro": "Pick a bundled sample or upload your own file (JSONL, JSON, CSV/TSV, Parquet or plain text), or type "
             "a folder of files, a folder written by save_to_disk, or a hub dataset (hf://owner/name:split). The "
             "layout is detected (chat, instruction, preference, tool-calling conversations with their tools); "
             "correct the column mapping if it guessed wrong. A file that is not UTF-8 (Excel's CSV) is read as "
             "Windows-1252 and said so.",
    "legend": ("<span class='tok graded'>graded</span> trains (label = token id) · "
               "<span class='tok prompt'>prompt</span> masked (label −100) · "
               "<span class='tok special'>special</span> · <span class='tok tool_call'>tool call</span> graded · "
               "<span class='tok tool_result'>tool result</span> masked · <span class='tok padding'>padding</span> · "
               "<span class='tok truncated'>truncated</span> cut by max length · "
               "<span class='tok boundary'>│</span> packed rows joined. Hover a token for its id and label."),
    "new_tokens": "Adds the markers as special tokens (data.add_special_tokens): the tokenizer saved with the "
                  "adapter has them, the model's embeddings grow by one row each (started at the mean row), and "
                  "those rows train (LoRA: only the new rows, a few KB in the adapter; full fine-tuning: all rows).",
    "mapping": "Which column plays which part. Leave a role on (none) if the file has no such column.",
    "reasoning": "Keep: the model learns the trace and the answer. Masked: it reads the trace but is graded on "
                 "the answer only. Strip: the trace is removed and the model learns to answer directly.",
    "health": "Dataset health: exact duplicates (ignoring case and spaces), near duplicates (most of the text "
              "shared, found by MinHash), empty answers, answers cut and prompts too long for max length, the "
              "language mix, and validation rows that repeat a training row (leakage). \"Drop duplicates\" writes "
              "a copy without the exact and near duplicates (the original file is kept) and loads it.",
    "objective_hint": {"preference": "Preference pairs train with DPO, ORPO or a reward model: pick that "
                                     "objective on the Method tab (their prompts also feed GRPO/RLOO).",
                       "kto": "Labelled completions train with KTO: pick it on the Method tab.",
                       "text": "Plain text trains every token (continued pre-training)."},
}

# ---------------------------------------------------------------- pure view helpers

def sample_choices() -> list[str]:
    if not SAMPLES_DIR.exists():
        return []
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if p.suffix in DATA_SUFFIXES)


def status_markdown(ds: LoadedDataset, source: str = "") -> str:
    name = display_name(ds.path)
    src = f" ({source})" if source else ""
    msg = (f"<span class='ft-ok'>Current dataset: **{html.escape(name)}**{src}: {ds.row_count} rows, read as "
           f"**{ds.source_format}** → **{ds.format}**.</span>")
    if ds.note:
        msg += f" {html.escape(ds.note[0].upper() + ds.note[1:])}"
    for notice in ds.notices:  # e.g. the file was read as Windows-1252, not UTF-8
        msg += f" <span class='ft-notice' id='dataset-encoding'>{html.escape(notice)}</span>"
    if ds.skipped:
        msg += (f" <span class='ft-error'>{ds.skipped} bad row(s) skipped</span> (listed below; fix them in "
                "the file, or leave them out).")
    msg += unused_markdown(ds)
    hint = TEXT["objective_hint"].get(ds.format)
    return msg + (f"\n\n{hint}" if hint else "")


def unused_markdown(ds: LoadedDataset) -> str:
    """The columns the mapping leaves out, always named; a warning when one of them holds prose."""
    if not ds.unused_columns:
        return ""
    names = ", ".join(f"`{html.escape(c)}`" for c in ds.unused_columns)
    out = f"\n\n<span id='dataset-unused'>Columns not used for training: {names}.</span>"
    if ds.unused_text:
        prose = ", ".join(f"`{html.escape(c)}`" for c in ds.unused_text)
        out += (f" <span class='ft-error' id='dataset-unused-warning'>Text column(s) {prose} are left out: "
                "the model never sees them. If they belong to the question, map one as **input** under "
                "\"Format and column mapping\" and press Apply mapping.</span>")
    return out


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

    def __init__(self, size: int = 2):  # each holds up to FTSTUDIO_DATA_KEEP_MB of rows
        self.size = size
        self._items: OrderedDict[str, LoadedDataset] = OrderedDict()
        self._health: dict[tuple, tuple[LoadedDataset, health.Health]] = {}

    def health(self, ds: LoadedDataset, share: float, seed: int) -> health.Health:
        """The token-free part of a dataset's health (duplicates, empty answers, languages, leakage of the
        seeded split), once per dataset and split: a settings change only re-measures the lengths."""
        key = (id(ds), round(float(share), 4), int(seed))
        memo = self._health.get(key)
        if memo is None or memo[0] is not ds:
            rows = ds.rows[:HEALTH_ROWS]
            h = health.check(rows, ds.errors, ds.mapping)
            if share > 0:
                train, val = split_rows(rows, share, seed)
                h.validation_rows, h.leakage = len(val), health.leaked(train, val)
            self._health = {key: (ds, h)}  # one: the dataset shown
            memo = self._health[key]
        return memo[1]

    def load(self, path: str, mapping: Optional[dict], fmt: str, skip: bool) -> LoadedDataset:
        p = Path(path)
        stamp = p.stat().st_mtime_ns if p.exists() else 0
        key = json.dumps([str(p), stamp, mapping or {}, fmt, skip], sort_keys=True)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        # A look, not a training: bounded in memory and time (backend.data.records.load_rows).
        ds = load_rows(path, mapping, fmt, skip_bad_rows=skip, keep_all=False)
        self._items[key] = ds
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return ds


def keep_upload(workspace: Path, tmp_path: str) -> str:
    """Copy an upload out of Gradio's temp folder (the training subprocess reads it later), stored once
    per content: the name starts with the file's SHA-256, so dropping the same file again reuses the
    copy instead of adding another, and a run's config never points at a file that changes."""
    src = Path(tmp_path)
    dest_dir = workspace / "uploads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in src.name)[-100:] or "data"
    digest = hashlib.sha256()
    with open(src, "rb") as inp:
        for block in iter(lambda: inp.read(1 << 20), b""):
            digest.update(block)
    prefix = digest.hexdigest()[:16]
    same = sorted(dest_dir.glob(f"{prefix}-*"))
    if same:
        return str(same[0])  # identical content already kept (perhaps under another name)
    dest = dest_dir / f"{prefix}-{safe}"
    part = dest_dir / f".{prefix}-{safe}.part"
    shutil.copyfile(src, part)
    os.replace(part, dest)  # atomic: a half-copied file never carries the final name
    return str(dest)


def source_of(workspace: Path, path: str) -> str:
    """Where the current dataset came from, in words."""
    if str(path).startswith(sources.HUB_PREFIX):
        return "hub dataset"
    p = Path(path).resolve()
    if p.is_relative_to(SAMPLES_DIR.resolve()):
        return "bundled sample"
    if p.is_relative_to((workspace / "uploads").resolve()):
        return "uploaded file"
    return "file on this machine"


def display_name(path: str) -> str:
    """The file's name without the content-hash prefix keep_upload adds."""
    name = Path(path).name
    head, sep, rest = name.partition("-")
    return rest if sep and len(head) == 16 and all(c in "0123456789abcdef" for c in head) else name


# ---------------------------------------------------------------- the tab: layout

@dataclass
class DatasetView:
    """The tab's components, so the handlers below can name the ones they read and write."""
    ctx: StudioContext
    cache: DatasetCache
    sample: Any
    upload: Any
    path_box: Any
    status: Any
    path_state: Any
    src_state: Any
    fmt: Any
    skip: Any
    apply_map: Any
    role_boxes: list
    errors_md: Any
    table: Any
    stats_md: Any
    health_md: Any
    dedup_btn: Any
    hist: Any
    split_mode: Any
    val_split: Any
    val_file: Any
    split_md: Any
    template: Any
    new_tokens_md: Any
    add_tokens: Any
    system_prompt: Any
    max_length: Any
    train_on_prompt: Any
    last_turn: Any
    packing: Any
    row_no: Any
    reasoning: Any
    rendered: Any
    preview_html: Any
    tok_table: Any

    @property
    def settings(self) -> list:
        return [self.template, self.system_prompt, self.max_length, self.train_on_prompt, self.last_turn,
                self.packing]

    @property
    def token_outputs(self) -> set:
        out = {self.stats_md, self.health_md, self.hist, self.rendered, self.preview_html, self.tok_table,
               self.new_tokens_md, self.add_tokens}
        return out | ({self.ctx.data_lengths} if self.ctx.data_lengths is not None else set())

    @property
    def all_outputs(self) -> set:
        return {self.status, self.errors_md, self.table, self.src_state, self.path_state, self.ctx.run_config,
                self.split_md, self.row_no, *self.role_boxes, *self.token_outputs}


def _source_layout() -> dict[str, Any]:
    """The file pickers, the status line and the format/mapping accordion."""
    with gr.Row():
        sample = gr.Dropdown(sample_choices(), value=None, label="Bundled sample", elem_id="dataset-sample", scale=1)
        upload = gr.File(label="Upload a file", file_types=list(DATA_SUFFIXES), type="filepath",
                         elem_id="dataset-file", scale=2)
        path_box = gr.Textbox(label="…or a path on this machine (a file, a folder of files, a save_to_disk folder) "
                                    "or a hub dataset", placeholder="/data/my.jsonl or hf://owner/name:train",
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
    return dict(sample=sample, upload=upload, path_box=path_box, status=status, path_state=path_state,
                src_state=src_state, fmt=fmt, skip=skip, apply_map=apply_map, role_boxes=role_boxes)


def _rows_layout() -> dict[str, Any]:
    """The skipped-rows list, the rows table, the length statistics and the validation split."""
    errors_md = gr.Markdown("", elem_id="dataset-errors")
    table = gr.Dataframe(headers=["#", "line", "content", "other fields"], value=[], interactive=False,
                         wrap=True, max_height=320, column_widths=["6%", "7%", "60%", "27%"], elem_id="dataset-rows", label="Rows (click one to preview it)")

    with gr.Row():
        with gr.Column(scale=3):
            stats_md = gr.Markdown("", elem_id="dataset-stats")
            with gr.Row():
                health_md = gr.Markdown("", elem_id="dataset-health")
                dedup_btn = gr.Button("Drop duplicates", elem_id="dataset-drop-duplicates", size="sm", scale=0,
                                      min_width=140)
            gr.Markdown(TEXT["health"], elem_classes="ft-help")
            hist = gr.Plot(label="Token lengths", elem_id="token-histogram")
        with gr.Column(scale=2):
            split_mode = gr.Radio(["split", "separate file"], value="split", label="Validation data",
                                  elem_id="dataset-split-mode")
            val_split = gr.Slider(0.0, 0.5, value=0.1, step=0.01, label="Validation share (seeded split)",
                                  elem_id="dataset-validation-split")
            val_file = gr.File(label="Validation file", file_types=list(DATA_SUFFIXES), type="filepath",
                               visible=False, elem_id="dataset-validation-file")
            split_md = gr.Markdown("", elem_id="dataset-split-info")
    return dict(errors_md=errors_md, table=table, stats_md=stats_md, health_md=health_md, dedup_btn=dedup_btn,
                hist=hist, split_mode=split_mode,
                val_split=val_split, val_file=val_file, split_md=split_md)


def _preview_layout() -> dict[str, Any]:
    """Template and tokenization switches, then the rendered text and the token preview of one row."""
    with gr.Row():
        template = gr.Dropdown([(TEMPLATE_TITLES[k], k) for k in ("auto", *TEMPLATES)], value="auto",
                               label="Chat template", elem_id="dataset-template")
        system_prompt = gr.Textbox(label="System prompt (for rows without one)", elem_id="dataset-system-prompt")
        max_length = gr.Number(512, label="Max length (tokens)", precision=0,
                               elem_id="dataset-max-length")
    with gr.Row():
        new_tokens_md = gr.Markdown("", visible=False, elem_id="dataset-new-tokens")
        add_tokens = gr.Checkbox(False, label="Add these tokens to the tokenizer", visible=False,
                                 elem_id="dataset-add-tokens", info=TEXT["new_tokens"])
    with gr.Row():
        train_on_prompt = gr.Checkbox(False, label="Train on prompt (loss on every token)",
                                      elem_id="dataset-train-on-prompt")
        last_turn = gr.Checkbox(False, label="Only the last assistant turn", elem_id="dataset-last-turn-only")
        packing = gr.Checkbox(False, label="Packing (join short rows)", elem_id="dataset-packing")
        row_no = gr.Number(0, label="Row to preview", precision=0, minimum=0, elem_id="preview-row")
    reasoning_dd = gr.Dropdown([(reasoning.title(m), m) for m in reasoning.MODES], value="keep",
                               label="Reasoning traces (<think>, reasoning_content)", elem_id="dataset-reasoning",
                               info=TEXT["reasoning"])
    rendered = gr.HTML("", elem_id="rendered-text", label="Rendered text")
    gr.HTML(f"{STYLE}<p class='ft-help'>{TEXT['legend']}</p>")
    preview_html = gr.HTML("", elem_id="token-preview")
    with gr.Accordion("Token table (id, label, attention mask)", open=False):
        tok_table = gr.Dataframe(headers=["pos", "text", "id", "label", "attention", "role"], value=[],
                                 interactive=False, max_height=400, elem_id="token-table")
    return dict(template=template, new_tokens_md=new_tokens_md, add_tokens=add_tokens,
                system_prompt=system_prompt, max_length=max_length,
                train_on_prompt=train_on_prompt, last_turn=last_turn, packing=packing, row_no=row_no,
                reasoning=reasoning_dd,
                rendered=rendered, preview_html=preview_html, tok_table=tok_table)


def build(ctx: StudioContext) -> None:
    gr.Markdown("## Dataset")
    gr.Markdown(TEXT["intro"], elem_classes="ft-help")
    v = DatasetView(ctx, DatasetCache(), **_source_layout(), **_rows_layout(), **_preview_layout())
    wire(v)


# ---------------------------------------------------------------- the tab: handlers
# Each takes the view first (bound in wire) and returns a dict of the components it changes.

def data_cfg(path, tmpl, sysp, maxlen, top, last, pack, run_config) -> DataConfig:
    base = (run_config or {}).get("data") or {}
    return checked_data({**base, "path": path or base.get("path", ""), "template": tmpl or "auto",
                         "system_prompt": sysp or None, "max_length": int(maxlen or 512),
                         "train_on_prompt": bool(top), "last_turn_only": bool(last), "packing": bool(pack)})


def model_of(run_config) -> str:
    return (run_config or {}).get("model") or DEFAULT_MODEL


def token_view(v: DatasetView, ds, cfg, row, run_config, progress=None) -> dict:
    """Stats, histogram and preview; reads the cached dataset, writes the token widgets.

    progress: a gr.Progress, advanced as the rows are encoded (the backend calls it per batch)."""
    try:
        tok = special_tokens.preview_tokenizer(model_of(run_config), cfg.add_special_tokens)
        tell = None if progress is None else (lambda fraction, text: progress(fraction, desc=text))
        stats = token_length_stats(tok, ds.rows, cfg, limit=STATS_ROWS, progress=tell)
    except Exception as e:  # noqa: BLE001 - shown as a sentence, the rows stay visible
        return {v.stats_md: error_sentence(e), v.hist: None, v.rendered: "", v.preview_html: "", v.tok_table: [],
                v.health_md: "", **_lengths_out(v, None), **tokens_view(v, cfg, run_config)}
    return {v.stats_md: stats_markdown(ds, stats, cfg.max_length), v.hist: length_figure(stats, cfg.max_length),
            v.health_md: health_view(v, ds, cfg, tok, run_config),
            **row_view(v, ds, cfg, row, run_config), **_lengths_out(v, stats), **tokens_view(v, cfg, run_config)}


def tokens_view(v: DatasetView, cfg: DataConfig, run_config) -> dict:
    """The notice naming the template's markers the tokenizer lacks, and the box that adds them (hidden when it
    has them all); the backend decides both."""
    try:
        text = special_tokens.notice(get_tokenizer(model_of(run_config)), cfg.template, cfg.add_special_tokens)
    except Exception as e:  # noqa: BLE001 - the preview says what is wrong with the template
        text = None if isinstance(e, UserError) else error_sentence(e)
    shown = bool(text) or bool(cfg.add_special_tokens)
    return {v.new_tokens_md: gr.update(value=text or "", visible=bool(text)),
            v.add_tokens: gr.update(visible=shown, value=bool(cfg.add_special_tokens))}


def health_view(v: DatasetView, ds, cfg, tok, run_config) -> str:
    """The health counts of the rows kept: duplicates and leakage once per dataset, lengths per setting."""
    try:
        rc = run_config or {}
        share = 0.0 if (rc.get("data") or {}).get("validation_path") else \
            float((rc.get("data") or {}).get("validation_split") or 0.0)
        h = v.cache.health(ds, share, int((rc.get("train") or {}).get("seed", 42)))
        cut, too_long, measured = health.length_problems(tok, ds.rows, cfg, STATS_ROWS)
        h = dataclasses.replace(h, answers_cut=cut, prompts_too_long=too_long, length_rows=measured)
    except Exception as e:  # noqa: BLE001 - the rest of the tab stays usable
        return error_sentence(e)
    return health_markdown(h, ds)


def drop_duplicates_copy(workspace: Path, path: str, mapping: Optional[dict], fmt: str) -> dict:
    """Write the file without its duplicates into WORKSPACE/uploads (the original is kept); the report."""
    out = health.dedup_path(display_name(path), str(Path(workspace) / "uploads"))
    out = access.policy(workspace).writable(str(out), "de-duplicated copy")
    return health.drop_duplicates(path, str(out), mapping, fmt)


def _lengths_out(v: DatasetView, stats: Optional[dict]) -> dict:
    """The measured lengths for the Method tab's estimate (None: unknown, the estimate assumes max length)."""
    if v.ctx.data_lengths is None:
        return {}
    return {v.ctx.data_lengths: {"lengths": stats["lengths"], "total": stats["total"]} if stats else None}


def row_view(v: DatasetView, ds, cfg, row, run_config) -> dict:
    """Rendered text and coloured tokens of one row."""
    try:
        i = int(row or 0)
        if not 0 <= i < len(ds.rows):
            kept = "" if ds.complete else f" (of its {ds.row_count} rows, the first {len(ds.rows)} are kept to look at)"
            raise UserError(f"Row {i} does not exist: the dataset has rows 0 to {len(ds.rows) - 1}{kept}.")
        tok = special_tokens.preview_tokenizer(model_of(run_config), cfg.add_special_tokens)
        if cfg.packing:
            p = preview_packed(tok, ds.rows, i, cfg)
            note = (f"Packed sequence holding rows {', '.join(map(str, p['rows']))} ({p['length']} tokens; each row "
                    f"restarts at position 0 and sees only itself). Packing fills {p['efficiency']:.0%} of the "
                    f"{p['sequences']} sequences.")
        else:
            p = preview_row(tok, ds.rows[i], cfg)
            note = p.get("note")
    except Exception as e:  # noqa: BLE001
        return {v.rendered: "", v.preview_html: error_sentence(e), v.tok_table: []}
    return {v.rendered: f"{STYLE}<pre>{html.escape(p['text'])}</pre>",
            v.preview_html: tokens_html(p["tokens"], note), v.tok_table: token_rows(p["tokens"])}


def split_view(ds, run_config, mode, share) -> str:
    if mode == "separate file":
        vpath = ((run_config or {}).get("data") or {}).get("validation_path")
        return f"Validation rows come from **{Path(vpath).name}**." if vpath else "Upload a validation file."
    seed = ((run_config or {}).get("train") or {}).get("seed", 42)
    n_train, n_val = split_sizes(ds.row_count, float(share))  # of the whole file, not only the rows kept
    return f"{n_train} training rows, {n_val} validation rows (seed {seed})."


def load_all(v: DatasetView, path, fmt_v, mapping, skip_v, tmpl, sysp, maxlen, top, last, pack, mode, share,
             run_config):
    """Reads the file; writes status, mapping, table, stats, preview and run_config."""
    if not path:
        return {v.status: "No dataset loaded yet."}
    try:
        # The sample, upload, path box and mapping all arrive here: check before the file is touched.
        if not sources.hub_ref(path):  # a hub id (hf://owner/name:split) reads no local file
            path = str(access.policy(v.ctx.workspace).readable(path, "dataset file"))
        ds = v.cache.load(path, mapping, fmt_v, bool(skip_v))
        cfg = data_cfg(path, tmpl, sysp, maxlen, top, last, pack, run_config)
        new_rc = with_data(run_config, path=path, format=ds.format, mapping=ds.mapping,
                           skip_bad_rows=bool(skip_v), **_switches(cfg))
    except Exception as e:  # noqa: BLE001
        return {v.status: error_sentence(e)}
    cols = [NONE, *ds.columns]
    out = {v.status: status_markdown(ds, source_of(v.ctx.workspace, path)), v.errors_md: errors_markdown(ds), v.table: rows_table(ds),
           v.path_state: path, v.src_state: {"mapping": mapping, "format": fmt_v}, v.ctx.run_config: new_rc,
           v.split_md: split_view(ds, new_rc, mode, share)}
    out.update({box: gr.update(choices=cols, value=ds.mapping.get(role, NONE))
                for role, box in zip(MAP_ROLES, v.role_boxes)})
    out.update(token_view(v, ds, cfg, 0, new_rc))
    out[v.row_no] = 0
    return out


def _switches(cfg: DataConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("template", "system_prompt", "max_length", "train_on_prompt",
                                         "last_turn_only", "packing", "add_special_tokens")}


def current(v: DatasetView, path, src, skip_v, run_config):
    src = src or {}
    return v.cache.load(path, src.get("mapping"), src.get("format") or "auto", bool(skip_v))


def on_settings(v: DatasetView, path, src, skip_v, tmpl, sysp, maxlen, top, last, pack, row, run_config,
                progress=gr.Progress()):  # noqa: B008 - Gradio finds the progress bar by this default
    """Template/switch change: re-tokenizes the cached rows; writes token widgets and run_config."""
    try:
        cfg = data_cfg(path, tmpl, sysp, maxlen, top, last, pack, run_config)
        old = (run_config or {}).get("data") or {}
        if cfg.add_special_tokens and cfg.template != (old.get("template") or "auto"):
            # A ticked "Add these tokens" follows the template: the new one's missing markers replace the old's.
            tokens = special_tokens.follow_template(get_tokenizer(model_of(run_config)), old.get("template") or "auto",
                                                    cfg.template, cfg.add_special_tokens)
            cfg = cfg.model_copy(update={"add_special_tokens": tokens})
        new_rc = with_data(run_config, **_switches(cfg))
    except Exception as e:  # noqa: BLE001
        return {v.stats_md: error_sentence(e)}
    if not path:
        return {v.ctx.run_config: new_rc}
    try:
        ds = current(v, path, src, skip_v, run_config)
    except Exception as e:  # noqa: BLE001
        return {v.status: error_sentence(e), v.ctx.run_config: new_rc}
    return {v.ctx.run_config: new_rc, **token_view(v, ds, cfg, row, new_rc, progress)}


def on_reasoning(v: DatasetView, mode, path, src, skip_v, tmpl, sysp, maxlen, top, last, pack, row, run_config):
    """Reasoning-trace setting: written to data.reasoning, then the token view is drawn again with it."""
    try:
        new_rc = with_data(run_config, reasoning=mode or "keep")
    except Exception as e:  # noqa: BLE001
        return {v.stats_md: error_sentence(e)}
    return {v.ctx.run_config: new_rc,
            **on_settings(v, path, src, skip_v, tmpl, sysp, maxlen, top, last, pack, row, new_rc)}


def on_add_tokens(v: DatasetView, ticked, path, src, skip_v, tmpl, sysp, maxlen, top, last, pack, row, run_config):
    """"Add these tokens": writes data.add_special_tokens (the template's missing markers, or none), then draws
    the token view again with them as single ids."""
    try:
        tokens = (special_tokens.missing_markers(get_tokenizer(model_of(run_config)), tmpl or "auto")
                  if ticked else [])
        new_rc = with_data(run_config, add_special_tokens=tokens)
    except Exception as e:  # noqa: BLE001
        return {v.new_tokens_md: gr.update(value=error_sentence(e), visible=True)}
    return {v.ctx.run_config: new_rc,
            **on_settings(v, path, src, skip_v, tmpl, sysp, maxlen, top, last, pack, row, new_rc)}


def on_row(v: DatasetView, path, src, skip_v, tmpl, sysp, maxlen, top, last, pack, row, run_config):
    """Row number change: writes the rendered text and token preview only."""
    if not path:
        return {}
    try:
        ds = current(v, path, src, skip_v, run_config)
        cfg = data_cfg(path, tmpl, sysp, maxlen, top, last, pack, run_config)
    except Exception as e:  # noqa: BLE001
        return {v.preview_html: error_sentence(e)}
    return row_view(v, ds, cfg, row, run_config)


def on_split(v: DatasetView, path, src, skip_v, mode, share, vfile, run_config):
    """Split settings: writes data.validation_split / validation_path and the split summary."""
    try:
        if mode == "separate file":
            vpath = keep_upload(v.ctx.workspace, vfile) if vfile else None
            if vpath:
                vds = load_rows(vpath, None, "auto", keep_all=False)
                if path:
                    main_fmt = current(v, path, src, skip_v, run_config).format
                    if vds.format != main_fmt:
                        raise UserError(f"The validation file reads as {vds.format} data but the training "
                                        f"file as {main_fmt}; use files with the same layout.")
            new_rc = with_data(run_config, validation_path=vpath)
        else:
            new_rc = with_data(run_config, validation_path=None, validation_split=float(share))
        text = split_view(current(v, path, src, skip_v, new_rc), new_rc, mode, share) if path else ""
    except Exception as e:  # noqa: BLE001
        return {v.split_md: error_sentence(e)}
    return {v.ctx.run_config: new_rc, v.split_md: text, v.val_file: gr.update(visible=mode == "separate file")}


def _only_source(v: DatasetView, out: dict, keep: Any) -> dict:
    """One current dataset: after a load from one picker, the other pickers are cleared (the upload box
    too, so the next file can be dropped straight away)."""
    if v.status in out and "Current dataset" in str(out[v.status]):
        for comp, empty in ((v.sample, None), (v.upload, None), (v.path_box, "")):
            if comp is not keep:
                out[comp] = empty
    return out


def from_sample(v: DatasetView, name, fmt_v, skip_v, *rest):
    if not name:
        return {}
    return _only_source(v, load_all(v, str(SAMPLES_DIR / name), "auto", None, skip_v, *rest), v.sample)


def from_upload(v: DatasetView, tmp, fmt_v, skip_v, *rest):
    if not tmp:
        return {}
    try:
        kept = keep_upload(v.ctx.workspace, tmp)
    except OSError as e:
        return {v.status: error_sentence(UserError(f"Could not keep the uploaded file: {e}."))}
    return _only_source(v, load_all(v, kept, "auto", None, skip_v, *rest), None)


def from_path(v: DatasetView, text, fmt_v, skip_v, *rest):
    return _only_source(v, load_all(v, (text or "").strip(), "auto", None, skip_v, *rest), v.path_box)


def from_dedup(v: DatasetView, path, src, fmt_v, skip_v, *rest):
    """"Drop duplicates": writes the copy, then loads it as the current dataset with the same mapping."""
    if not path:
        return {v.health_md: error_sentence(UserError("Load a dataset first, then drop its duplicates."))}
    try:
        ds = current(v, path, src, skip_v, rest[-1])
        report = drop_duplicates_copy(v.ctx.workspace, path, ds.mapping, ds.format)
    except Exception as e:  # noqa: BLE001
        return {v.health_md: error_sentence(e)}
    out = load_all(v, report["path"], fmt_v, ds.mapping, skip_v, *rest)
    dropped = report["duplicates_dropped"] + report["near_duplicates_dropped"]
    out[v.status] = (f"{out.get(v.status, '')}\n\n<span id='dataset-dedup-done'>Dropped {dropped} duplicate row(s) "
                     f"({report['duplicates_dropped']} exact, {report['near_duplicates_dropped']} near); "
                     f"{html.escape(display_name(path))} itself is unchanged.</span>")
    return _only_source(v, out, v.path_box) | {v.path_box: report["path"]}


def from_mapping(v: DatasetView, path, fmt_v, skip_v, *rest_and_roles):
    rest, roles = rest_and_roles[:-len(MAP_ROLES)], rest_and_roles[-len(MAP_ROLES):]
    mapping = {r: val for r, val in zip(MAP_ROLES, roles) if val and val != NONE}
    return load_all(v, path, fmt_v, mapping or None, skip_v, *rest)


def restore(v: DatasetView, run_config):
    """Page load and settings import: the dataset and switches the RunConfig names, loaded and shown in
    the widgets (the saved choices, the default sample the first time)."""
    d = (run_config or {}).get("data") or {}
    path = d.get("path") or ""
    if not path:
        return {v.status: "No dataset loaded yet."}
    fmt_v = d.get("format") or "auto"
    widgets = {v.fmt: fmt_v if fmt_v in ("auto", *FORMATS) else "auto", v.skip: bool(d.get("skip_bad_rows", True)),
               v.template: d.get("template") or "auto", v.system_prompt: d.get("system_prompt") or "",
               v.max_length: int(d.get("max_length") or 512), v.train_on_prompt: bool(d.get("train_on_prompt")),
               v.last_turn: bool(d.get("last_turn_only")), v.packing: bool(d.get("packing")),
               v.reasoning: d.get("reasoning") or "keep",
               v.split_mode: "separate file" if d.get("validation_path") else "split",
               v.val_split: float(d.get("validation_split") or 0.0)}
    out = load_all(v, path, widgets[v.fmt], d.get("mapping"), widgets[v.skip], widgets[v.template],
                   widgets[v.system_prompt], widgets[v.max_length], widgets[v.train_on_prompt], widgets[v.last_turn],
                   widgets[v.packing], widgets[v.split_mode], widgets[v.val_split], run_config)
    sample = Path(path).name if source_of(v.ctx.workspace, path) == "bundled sample" else None
    picked = {v.sample: sample if sample in sample_choices() else None, v.upload: None,
              v.path_box: path if source_of(v.ctx.workspace, path) == "file on this machine" else ""}
    return {**widgets, **picked, **out}


def restore_outputs(v: DatasetView) -> set:
    return v.all_outputs | {v.sample, v.upload, v.path_box, v.fmt, v.skip, *v.settings, v.split_mode, v.val_split,
                              v.reasoning}


def on_select(evt: gr.SelectData):
    return int(evt.index[0]) if evt and evt.index is not None else 0


def sync_from_config(run_config, maxlen, pack):
    """Reads run_config (the Method tab edits max_length/packing too); writes those two widgets."""
    data = (run_config or {}).get("data") or {}
    new_len, new_pack = data.get("max_length", maxlen), bool(data.get("packing", pack))
    return (gr.update(value=new_len) if new_len != maxlen else gr.update(),
            gr.update(value=new_pack) if new_pack != bool(pack) else gr.update())


# ---------------------------------------------------------------- the tab: events

# What each slow step says while it runs (over the widgets it will write).
WAIT = {
    "load": "Reading the file: detecting its format and mapping, counting the tokens of every row…",
    "mapping": "Applying the mapping and reading the rows again…",
    "settings": "Rendering the rows with the template and counting their tokens…",
    "split": "Splitting off the validation rows…",
    "restore": "Loading the dataset you chose last time…",
}

def wire(v: DatasetView) -> None:
    rc, all_outputs = v.ctx.run_config, v.all_outputs
    common_in = [v.fmt, v.skip, *v.settings]
    tail_in = [v.split_mode, v.val_split, rc]
    pickers = {v.sample, v.upload, v.path_box}
    # Each wait over a second says what it is doing (studio/progress.py).
    for comp, event, fn in ((v.sample, v.sample.input, from_sample), (v.upload, v.upload.upload, from_upload),
                            (v.path_box, v.path_box.submit, from_path)):
        listen(event, WAIT["load"], bind(fn, v), [comp, *common_in, *tail_in], all_outputs | pickers)
    remap_in = [v.path_state, *common_in, *tail_in, *v.role_boxes]
    remap = shows(WAIT["mapping"], bind(from_mapping, v), remap_in)
    v.apply_map.click(remap, remap_in, all_outputs)
    v.skip.change(remap, remap_in, all_outputs)
    v.dedup_btn.click(shows("Writing a copy without the duplicate rows…", bind(from_dedup, v), [v.path_state, v.src_state, *common_in, *tail_in]),
                      [v.path_state, v.src_state, *common_in, *tail_in], all_outputs | pickers)

    settings_in = [v.path_state, v.src_state, v.skip, *v.settings, v.row_no, rc]
    settings_out = {rc, v.status, *v.token_outputs}
    settings = shows(WAIT["settings"], bind(on_settings, v), settings_in)
    for comp in (v.template, v.train_on_prompt, v.last_turn, v.packing):
        comp.change(settings, settings_in, settings_out)
    for comp in (v.system_prompt, v.max_length):
        comp.blur(settings, settings_in, settings_out)
        comp.submit(settings, settings_in, settings_out)
    v.row_no.change(bind(on_row, v), settings_in, {v.rendered, v.preview_html, v.tok_table})
    v.reasoning.change(bind(on_reasoning, v), [v.reasoning, *settings_in], settings_out)
    v.add_tokens.input(shows(WAIT["settings"], bind(on_add_tokens, v), [v.add_tokens, *settings_in]),
                       [v.add_tokens, *settings_in], settings_out)
    v.table.select(on_select, None, v.row_no)

    split_in = [v.path_state, v.src_state, v.skip, v.split_mode, v.val_split, v.val_file, rc]
    split_out = {rc, v.split_md, v.val_file}
    split = shows(WAIT["split"], bind(on_split, v), split_in)
    v.split_mode.change(split, split_in, split_out)
    v.val_split.release(split, split_in, split_out)
    v.val_file.upload(split, split_in, split_out)
    v.ctx.extras["dataset_status"] = v.status
    rc.change(sync_from_config, [rc, v.max_length, v.packing], [v.max_length, v.packing])

    # On page load (after the saved choices are read into the RunConfig) and after a settings import:
    # show the dataset the RunConfig names, so the page says what would train. studio/app.py chains
    # the tabs' restore steps in order, so they never race each other's RunConfig writes.
    v.ctx.extras.setdefault("restore_steps", []).append((shows(WAIT["restore"], bind(restore, v), [rc]), [rc],
                                                         restore_outputs(v)))
