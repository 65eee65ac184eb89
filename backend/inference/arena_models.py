"""The arena's models: 2–4 picks (a base, a run's adapter or checkpoint, a merged folder) answering one
prompt side by side, each answer streamed as it comes.

Picks that share a base share one chat worker (backend.inference.chat.ChatClient): the worker keeps the
base once and switches adapters by name, so base + adapter + two checkpoints cost one model in memory.
Each worker answers its picks in turn; different workers answer at the same time, in threads. A pick
that cannot be resolved or loaded ends as a sentence in its own answer; the others still answer.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from backend.core import access
from backend.core.errors import UserError
from backend.core.models import ModelError, resolve_model
from backend.export.merge import locate_adapter
from backend.inference.chat import ChatClient, chat_choices, split_choice

MIN_MODELS, MAX_MODELS = 2, 4
WAITING, LOADING, ANSWERING, DONE, STOPPED, FAILED = "waiting", "loading", "answering", "done", "stopped", "error"


@dataclass
class Contender:
    """One pick: its label (what the votes call it), what the worker loads, and the base that groups it."""
    label: str
    choice: str
    model: Optional[str] = None
    adapter: Optional[str] = None
    base: Optional[str] = None       # the resolved base folder or hub id: picks with the same one share a worker
    error: Optional[str] = None      # why it cannot answer, as a sentence


@dataclass
class Answer:
    """A contender's answer as it stands: state, the text so far, and how it ended."""
    label: str
    state: str = WAITING
    text: str = ""
    error: Optional[str] = None
    tokens: Optional[int] = None
    seconds: Optional[float] = None
    started: Optional[float] = field(default=None, repr=False)

    @property
    def usable(self) -> bool:
        """An answer a vote can compare: it finished (or was stopped) with some text."""
        return self.state in (DONE, STOPPED) and bool(self.text.strip())


def labels_for(workspace: Path, choices: list[str]) -> list[str]:
    """The picker's label for each value (the path itself for a typed one), made unique."""
    known = {value: label for label, value in chat_choices(workspace)}
    out: list[str] = []
    for choice in choices:
        label = known.get(choice, choice)
        n, unique = 2, label
        while unique in out:
            unique, n = f"{label} ({n})", n + 1
        out.append(unique)
    return out


def _resolve(choice: str) -> tuple[Optional[str], Optional[str], str]:
    """(model, adapter, base) for a pick: the base is what the worker will load, resolved as it resolves it."""
    model, adapter = split_choice(choice)
    if adapter:
        src = locate_adapter(adapter)
        ref = str(src.adapter_dir) if src.peft_type is None else src.base  # a full model needs no base
    else:
        ref = model or ""
    try:
        return model, adapter, resolve_model(ref).source
    except ModelError as e:
        raise UserError(str(e)) from e


def plan(workspace: Optional[Path], choices: list[Optional[str]]) -> list[Contender]:
    """The round's contenders from the pickers (empty ones skipped). Fewer than two or more than four picks,
    or one model picked twice, is a sentence; a pick the studio may not read or cannot resolve gets its
    sentence in `error` and the others still answer."""
    picked = [str(c).strip() for c in choices if c is not None and str(c).strip()]
    if len(picked) < MIN_MODELS:
        raise UserError(f"Pick at least {MIN_MODELS} models for the arena (a base, a run, a checkpoint or a merged "
                        "folder), then ask.")
    if len(picked) > MAX_MODELS:
        raise UserError(f"The arena compares at most {MAX_MODELS} models at once; clear {len(picked) - MAX_MODELS}.")
    twice = sorted({c for c in picked if picked.count(c) > 1})
    if twice:
        raise UserError(f"{twice[0]} is picked twice; pick different models (a base, runs, checkpoints).")
    labels = labels_for(workspace, picked) if workspace is not None else list(picked)
    out = []
    for label, choice in zip(labels, picked):
        c = Contender(label, choice)
        try:
            if workspace is not None:  # the studio's path policy, before anything looks at the folder
                choice = access.policy(workspace).model(choice, "model or adapter folder")
            c.model, c.adapter, c.base = _resolve(choice)
        except UserError as e:
            c.error = str(e)
        out.append(c)
    return out


class Arena:
    """The workers of the current round, one per base; a round at a time."""

    def __init__(self, client_factory: Callable[[], Any] = ChatClient) -> None:
        self._factory = client_factory
        self._clients: dict[str, Any] = {}
        self._stop = threading.Event()
        self._round = threading.Lock()

    @property
    def workers(self) -> int:
        return len(self._clients)

    def _clients_for(self, bases: set[str]) -> dict[str, Any]:
        # Workers for bases this round does not use are ended: memory holds only what is compared.
        for base in [b for b in self._clients if b not in bases]:
            self._clients.pop(base).shutdown()
        for base in bases:
            if base not in self._clients:
                self._clients[base] = self._factory()
        return self._clients

    def ask(self, contenders: list[Contender], messages: list[dict[str, str]], settings: Optional[dict[str, Any]] = None,
            quantize: bool = False) -> Iterator[list[Answer]]:
        """Yield every contender's Answer each time any of them changes, until all have ended."""
        if not self._round.acquire(blocking=False):
            raise UserError("The arena is still answering the last prompt. Press Stop, then ask again.")
        try:
            yield from self._ask(contenders, messages, settings, quantize)
        finally:
            self._round.release()

    def _ask(self, contenders, messages, settings, quantize) -> Iterator[list[Answer]]:
        self._stop.clear()
        answers = [Answer(c.label) for c in contenders]
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(contenders):
            if c.error:
                answers[i].state, answers[i].error = FAILED, c.error
            else:
                groups.setdefault(c.base or "", []).append(i)
        clients = self._clients_for(set(groups))
        events: "queue.Queue[tuple]" = queue.Queue()
        threads = [threading.Thread(target=self._answer_group, name="arena", daemon=True,
                                    args=(clients[base], [(i, contenders[i]) for i in members], messages,
                                          settings, quantize, events))
                   for base, members in groups.items()]
        for t in threads:
            t.start()
        yield answers
        running = len(threads)
        try:
            while running:
                got = [events.get()]
                while True:  # take whatever else arrived, so a slow page gets one update, not a backlog
                    try:
                        got.append(events.get_nowait())
                    except queue.Empty:
                        break
                for ev in got:
                    running -= self._apply(answers, ev)
                yield answers
        finally:
            if running:  # the page went away mid-round: end the replies under way
                self.stop()
                for t in threads:
                    t.join(timeout=30)

    @staticmethod
    def _apply(answers: list[Answer], ev: tuple) -> int:
        """Apply one event to the answers; 1 when a group has finished."""
        i, kind, value = ev
        if kind == "group_end":
            return 1
        a = answers[i]
        if kind == "state":
            a.state = value
            if value == ANSWERING:
                a.started = time.monotonic()
        elif kind == "text":
            a.text += value
        elif kind == "done":
            a.state = STOPPED if value.get("stopped") else DONE
            a.tokens = value.get("tokens")
            a.seconds = round(time.monotonic() - (a.started or time.monotonic()), 1)
        elif kind == "error":
            a.state, a.error = FAILED, value
        return 0

    def _answer_group(self, client: Any, members: list[tuple[int, Contender]], messages, settings, quantize,
                      events: "queue.Queue[tuple]") -> None:
        try:
            for i, c in members:
                if self._stop.is_set():
                    events.put((i, "done", {"stopped": True, "tokens": 0}))
                    continue
                try:
                    events.put((i, "state", LOADING))
                    client.load(c.model, c.adapter, quantize=quantize)
                    if self._stop.is_set():
                        events.put((i, "done", {"stopped": True, "tokens": 0}))
                        continue
                    events.put((i, "state", ANSWERING))
                    for chunk in client.stream(messages, settings, use_adapter=True):
                        if self._stop.is_set():
                            client.stop()  # a Stop that reached the worker before its reply began was lost
                        events.put((i, "text", chunk))
                    events.put((i, "done", dict(client.last_done or {})))
                except UserError as e:
                    events.put((i, "error", str(e)))
                except Exception as e:  # noqa: BLE001 - one model's failure stays in its own column
                    events.put((i, "error", f"{c.label} could not answer ({type(e).__name__}: {e})."))
        finally:
            events.put((None, "group_end", None))

    def stop(self) -> None:
        """End the replies under way (safe from another thread); picks not started yet do not start."""
        self._stop.set()
        for client in list(self._clients.values()):
            client.stop()

    @property
    def busy(self) -> bool:
        return self._round.locked()

    def shutdown(self) -> None:
        """End every worker and free their memory (the Train tab calls this before a training)."""
        self.stop()
        for base in list(self._clients):
            self._clients.pop(base).shutdown()
