"""`ftstudio data inspect|preview`: what the Dataset tab shows, as JSON."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from backend.core.config import DataConfig
from backend.core.errors import UserError
from backend.core.models import DEFAULT_MODEL
from backend.data import health
from backend.data.files import Budget
from backend.data.records import load_rows, look_seconds, split_rows
from backend.data.special_tokens import missing_markers, preview_tokenizer
from backend.data.templates import get_tokenizer, preview_packed, preview_row, resolve_template, token_length_stats

ERRORS_SHOWN = 100
STATS_ROWS = 20_000   # tokenizing is the slow part: the statistics come from the first rows
PROGRESS_AFTER = 2.0  # seconds before a read starts reporting progress on stderr (small files stay quiet)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="dataset file (.jsonl, .json, .csv, .tsv, .parquet, .txt)")
    p.add_argument("--model", default=None, help="model whose tokenizer counts tokens (default: the bundled one)")
    p.add_argument("--template", default="auto", help="chat template: auto (the model's own) or a registry name")
    p.add_argument("--max-length", type=int, default=512, help="maximum tokens per training sequence")
    p.add_argument("--format", default="auto", help="force a layout: messages, prompt_completion, text, preference, kto")
    p.add_argument("--mapping", default=None, help='column mapping as JSON, e.g. {"prompt": "q", "completion": "a"}')
    p.add_argument("--system-prompt", default=None, help="system prompt added to conversations without one")
    p.add_argument("--add-special-tokens", nargs="+", default=[], metavar="TOKEN",
                   help="count with these tokens added to the tokenizer (data.add_special_tokens), e.g. the markers "
                        "inspect lists as missing_markers")
    p.add_argument("--reasoning", default="keep", choices=("keep", "keep_ungraded", "strip"),
                   help="reasoning traces (<think>, reasoning_content): keep and grade, keep masked, or strip")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of skipping it")
    p.add_argument("--stats-rows", type=int, default=STATS_ROWS,
                   help=f"rows tokenized for the length statistics (default {STATS_ROWS:,}; every row is still "
                        "read and checked)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="inspect a dataset or preview one row's tokens and labels")
    dsub = p.add_subparsers(dest="data_command", required=True)
    ins = dsub.add_parser("inspect", help="format, mapping, bad rows, token-length statistics and dataset health")
    _common(ins)
    ins.add_argument("--validation-file", default=None,
                     help="validation file: its rows are checked for overlap with the training rows (leakage)")
    ins.add_argument("--validation-split", type=float, default=0.1,
                     help="without a validation file, the seeded split checked for leakage (default 0.1; 0: none)")
    ins.add_argument("--seed", type=int, default=42, help="seed of that split (the run's train.seed)")
    ins.set_defaults(func=inspect)
    ded = dsub.add_parser("dedup", help="write a copy of the file without its duplicate and near-duplicate rows")
    ded.add_argument("file", help="dataset file")
    ded.add_argument("--out", default=None, help="output .jsonl (default: FILE's name + .dedup.jsonl, beside it)")
    ded.add_argument("--exact-only", action="store_true", help="drop exact duplicates only, keep near duplicates")
    ded.add_argument("--format", default="auto", help="force a layout, as for inspect")
    ded.add_argument("--mapping", default=None, help="column mapping as JSON, as for inspect")
    ded.add_argument("--json", action="store_true", help="print one JSON object")
    ded.set_defaults(func=dedup)
    pre = dsub.add_parser("preview", help="one row rendered, every token with its id, label and role")
    _common(pre)
    pre.add_argument("--row", type=int, required=True, help="row number among the usable rows, from 0")
    pre.add_argument("--train-on-prompt", action="store_true", help="grade the prompt tokens too")
    pre.add_argument("--last-turn-only", action="store_true", help="grade only the last assistant turn")
    pre.add_argument("--pad-to", type=int, default=None, help="show padding up to this length")
    pre.add_argument("--packing", action="store_true",
                     help="show the packed sequence holding the row: every token with its position and segment")
    pre.set_defaults(func=preview)


def _mapping(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--mapping is not valid JSON ({e.msg}); write it like "
                        '\'{"prompt": "question", "completion": "answer"}\'.') from None
    if not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values()):
        raise UserError('--mapping must be a JSON object of role -> column name, e.g. {"text": "body"}.')
    return m


def _data_cfg(args: argparse.Namespace, loaded) -> Any:
    if args.max_length < 8:
        raise UserError(f"--max-length {args.max_length} is too small; use at least 8 tokens.")
    try:
        DataConfig(add_special_tokens=list(args.add_special_tokens or []))
    except ValueError as e:  # pydantic's error, as the sentence the field's check wrote
        raise UserError(f"--add-special-tokens: {e.errors()[0]['msg'].removeprefix('Value error, ')}.") from None
    return DataConfig(path=args.file, template=args.template, max_length=args.max_length,
                      system_prompt=args.system_prompt, format=loaded.format, mapping=loaded.mapping,
                      train_on_prompt=getattr(args, "train_on_prompt", False),
                      last_turn_only=getattr(args, "last_turn_only", False),
                      packing=getattr(args, "packing", False), reasoning=args.reasoning,
                      add_special_tokens=list(args.add_special_tokens or []))


def _progress_printer() -> Callable[[int, int], None]:
    started = time.monotonic()

    def show(done: int, total: int) -> None:
        if time.monotonic() - started >= PROGRESS_AFTER:
            print(f"reading: {done / total:.0%} ({done / 2**20:,.0f} MB of {total / 2**20:,.0f} MB)",
                  file=sys.stderr, flush=True)
    return show


def progress_bar(after: float = PROGRESS_AFTER) -> Callable[[float, str], None]:
    """progress(fraction, text) drawn as a bar on stderr, once the work has taken `after` seconds."""
    from tqdm import tqdm

    started, state = time.monotonic(), {"bar": None}

    def show(fraction: float, text: str) -> None:
        bar = state["bar"]
        if bar is None:
            if time.monotonic() - started < after:
                return
            bar = state["bar"] = tqdm(total=1000, file=sys.stderr, dynamic_ncols=True,
                                      bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        bar.set_description_str(text, refresh=False)
        bar.update(max(0, int(fraction * 1000) - bar.n))
        if fraction >= 1.0:
            bar.close()
    return show


def _load(args: argparse.Namespace):
    # A look, not a training: bounded memory (the rows kept), a time budget, progress on stderr.
    loaded = load_rows(args.file, _mapping(args.mapping), args.format, skip_bad_rows=not args.strict,
                       keep_all=False, budget=Budget(look_seconds(), _progress_printer(), every=2.0))
    cfg = _data_cfg(args, loaded)
    return loaded, preview_tokenizer(args.model or DEFAULT_MODEL, cfg.add_special_tokens), cfg


def inspect(args: argparse.Namespace) -> dict:
    loaded, tok, cfg = _load(args)
    out = loaded.summary()
    out["errors"] = out["errors"][:ERRORS_SHOWN]
    out["errors_total"] = len(loaded.errors)
    out["unit"] = loaded.unit
    if args.stats_rows < 1:
        raise UserError(f"--stats-rows {args.stats_rows} must be at least 1.")
    stats = token_length_stats(tok, loaded.rows, cfg, limit=args.stats_rows, progress=progress_bar())
    out["token_lengths"] = {k: stats[k] for k in ("min", "median", "max", "mean", "truncated",
                                                  "truncated_share", "lost_answers", "tokens", "counted",
                                                  "packing_efficiency")}
    out["template"] = resolve_template(tok, args.template)[0]
    # The template's special markers the model's own tokenizer lacks (what --add-special-tokens would add).
    out["missing_markers"] = missing_markers(get_tokenizer(args.model or DEFAULT_MODEL), args.template)
    h = _health(args, loaded, tok, cfg)
    out["health"] = h.as_dict()
    out["warnings"] = _warnings(loaded, stats, cfg) + h.sentences()
    return out


def _health(args: argparse.Namespace, loaded, tok, cfg) -> health.Health:
    """Health of the rows kept; leakage against the validation file, or the seeded split of those rows."""
    if args.validation_file:
        val = load_rows(args.validation_file, loaded.mapping, loaded.format, skip_bad_rows=True, keep_all=False)
        train, validation = loaded.rows, val.rows
    elif args.validation_split > 0:
        if not args.validation_split < 0.9:
            raise UserError(f"--validation-split {args.validation_split} must be below 0.9.")
        train, validation = split_rows(loaded.rows, args.validation_split, args.seed)
    else:
        train, validation = loaded.rows, None
    h = health.check(loaded.rows, loaded.errors, loaded.mapping, tok, cfg, length_limit=args.stats_rows)
    if validation is not None:
        h.validation_rows, h.leakage = len(validation), health.leaked(train, validation)
    return h


def dedup(args: argparse.Namespace) -> dict:
    out = args.out or str(health.dedup_path(args.file))
    return health.drop_duplicates(args.file, out, _mapping(args.mapping), args.format, near=not args.exact_only)


def _warnings(loaded, stats: dict, cfg) -> list[str]:
    w = list(loaded.notices)  # how the file was read (its encoding): said first
    if loaded.skipped:
        w.append(f"{loaded.skipped} row(s) of {loaded.path} were skipped because of problems; see 'errors'.")
    if loaded.note:
        w.append(loaded.note[0].upper() + loaded.note[1:])
    if stats["counted"] < loaded.row_count:
        w.append(f"The token lengths are those of the first {stats['counted']:,} of {loaded.row_count:,} rows "
                 "(--stats-rows).")
    if stats["truncated"]:
        w.append(f"{stats['truncated']} row(s) ({stats['truncated_share']:.1%}) are longer than max_length="
                 f"{cfg.max_length} tokens and will be cut (longest: {stats['max']}). Raise max length, or "
                 "shorten those rows.")
    if stats["lost_answers"]:
        w.append(f"{stats['lost_answers']} of them lose their whole answer and will be left out of training.")
    return w


def preview(args: argparse.Namespace) -> dict:
    loaded, tok, cfg = _load(args)
    n = len(loaded.rows)
    if not 0 <= args.row < n:
        raise UserError(f"--row {args.row} is out of range: {loaded.path} has {n} usable row(s), numbered 0 to {n - 1}.")
    if args.packing:
        out = preview_packed(tok, loaded.rows, args.row, cfg)
    else:
        out = preview_row(tok, loaded.rows[args.row], cfg, pad_to=args.pad_to)
    out["row"] = args.row
    out["source_line"] = loaded.lines[args.row]
    out["format"] = loaded.format
    return out
