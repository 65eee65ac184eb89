"""What the Dataset tab draws: the rows table, the coloured token preview, the length histogram.

Pure functions of a loaded dataset or a token preview (no widgets); studio/tabs/dataset.py shows them.
"""
from __future__ import annotations

import html
import json
from typing import Any, Optional

import plotly.graph_objects as go

from backend.data.health import Health
from backend.data.records import LoadedDataset

TABLE_ROWS = 200          # rows shown in the table
TOKENS_SHOWN = 2048       # tokens drawn in the coloured preview

STYLE = """<style>
#token-preview .toks{font-family:ui-monospace,monospace;font-size:13px;line-height:1.9;white-space:pre-wrap;word-break:break-all}
.tok{border-radius:3px;padding:1px 0;margin:0 1px}
.tok.graded{background:#bbf7d0;color:#14532d}
.tok.prompt{background:#e5e7eb;color:#374151}
.tok.special{background:#e9d5ff;color:#581c87}
.tok.tool_call{background:#bfdbfe;color:#1e3a8a}
.tok.tool_result{background:#fde68a;color:#78350f}
.tok.padding{background:#f3f4f6;color:#4b5563}
.tok.truncated{background:#fecaca;color:#7f1d1d;text-decoration:line-through}
.tok.boundary{color:#dc2626;font-weight:700}
#rendered-text pre{white-space:pre-wrap;font-size:13px;max-height:360px;overflow:auto}
</style>"""


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
    sampled = f" (first {stats['counted']} of {ds.row_count} rows)" if stats["counted"] < ds.row_count else ""
    lines = [f"**{ds.row_count} rows** · tokens per row{sampled}: min {stats['min']}, median {stats['median']}, "
             f"mean {stats['mean']}, max {stats['max']} · {stats['tokens']:,} tokens in all"]
    if stats.get("packing_efficiency"):
        lines.append(f"Packing would fill {stats['packing_efficiency']:.0%} of each {max_length}-token sequence "
                     "with real tokens (best-fit over these rows); without packing, batches pad to their longest row.")
    if stats["truncated"]:
        lines.append(f"<span class='ft-error'>{stats['truncated']} row(s) ({stats['truncated_share']:.1%}) are "
                     f"longer than {max_length} tokens and will be cut; {stats['lost_answers']} lose their whole "
                     "answer and are left out of training. Raise max length or shorten them.</span>")
    return "\n\n".join(lines)


def errors_markdown(ds: LoadedDataset) -> str:
    if not ds.errors:
        return ""
    items = "\n".join(f"- {html.escape(s)}" for s in ds.error_sentences(20))
    more = f"\n\n… and {len(ds.errors) - 20} more." if len(ds.errors) > 20 else ""
    return f"**Skipped rows**\n\n{items}{more}"


def health_markdown(h: Health, ds: LoadedDataset) -> str:
    """The health counts, one line, with each problem's sentence below (a green line when there are none)."""
    of = (f" (the first {h.rows:,} rows)" if h.rows < len(ds.rows)
          else "" if ds.complete else f" (of the {len(ds.rows):,} rows kept)")
    langs = ", ".join(f"{k} {n}" for k, n in h.languages.items()) or "none"
    leak = "no validation split" if h.leakage is None else f"{h.leakage} of {h.validation_rows} validation rows"
    counts = (f"**Health**{of}: duplicates {h.duplicates} · near duplicates {h.near_duplicates} · empty answers "
              f"{h.empty_answers} · answers cut {h.answers_cut} · prompts too long {h.prompts_too_long} · "
              f"languages {langs} · leakage {leak}")
    problems = h.sentences()
    if not problems:
        return f"{counts}\n\n<span class='ft-ok'>No problems found.</span>"
    items = "\n".join(f"- <span class='ft-error'>{html.escape(p)}</span>" for p in problems)
    return f"{counts}\n\n{items}"
