"""The Chat tab's Arena: 2–4 models answer one prompt side by side, the user votes, and the votes export as a
DPO preference file.

The models run in chat workers (backend.inference.arena_models.Arena, one per base); the votes are
backend.inference.arena's. This module lays out the columns and streams the answers into them. It reuses
the chat's system prompt, generation settings and 4-bit box, so both halves of the tab answer alike.
"""
from __future__ import annotations

import atexit
import html
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from backend.core.errors import UserError
from backend.inference import arena as votes
from backend.inference.arena_models import (ANSWERING, DONE, FAILED, LOADING, MAX_MODELS, STOPPED, WAITING, Answer,
                                            Arena, plan)
from backend.inference.chat import build_messages, chat_choices
from studio.context import StudioContext, bind

HELP = ("Pick 2–4 models (a base, a run, one of its checkpoints, a merged folder), ask one question, and read "
        "the answers side by side. Vote for the better one: each vote is kept in the run's folder "
        "(`arena_votes.jsonl`; in `arena/` of the workspace when no model comes from a run), and **Export** "
        "turns the votes into a prompt/chosen/rejected file a DPO run trains on. Picks with the same base "
        "share one model in memory; the system prompt and generation settings are the chat's.")
NOTHING_YET = "Ask a question first; the vote is on the answers of the last question."
STATE_TEXT = {WAITING: "waiting for its turn…", LOADING: "loading…", ANSWERING: "answering…", DONE: "done",
              STOPPED: "stopped", FAILED: "could not answer"}


def _error(text: str) -> str:
    return f"<span class='ft-error'>{html.escape(text)}</span>"


def head_markdown(a: Answer) -> str:
    """A column's heading: the model and how its answer stands (or its sentence)."""
    title = f"**{html.escape(a.label)}**"
    if a.state == FAILED:
        return f"{title}\n\n{_error(a.error or 'It could not answer.')}"
    extra = f" · {a.tokens} tokens in {a.seconds} s" if a.state in (DONE, STOPPED) and a.tokens is not None else ""
    return f"{title}\n\n<span class='ft-help'>{STATE_TEXT.get(a.state, a.state)}{extra}</span>"


def round_state(prompt: str, system: str, choices: list[str], answers: list[Answer], home: Path,
                done: bool) -> dict[str, Any]:
    """What a vote needs of the last round, as plain data for gr.State."""
    return {"prompt": prompt, "system": system, "labels": [a.label for a in answers],
            "models": {a.label: c for a, c in zip(answers, choices)},
            "answers": {a.label: a.text for a in answers if a.usable}, "home": str(home), "done": done,
            "voted": False}


def _columns(n: int) -> list:
    return [gr.update(visible=i < n) for i in range(MAX_MODELS)]


def _outputs(status: str, rnd: dict, answers: list[Answer], show: Optional[int] = None) -> list:
    heads = [head_markdown(answers[i]) if i < len(answers) else "" for i in range(MAX_MODELS)]
    texts = [answers[i].text if i < len(answers) else "" for i in range(MAX_MODELS)]
    cols = _columns(show) if show is not None else [gr.update()] * MAX_MODELS
    return [status, rnd, *heads, *texts, *cols]


def _keep(status: str, rnd: dict) -> list:
    return [status, rnd] + [gr.update()] * (3 * MAX_MODELS)


def on_arena_ask(arena: Arena, ws: Path, m1: str, m2: str, m3: str, m4: str, prompt: str, system: str, q: bool,
                 mx: float, temp: float, tp: float, tk: float, rp: float, sd: float):
    """Reads the pickers, the prompt and the chat's settings; streams every column's answer and the round."""
    prompt = (prompt or "").strip()
    if not prompt:
        yield _keep("Type a question for the models to answer.", {})
        return
    choices = [c for c in (m1, m2, m3, m4) if c and str(c).strip()]
    try:
        contenders = plan(ws, choices)
    except UserError as e:
        yield _keep(_error(str(e)), {})
        return
    settings = {"max_new_tokens": int(mx), "temperature": temp, "top_p": tp, "top_k": int(tk),
                "repetition_penalty": rp, "seed": None if sd is None or int(sd) < 0 else int(sd)}
    home = votes.votes_home(ws, [c.choice for c in contenders])
    messages = build_messages([], prompt, system)
    answers = [Answer(c.label) for c in contenders]
    try:
        for answers in arena.ask(contenders, messages, settings, quantize=bool(q)):
            rnd = round_state(prompt, system, [c.choice for c in contenders], answers, home, done=False)
            yield _outputs("Answering…", rnd, answers, show=len(contenders))
    except UserError as e:
        yield _keep(_error(str(e)), {})
        return
    rnd = round_state(prompt, system, [c.choice for c in contenders], answers, home, done=True)
    usable = len(rnd["answers"])
    if any(a.state == STOPPED for a in answers):
        status = "Stopped: the answers end where they were cut."
    else:
        status = "All models have answered."
    status += (" Vote for the better answer." if usable >= 2 else
               " Fewer than two models answered, so there is nothing to vote on.")
    yield _outputs(status, rnd, answers, show=len(contenders))


def on_arena_stop(arena: Arena) -> str:
    """Writes the status; ends the answers under way."""
    if not arena.busy:
        return "Nothing is being answered."
    arena.stop()
    return "Stopping… the answers end within a token or two."


def on_arena_unload(arena: Arena) -> str:
    """Writes the status after the arena's workers are ended."""
    arena.shutdown()
    return "Unloaded the arena's models; the next question loads them again."


def on_arena_vote(slot: Any, rnd: dict) -> tuple[str, dict]:
    """Reads the last round; records the vote for one column (or a tie, or all bad) and writes the vote status."""
    if not rnd or not rnd.get("done"):
        return NOTHING_YET, rnd
    if rnd.get("voted"):
        return "This question has its vote already; ask another one.", rnd
    answers = rnd.get("answers") or {}
    if isinstance(slot, int):
        labels = rnd.get("labels") or []
        label = labels[slot] if slot < len(labels) else None
        if label is None or label not in answers:
            return _error("That column has no answer to vote for."), rnd
        winner = label
    else:
        winner = slot
    try:
        vote = votes.record_vote(Path(rnd["home"]), rnd["prompt"], answers, winner, models=rnd.get("models"),
                                 system=rnd.get("system"))
    except UserError as e:
        return _error(str(e)), rnd
    except OSError as e:
        return _error(f"The vote could not be written to {rnd['home']}: {e}"), rnd
    said = {votes.TIE: "a tie", votes.ALL_BAD: "all answers bad"}.get(winner, f"**{html.escape(winner)}** is better")
    where = Path(rnd["home"]) / votes.VOTES_FILE
    count = len(votes.read_votes(Path(rnd["home"])))
    return (f"<span class='ft-ok'>Vote recorded: {said}.</span> {count} vote(s) in `{where}`.",
            {**rnd, "voted": vote["time"]})


def on_arena_export(ws: Path, rnd: dict, m1: str, m2: str, m3: str, m4: str) -> tuple[str, Optional[str]]:
    """Reads the last round (or the pickers); writes the votes as a DPO preference file and offers it."""
    home = Path(rnd["home"]) if rnd and rnd.get("home") else votes.votes_home(ws, [m1, m2, m3, m4])
    try:
        out = votes.export_preferences(home)
    except UserError as e:
        return _error(str(e)), None
    except OSError as e:
        return _error(f"The preference file could not be written in {home}: {e}"), None
    return (f"<span class='ft-ok'>Wrote {out['pairs']} preference pair(s) from {out['votes']} vote(s) to "
            f"`{out['path']}`.</span> Load it in the Dataset tab and pick the DPO objective to train on it.",
            out["path"])


def on_arena_refresh(ws: Path, m1: str, m2: str, m3: str, m4: str):
    """Reads the workspace; writes the four pickers' choices (keeping what is picked)."""
    choices = chat_choices(ws)
    return [gr.update(choices=choices, value=v) for v in (m1, m2, m3, m4)]


def build(ctx: StudioContext, chat_view: Any) -> Arena:
    """The Arena panel under the chat; `chat_view` gives the system prompt, settings and 4-bit box it shares."""
    arena = Arena()
    atexit.register(arena.shutdown)
    ctx.extras["arena"] = arena  # the Train tab ends its workers before a training
    choices = chat_choices(ctx.workspace)
    with gr.Accordion("Arena: models side by side, with votes", open=False, elem_id="arena"):
        gr.Markdown(f"<span class='ft-help'>{HELP}</span>")
        with gr.Row():
            picks = [gr.Dropdown(choices=choices, value=None, allow_custom_value=True, label=f"Model {i + 1}",
                                 elem_id=f"arena-model-{i + 1}", scale=3) for i in range(MAX_MODELS)]
            refresh = gr.Button("↻ Refresh", scale=1, elem_id="arena-refresh")
        with gr.Row():
            prompt = gr.Textbox(placeholder="One question for every model", show_label=False, scale=5,
                                elem_id="arena-prompt")
            ask = gr.Button("Ask all", variant="primary", scale=1, elem_id="arena-ask")
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="arena-stop")
            unload = gr.Button("Unload (free memory)", scale=1, elem_id="arena-unload")
        status = gr.Markdown("", elem_id="arena-status")
        heads, texts, cols, vote_buttons = [], [], [], []
        with gr.Row(equal_height=False):
            for i in range(MAX_MODELS):
                with gr.Column(visible=i < 2, elem_id=f"arena-col-{i + 1}") as col:
                    heads.append(gr.Markdown("", elem_id=f"arena-head-{i + 1}"))
                    texts.append(gr.Textbox("", lines=8, max_lines=20, interactive=False, show_label=False,
                                            elem_id=f"arena-answer-{i + 1}"))
                    vote_buttons.append(gr.Button("This one is better", elem_id=f"arena-vote-{i + 1}"))
                cols.append(col)
        with gr.Row():
            tie = gr.Button("Tie", elem_id="arena-tie")
            bad = gr.Button("All bad", elem_id="arena-bad")
            export = gr.Button("Export votes as DPO file", elem_id="arena-export")
        vote_status = gr.Markdown("", elem_id="arena-vote-status")
        export_file = gr.File(label="Preference file", interactive=False, elem_id="arena-export-file")
        rnd = gr.State({})

    inputs = [*picks, prompt, chat_view.system, chat_view.quantize, *chat_view.settings]
    outputs = [status, rnd, *heads, *texts, *cols]
    ask.click(bind(on_arena_ask, arena, ctx.workspace), inputs, outputs, concurrency_id="arena",
              concurrency_limit=1)
    prompt.submit(bind(on_arena_ask, arena, ctx.workspace), inputs, outputs, concurrency_id="arena",
                  concurrency_limit=1)
    stop.click(bind(on_arena_stop, arena), None, status, queue=False)
    unload.click(bind(on_arena_unload, arena), None, status, concurrency_id="arena-unload", concurrency_limit=1)
    for i, button in enumerate(vote_buttons):
        button.click(bind(on_arena_vote, i), rnd, [vote_status, rnd], queue=False)
    tie.click(bind(on_arena_vote, votes.TIE), rnd, [vote_status, rnd], queue=False)
    bad.click(bind(on_arena_vote, votes.ALL_BAD), rnd, [vote_status, rnd], queue=False)
    export.click(bind(on_arena_export, ctx.workspace), [rnd, *picks], [vote_status, export_file], queue=False)
    refresh.click(bind(on_arena_refresh, ctx.workspace), picks, picks, queue=False)
    return arena
