"""The "Export for local runtimes" panel of the Merge tab: GGUF (f16 / Q8_0) plus an Ollama Modelfile.

The export, and the check that loads the file back and compares logits, run as `ftstudio export`
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
from backend.export.gguf import export_command
from backend.core.security import safe_filename, safe_join
from studio.context import StudioContext

HELP = ("A single-file model for llama.cpp and Ollama (Llama, SmolLM2, Mistral, Qwen2). After writing, the file is "
        "loaded back and its answers (logits) are compared with the merged model's; a file that differs, or that "
        "equals the untrained base, is reported as failed and replaces nothing.")


def result_markdown(r: dict[str, Any]) -> str:
    ok = r.get("checked")
    head = (f"<span class='ft-ok'>GGUF written and checked: `{r['out']}` ({mg.human_bytes(r.get('bytes'))}).</span>"
            if ok else f"<span class='ft-error'>{html.escape(str(r.get('error') or 'The export check failed.'))}</span>")
    lines = [head]
    if r.get("max_logit_diff") is not None:
        tol = r.get("tolerance")
        lines.append(f"Largest logit difference from the merged model: {r['max_logit_diff']:.4g}"
                     + (f" (allowed {tol:.3g})" if isinstance(tol, (int, float)) else ""))
    if r.get("modelfile"):
        lines.append(f"Ollama Modelfile: `{r['modelfile']}`")
    if r.get("ollama_command"):
        lines.append(f"Create the Ollama model with: `{r['ollama_command']}`")
    lines += [str(n) for n in r.get("notes") or []]
    return "\n\n".join(lines)


def stream_export(src: str, out_file: str, quant: str) -> Iterator[str]:
    yield "Starting the export process…"
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
            quant = gr.Radio(["f16", "q8_0"], value="f16", label="Quantization",
                             info="f16: exact; Q8_0: half the size, tiny differences", elem_id="gguf-quant")
            name = gr.Textbox("", label="File name", info="written under workspace/exports", elem_id="gguf-name")
        go = gr.Button("Export GGUF", elem_id="gguf-button")
        status = gr.Markdown("", elem_id="gguf-status")

    def on_export(choice: str, q: str, fname: str) -> Iterator[str]:
        """Reads the picked run and the export settings; streams the export status."""
        if not (choice or "").strip():
            yield "Pick a run or type an adapter or model folder above first."
            return
        try:
            source = str(access.policy(ws).readable(choice, "run, adapter or model folder"))
        except UserError as e:
            yield f"<span class='ft-error'>{html.escape(str(e))}</span>"
            return
        stem = safe_filename((fname or "").strip() or Path(choice.strip()).name, default="model")
        if not stem.endswith(".gguf"):
            stem += f"-{q}.gguf"
        yield from stream_export(source, str(safe_join(ws / "exports", stem)), q)

    go.click(on_export, [run, quant, name], status, concurrency_id="merge", concurrency_limit=1)
