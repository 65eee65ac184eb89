"""The "Export for local runtimes" panel of the Merge tab: GGUF (f16, Q8_0, k-quants) plus an Ollama Modelfile.

The export, and the check that loads each file in llama.cpp and compares it with the merged model, run as `ftstudio export`
in a child process (backend.export.gguf.export_command through backend.export.merge.run_merge_subprocess);
this module only shows progress and the result.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from backend.core import access
from backend.core.errors import UserError
from backend.export import merge as mg
from backend.export.gguf import QUANTS, export_command
from backend.core.security import safe_filename, safe_join
from studio.context import StudioContext

HELP = ("A single-file model for llama.cpp and Ollama (Llama, SmolLM2, Mistral, Qwen2). Pick one or more "
        "quantizations: the adapter is merged once and each file is made from it. Each file is then loaded in "
        "llama.cpp itself and compared with the merged model (tokens, next-token top-k, greedy answers, "
        "perplexity); a file that differs, or that equals the untrained base, is reported as failed and replaces "
        "nothing.")


def _figures_row(r: dict[str, Any]) -> str:
    loss = r.get("quality_loss")
    loss_text = f"{loss:+.2%}" if isinstance(loss, (int, float)) else "–"
    ppl = r.get("perplexity")
    return (f"| {r.get('quant')} | {'yes' if r.get('checked') else '**no**'} | {mg.human_bytes(r.get('bytes'))} | "
            f"{ppl if ppl is not None else '–'} | {loss_text} | {_pct(r.get('token_agreement'))} | "
            f"{_pct(r.get('top1_agreement'))} | {_pct(r.get('topk_agreement'))} | {_pct(r.get('greedy_agreement'))} |")


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "–"


def result_markdown(r: dict[str, Any]) -> str:
    exports = r.get("exports") or ([r] if r.get("quant") else [])
    ok = r.get("checked")
    if ok:
        names = ", ".join(f"`{e['out']}` ({mg.human_bytes(e.get('bytes'))})" for e in exports) or f"`{r.get('out')}`"
        head = f"<span class='ft-ok'>GGUF written and checked in llama.cpp: {names}.</span>"
    else:
        head = f"<span class='ft-error'>{html.escape(str(r.get('error') or 'The export check failed.'))}</span>"
    lines = [head]
    if exports:
        merged = next((e.get("merged_perplexity") for e in exports if e.get("merged_perplexity") is not None), None)
        lines.append("| quant | checked | size | perplexity | quality loss | same tokens | top-1 | top-5 | greedy |\n"
                     "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(_figures_row(e) for e in exports))
        if merged is not None:
            lines.append(f"Perplexity of the merged model in transformers: {merged} "
                         f"({html.escape(str(exports[0].get('perplexity_source') or ''))}).")
    for e in exports:
        if e.get("ollama_command"):
            lines.append(f"Create the Ollama model ({e['quant']}) with: `{e['ollama_command']}`")
    notes = list(r.get("notes") or []) if r.get("exports") else []
    for e in exports:
        notes += [n for n in e.get("notes") or [] if n not in notes]
    lines += [html.escape(str(n)) for n in notes]
    return "\n\n".join(lines)


def stream_export(src: str, out_file: str, quant: str | list[str]) -> Iterator[str]:
    yield "Starting the export process…"
    quant = ",".join(quant) if isinstance(quant, (list, tuple)) else quant
    for ev in mg.run_merge_subprocess(export_command(src, out_file, quant)):
        if "progress" in ev:
            yield f"{int(ev['progress'] * 100)}% · {html.escape(str(ev.get('message', '')))}"
        elif "result" in ev:
            yield result_markdown(ev["result"])
        else:
            yield f"<span class='ft-error'>{html.escape(str(ev.get('error')))}</span>"


def build(ctx: StudioContext, run: gr.Dropdown) -> None:
    ws = ctx.workspace
    with gr.Accordion("Export for llama.cpp / Ollama (GGUF)", open=False, elem_id="merge-gguf"):
        gr.Markdown(f"<span class='ft-help'>{HELP}</span>")
        with gr.Row():
            quant = gr.CheckboxGroup([(f"{q}: {why}", q) for q, why in QUANTS.items()], value=["q4_k_m"],
                                     label="Quantizations (one merge, one file each)",
                                     info="size and measured quality loss are shown per file after the check",
                                     elem_id="gguf-quant")
            name = gr.Textbox("", label="File name", info="written under workspace/exports", elem_id="gguf-name")
        go = gr.Button("Export GGUF", elem_id="gguf-button")
        status = gr.Markdown("", elem_id="gguf-status")

    def on_export(choice: str, q: list[str], fname: str) -> Iterator[str]:
        """Reads the picked run and the export settings; streams the export status."""
        if not (choice or "").strip():
            yield "Pick a run or type an adapter or model folder above first."
            return
        if not q:
            yield "Tick at least one quantization."
            return
        try:
            source = str(access.policy(ws).readable(choice, "run, adapter or model folder"))
        except UserError as e:
            yield f"<span class='ft-error'>{html.escape(str(e))}</span>"
            return
        stem = safe_filename((fname or "").strip() or Path(choice.strip()).name, default="model")
        if not stem.endswith(".gguf"):
            # several quants: the export adds -QUANT to each file itself
            stem += f"-{q[0]}.gguf" if len(q) == 1 else ".gguf"
        yield from stream_export(source, str(safe_join(ws / "exports", stem)), q)

    go.click(on_export, [run, quant, name], status, concurrency_id="merge", concurrency_limit=1)
