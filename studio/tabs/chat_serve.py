"""The Chat tab's "Serve as an OpenAI-compatible API" panel: start or stop `ftstudio serve` for the picked model.

The server is a child process (backend.inference.serve_process.ServeProcess) with its own chat worker, so the
studio holds no model; this module only shows the address and how to call it.
"""
from __future__ import annotations

import atexit
import html
from typing import Any

import gradio as gr

from backend.core.errors import UserError
from backend.inference.serve import DEFAULT_PORT, check_bind
from backend.inference.serve_process import ServeProcess
from studio.context import StudioContext, bind
from studio.progress import shows

HELP = ("Serve the picked model over HTTP at /v1/chat/completions and /v1/models, so your own tools and the "
        "`openai` client can call it. It runs in its own process with its own copy of the model (the chat above "
        "keeps working). On 127.0.0.1 only this machine can reach it; any other address needs an API key.")
NOT_RUNNING = "Not serving."


def serving_markdown(info: dict[str, Any]) -> str:
    """The address, the served name and two ways to call it."""
    ex = info.get("examples") or {}
    key = " Requests must send `Authorization: Bearer KEY`." if info.get("api_key_required") else ""
    return (f"<span class='ft-ok'>Serving `{html.escape(str(info.get('model')))}` at "
            f"`{html.escape(str(info.get('url')))}/v1`.</span>{key}\n\n"
            f"```sh\n{ex.get('curl', '')}\n```\n\n```python\n{ex.get('python', '')}\n```")


def on_start(server: ServeProcess, choice: str, host: str, port: float, key: str) -> str:
    """Reads the picker and the address; starts the server and writes where it answers."""
    host = (host or "").strip() or "127.0.0.1"
    try:
        if not (choice or "").strip():
            raise UserError("Pick a model (a run, a merged model or a base) to serve first.")
        check_bind(host, (key or "").strip() or None)  # before a process starts
        info = server.start(choice, host=host, port=int(port or DEFAULT_PORT), api_key=(key or "").strip() or None)
    except UserError as e:
        return f"<span class='ft-error'>{html.escape(str(e))}</span>"
    return serving_markdown(info)


def on_stop(server: ServeProcess) -> str:
    """Stops the server, if one runs."""
    return "Stopped serving." if server.stop() else NOT_RUNNING


def build(ctx: StudioContext, pick: gr.Dropdown) -> None:
    server = ServeProcess()
    atexit.register(server.stop)
    ctx.extras["serve_process"] = server
    with gr.Accordion("Serve as an OpenAI-compatible API", open=False, elem_id="chat-serve"):
        gr.Markdown(f"<span class='ft-help'>{HELP}</span>")
        with gr.Row():
            host = gr.Textbox("127.0.0.1", label="Address", elem_id="serve-host", scale=2)
            port = gr.Number(DEFAULT_PORT, precision=0, label="Port", elem_id="serve-port", scale=1)
            key = gr.Textbox("", type="password", label="API key (needed beyond 127.0.0.1)", elem_id="serve-key",
                             scale=2)
        with gr.Row():
            start = gr.Button("Serve", variant="primary", elem_id="serve-start")
            stop = gr.Button("Stop serving", elem_id="serve-stop")
        status = gr.Markdown(NOT_RUNNING, elem_id="serve-status")
    start.click(shows("Starting the server and loading the model…", bind(on_start, server), [pick, host, port, key]),
                [pick, host, port, key], status, concurrency_id="serve", concurrency_limit=1)
    stop.click(bind(on_stop, server), None, status)
