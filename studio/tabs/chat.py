"""The Chat tab: talk to a run's adapter (or a merged model), optionally beside its base.

The model lives in the chat worker subprocess (backend.inference.chat.ChatClient); this module only
keeps the conversations and streams the worker's text into the Chatbots. The client is
put in ctx.extras["chat_client"] so the Train tab can shut it down before a training. The Arena below the
chat (2–4 models side by side, with votes) is studio/tabs/chat_arena.py.
"""
from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr

from backend.inference.chat import DEFAULT_SETTINGS, ChatClient, ChatError, build_messages, chat_choices, split_choice
from backend.core import access
from backend.core.config import ConfigError
from backend.core.errors import UserError
from backend.core.models import DEFAULT_MODEL, ModelError
from studio.context import StudioContext, bind
from studio.progress import shows
from studio.tabs import chat_arena, chat_serve

BAD_INPUT = (UserError, ConfigError, ModelError)
TEXT = {
    "intro": "Pick a run's adapter, a merged model, or a base model alone, press **Load**, and chat. "
             "**Compare** answers every message twice: with the adapter and with it switched off (the base), "
             "side by side. The model runs in its own process and is unloaded when a training starts.",
    "pick": "A run (its final adapter on its base) or one of its checkpoints, a merged model, a base model, or type any model or adapter folder.",
    "quantize": "Load the base in 4-bit (GPU only; for big models or QLoRA runs).",
    "not_loaded": "No model loaded yet: pick one and press Load.",
    "system": "Sent as the system message before the conversation (leave empty for none).",
    "seed": "-1 = a new random reply each time; any other number repeats the same reply.",
    "stopped": "Stopped: the reply ends where it was cut. Send another message to go on.",
    "still_stopping": "Stop was asked, but the model has not finished its current step yet; the reply ends "
                      "as soon as it does.",
}
STOP_WAIT_S = 30.0   # how long Stop waits to say "Stopped" (a reply ends within a token or two)


def _error(e: Exception) -> str:
    return f"<span class='ft-error'>{e}</span>"


def _loaded_text(info: dict[str, Any]) -> str:
    what = f"adapter `{info['adapter']}` on " if info.get("adapter") else ""
    extra = " (4-bit)" if info.get("quantized") else ""
    lines = [f"<span class='ft-ok'>Loaded {what}`{info.get('model')}`{extra} on {info.get('device')}.</span> "
             f"Base loads so far: {info.get('base_loads')}."]
    if info.get("message"):
        lines.append(info["message"])
    return "\n\n".join(lines)


class ChatSession:
    """The tab's link to the worker: one client per studio (single-user) and a stop request flag."""

    def __init__(self, workspace: Optional[Path] = None) -> None:
        self.workspace = workspace  # set in the studio: what it may load is checked against its policy
        self.client = ChatClient()
        self.stop_requested = threading.Event()
        self.busy = threading.Event()   # set while on_send streams a reply: Stop waits for it to clear
        self.loaded = False
        atexit.register(self.client.shutdown)

    def load(self, choice: str, quantize: bool) -> str:
        if not (choice or "").strip():
            return TEXT["not_loaded"]
        try:
            if self.workspace is not None:
                # Before split_choice looks at the disk: one sentence whether the folder is missing or not allowed.
                choice = access.policy(self.workspace).model(choice, "model or adapter folder")
            model, adapter = split_choice(choice)
            info = self.client.load(model, adapter, quantize=quantize)
        except BAD_INPUT as e:
            return _error(e)
        self.loaded = True
        return _loaded_text(info)

    def answer(self, history: list[dict], text: str, system: str, settings: dict[str, Any],
               use_adapter: bool) -> Iterator[list[dict]]:
        """Yield the growing conversation while the reply streams in."""
        msgs = build_messages(history, text, system)
        convo = list(history) + [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        reply = ""
        for chunk in self.client.stream(msgs, settings, use_adapter=use_adapter):
            reply += chunk
            convo[-1] = {"role": "assistant", "content": reply}
            yield convo
        done = self.client.last_done or {}
        if done.get("stopped"):
            convo[-1] = {"role": "assistant", "content": reply + " …(stopped)"}
        yield convo


@dataclass
class ChatView:
    """The tab's components, for wire() to attach the handlers below to."""
    ctx: StudioContext
    session: ChatSession
    pick: Any = None
    refresh: Any = None
    quantize: Any = None
    load: Any = None
    unload: Any = None
    status: Any = None
    system: Any = None
    settings: list = field(default_factory=list)  # max new tokens, temperature, top-p, top-k, repetition, seed
    compare: Any = None
    adapter_bot: Any = None
    base_bot: Any = None
    text: Any = None
    send: Any = None
    stop: Any = None
    clear: Any = None
    adapter_hist: Any = None
    base_hist: Any = None


def _model_layout(c: ChatView) -> None:
    """The model picker, Load/Unload, the status line and the system prompt."""
    with gr.Row():
        c.pick = gr.Dropdown(choices=chat_choices(c.ctx.workspace), value=DEFAULT_MODEL, allow_custom_value=True,
                             label="Model", info=TEXT["pick"], elem_id="chat-model", scale=4)
        c.refresh = gr.Button("↻ Refresh", scale=1, elem_id="chat-refresh")
    with gr.Row():
        c.quantize = gr.Checkbox(False, label=TEXT["quantize"], elem_id="chat-quantize")
        c.load = gr.Button("Load", variant="primary", elem_id="chat-load")
        c.unload = gr.Button("Unload (free memory)", elem_id="chat-unload")
    c.status = gr.Markdown(TEXT["not_loaded"], elem_id="chat-status")
    c.system = gr.Textbox(label="System prompt", info=TEXT["system"], lines=2, elem_id="chat-system")


def _settings_layout() -> list:
    """The generation settings, in on_send's order."""
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            max_new = gr.Slider(1, 4096, value=DEFAULT_SETTINGS["max_new_tokens"], step=1,
                                label="Max new tokens", elem_id="chat-max-new-tokens")
            temperature = gr.Slider(0.0, 2.0, value=DEFAULT_SETTINGS["temperature"], step=0.05,
                                    label="Temperature (0 = greedy)", elem_id="chat-temperature")
            top_p = gr.Slider(0.05, 1.0, value=DEFAULT_SETTINGS["top_p"], step=0.05, label="Top-p")
        with gr.Row():
            top_k = gr.Slider(0, 200, value=DEFAULT_SETTINGS["top_k"], step=1, label="Top-k (0 = off)")
            rep = gr.Slider(1.0, 2.0, value=DEFAULT_SETTINGS["repetition_penalty"], step=0.01,
                            label="Repetition penalty")
            seed = gr.Number(-1, precision=0, label="Seed", info=TEXT["seed"], elem_id="chat-seed")
    return [max_new, temperature, top_p, top_k, rep, seed]


def _conversation_layout(c: ChatView) -> None:
    """The compare switch, the two Chatbots and the message row."""
    c.compare = gr.Checkbox(False, label="Compare with the base (adapter switched off)", elem_id="chat-compare")
    with gr.Row():
        c.adapter_bot = gr.Chatbot(label="Answer", elem_id="chat-adapter", height=420)
        c.base_bot = gr.Chatbot(label="Base model (adapter off)", elem_id="chat-base", height=420, visible=False)
    with gr.Row():
        c.text = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=5,
                            elem_id="chat-input")
        c.send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        c.stop = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop")
        c.clear = gr.Button("Clear", scale=1, elem_id="chat-clear")
    c.adapter_hist = gr.State([])
    c.base_hist = gr.State([])


def build(ctx: StudioContext) -> None:
    session = ChatSession(ctx.workspace)
    ctx.extras["chat_client"] = session.client
    c = ChatView(ctx, session)
    gr.Markdown("## Chat\n" + TEXT["intro"])
    _model_layout(c)
    c.settings = _settings_layout()
    _conversation_layout(c)
    wire(c)
    chat_arena.build(ctx, c)
    chat_serve.build(ctx, c.pick)


# ---- handlers: the workspace or the session first where they need it (bound in wire) ---------

def on_refresh(ws: Path, current: str):
    """Reads the workspace; writes the model picker's choices."""
    return gr.update(choices=chat_choices(ws), value=current)


def on_load(session: ChatSession, choice: str, q: bool) -> str:
    """Reads the picker; writes the status (the worker loads the model)."""
    return session.load(choice, q)


def on_unload(session: ChatSession) -> str:
    """Writes the status after the worker is ended."""
    session.client.shutdown()
    return "Unloaded. The next message loads the model again."


def on_send(session: ChatSession, msg: str, sys_prompt: str, h_adapter: list, h_base: list, both: bool,
            mx: float, temp: float, tp: float, tk: float, rp: float, sd: float):
    """Reads the message, settings and histories; streams both Chatbots, the histories and the status."""
    msg = (msg or "").strip()
    if not msg:
        yield gr.update(), gr.update(), h_adapter, h_base, gr.update(), gr.update()
        return
    if not session.loaded:
        yield gr.update(), gr.update(), h_adapter, h_base, TEXT["not_loaded"], gr.update()
        return
    settings = {"max_new_tokens": int(mx), "temperature": temp, "top_p": tp, "top_k": int(tk),
                "repetition_penalty": rp, "seed": None if sd is None or int(sd) < 0 else int(sd)}
    session.stop_requested.clear()
    session.busy.set()
    new_a, new_b = list(h_adapter), list(h_base)
    try:
        for convo in session.answer(h_adapter, msg, sys_prompt, settings, use_adapter=True):
            new_a = convo
            yield convo, gr.update(), h_adapter, h_base, "Answering…", ""
        if both and not session.stop_requested.is_set():
            for convo in session.answer(h_base, msg, sys_prompt, settings, use_adapter=False):
                new_b = convo
                yield gr.update(), convo, h_adapter, h_base, "Answering with the base…", ""
    except (ChatError, *BAD_INPUT) as e:
        yield new_a, new_b, new_a, new_b, _error(e), msg
        return
    finally:
        session.busy.clear()
    note = session.client.take_notice() or ""
    done = TEXT["stopped"] if session.stop_requested.is_set() else "Ready."
    yield new_a, new_b, new_a, new_b, note or done, ""


def on_stop(session: ChatSession, wait_s: float = STOP_WAIT_S):
    """Writes the status; asks the worker to stop the reply under way, then says when it has stopped.

    The last word is this handler's, after the reply has ended: a "Stopping…" that arrived after the
    reply's own final status used to stay on screen until the next message."""
    if not session.busy.is_set():
        yield "Nothing is being generated."
        return
    session.stop_requested.set()
    session.client.stop()
    yield "Stopping…"
    deadline = time.monotonic() + wait_s
    while session.busy.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    yield TEXT["stopped"] if not session.busy.is_set() else TEXT["still_stopping"]


def on_compare(both: bool):
    """Reads the compare box; shows or hides the base Chatbot."""
    return gr.update(visible=bool(both)), gr.update(label="Adapter" if both else "Answer")


def cleared():
    return [], [], [], []


# ---- events -----------------------------------------------------------------------------------

def wire(c: ChatView) -> None:
    session = c.session
    c.refresh.click(bind(on_refresh, c.ctx.workspace), c.pick, c.pick, queue=False)
    loading = shows("Loading the model for chat (in its own process)…", bind(on_load, session), [c.pick, c.quantize])
    c.load.click(loading, [c.pick, c.quantize], c.status, concurrency_id="chat", concurrency_limit=1)
    c.unload.click(bind(on_unload, session), None, c.status)
    inputs = [c.text, c.system, c.adapter_hist, c.base_hist, c.compare, *c.settings]
    outputs = [c.adapter_bot, c.base_bot, c.adapter_hist, c.base_hist, c.status, c.text]
    c.send.click(bind(on_send, session), inputs, outputs, concurrency_id="chat", concurrency_limit=1)
    c.text.submit(bind(on_send, session), inputs, outputs, concurrency_id="chat", concurrency_limit=1)
    # Queued (a generator) but in its own concurrency group, so it never waits behind the reply it stops.
    c.stop.click(bind(on_stop, session), None, c.status, concurrency_id="chat-stop", concurrency_limit=None)
    c.clear.click(bind(cleared, name="<lambda>"), None, [c.adapter_bot, c.base_bot, c.adapter_hist, c.base_hist],
                  queue=False)
    c.compare.change(on_compare, c.compare, [c.base_bot, c.adapter_bot], queue=False)
