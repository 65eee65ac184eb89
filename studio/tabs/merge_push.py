"""The Merge tab's "Push to the model hub" panel: `ftstudio push` in a child process, with its progress.

The upload, the model card and every sentence (no token, offline, a bad repo name) come from
backend.export.push; this module only shows them.
"""
from __future__ import annotations

import html
from typing import Iterator

import gradio as gr

from backend.core.errors import UserError
from backend.export import merge as mg
from backend.export.push import WHAT, check_repo_id, push_command
from studio.context import StudioContext

HELP = ("Upload the picked run's adapter, its merged model or its GGUF export to the model hub, with a model card "
        "(README.md: base model, method, data, training curve, evaluation). Needs a write token (HF_TOKEN, or "
        "`hf auth login` on this machine) and a connection to the hub.")


def stream_push(choice: str, repo: str, what: str, path: str, private: bool) -> Iterator[str]:
    """Reads the picked run and the push settings; streams the push status."""
    if not (choice or "").strip():
        yield "Pick a run or type an adapter or model folder above first."
        return
    try:
        repo = check_repo_id(repo)
    except UserError as e:
        yield f"<span class='ft-error'>{html.escape(str(e))}</span>"
        return
    yield "Starting the upload…"
    for ev in mg.run_merge_subprocess(push_command(choice.strip(), repo, what, (path or "").strip() or None,
                                                   bool(private))):
        if "progress" in ev:
            yield f"{int(ev['progress'] * 100)}% · {html.escape(str(ev.get('message', '')))}"
        elif "result" in ev:
            r = ev["result"]
            yield (f"<span class='ft-ok'>Pushed the {html.escape(r['what'])} to `{html.escape(r['repo'])}` "
                   f"({len(r.get('files') or [])} files, with its model card).</span> {html.escape(r.get('url', ''))}")
        else:
            yield f"<span class='ft-error'>{html.escape(str(ev.get('error')))}</span>"


def build(ctx: StudioContext, run: gr.Dropdown) -> None:
    with gr.Accordion("Push to the model hub", open=False, elem_id="merge-push"):
        gr.Markdown(f"<span class='ft-help'>{HELP}</span>")
        with gr.Row():
            repo = gr.Textbox("", label="Repository", placeholder="owner/name", elem_id="push-repo", scale=2)
            what = gr.Radio(list(WHAT), value="adapter", label="What", elem_id="push-what", scale=2)
            private = gr.Checkbox(False, label="Private", elem_id="push-private", scale=1)
        path = gr.Textbox("", label="Merged folder or .gguf file (only when the run has several)",
                          elem_id="push-file")
        go = gr.Button("Push", elem_id="push-button")
        status = gr.Markdown("", elem_id="push-status")
    go.click(stream_push, [run, repo, what, path, private], status, concurrency_id="merge", concurrency_limit=1)
