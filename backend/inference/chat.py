"""Chat, parent side: `ChatClient` drives the worker subprocess (backend/inference/chat_worker.py).

The studio process holds no model, so a crash or an out-of-memory error in the worker leaves the
UI up: the worker loads the base once, attaches adapters by name, and streams tokens back as JSON lines. The Train tab calls
`shutdown()` before a training starts so the GPU is free. A worker that died is started
again on the next call, and `take_notice()` says so.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from backend.core.errors import UserError
from backend.core.models import BUNDLED
from backend.core.paths import PROJECT_ROOT
from backend.export.merge import adapter_runs, merged_models
from backend.runs.rundir import best_checkpoint, usable_checkpoints

DEFAULT_SETTINGS: dict[str, Any] = {
    "max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "top_k": 50,
    "repetition_penalty": 1.1, "seed": None,
}
_LIMITS = {"max_new_tokens": (1, 32768), "temperature": (0.0, 5.0), "top_p": (0.0, 1.0),
           "top_k": (0, 100000), "repetition_penalty": (0.5, 3.0)}


class ChatError(UserError):
    """Something the chat could not do, as a sentence."""


def normalize_settings(settings: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Fill defaults and check ranges; a bad value is a sentence naming the setting."""
    s = dict(DEFAULT_SETTINGS)
    for k, v in (settings or {}).items():
        if k not in s:
            raise ChatError(f"'{k}' is not a generation setting; use one of {', '.join(s)}.")
        if v is not None and v != "":
            s[k] = v
    try:
        s["max_new_tokens"] = int(s["max_new_tokens"])
        s["top_k"] = int(s["top_k"])
        for k in ("temperature", "top_p", "repetition_penalty"):
            s[k] = float(s[k])
        s["seed"] = None if s["seed"] in (None, "", -1) else int(s["seed"])
    except (TypeError, ValueError) as e:
        raise ChatError(f"A generation setting is not a number ({e}).") from None
    for k, (lo, hi) in _LIMITS.items():
        if not lo <= s[k] <= hi:
            raise ChatError(f"{k.replace('_', ' ')} must be between {lo} and {hi}; got {s[k]}.")
    return s


def build_messages(history: list[dict[str, str]], user_text: str, system_prompt: Optional[str] = None) -> list[dict[str, str]]:
    """The conversation the template renders: optional system prompt, earlier turns, the new message."""
    msgs = [{"role": "system", "content": system_prompt.strip()}] if system_prompt and system_prompt.strip() else []
    for m in history:
        if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str):
            msgs.append({"role": m["role"], "content": m["content"]})
    msgs.append({"role": "user", "content": user_text})
    return msgs


def split_choice(value: str) -> tuple[Optional[str], Optional[str]]:
    """A picker value as (model, adapter): an adapter or run folder, else a model reference."""
    value = (value or "").strip()
    p = Path(value).expanduser()
    if value and p.is_dir() and ((p / "adapter_config.json").exists() or (p / "adapter").is_dir()):
        return None, str(p)
    return value or None, None


def chat_choices(workspace: str | Path) -> list[tuple[str, str]]:
    """What the Chat tab offers: each run's final adapter and its checkpoints, merged models, and the
    bundled base alone."""
    runs = []
    for label, d in adapter_runs(workspace):
        best = best_checkpoint(Path(d))
        if best is not None:  # offered first: the point of the run with the lowest validation loss
            step, folder, val = best
            shown = f"val {val:.3f}, step {step}" if val is not None else f"step {step}"
            runs.append((f"run: {label} · best ({shown})", str(folder)))
        runs.append((f"run: {label}", d))
        # Earlier states of the same run: a checkpoint holds the adapter (or model) as it was at that step.
        runs += [(f"run: {label} · checkpoint at step {step}", str(p)) for step, p in usable_checkpoints(Path(d))
                 if best is None or p != best[1]]
    bases = [(f"base only: {name}", name) for name in BUNDLED]
    return runs + merged_models(workspace) + bases


class ChatClient:
    """One worker subprocess; calls are serialized (the studio is single-user)."""

    def __init__(self, python: str = sys.executable, reply_timeout: float = 600.0) -> None:
        self._python = python
        self._timeout = reply_timeout
        self._proc: Optional[subprocess.Popen] = None
        self._events: "queue.Queue[dict]" = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        # A plain Lock, not an RLock: Gradio may resume a streaming generator on another thread.
        self._lock = threading.Lock()           # one request at a time
        self._write_lock = threading.Lock()     # stop() writes while stream() holds _lock
        self._ids = itertools.count(1)
        self._wanted: Optional[dict[str, Any]] = None   # the last load, replayed after a restart
        self._notice: Optional[str] = None
        self.last_loaded: Optional[dict[str, Any]] = None
        self.last_done: Optional[dict[str, Any]] = None

    # ---- process -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def take_notice(self) -> Optional[str]:
        """A message about a restarted worker, once."""
        n, self._notice = self._notice, None
        return n

    def _start(self) -> None:
        repo = PROJECT_ROOT
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
        self._events = queue.Queue()
        self._stderr.clear()
        self._proc = subprocess.Popen(
            [self._python, "-m", "backend.inference.chat_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1, env=env, cwd=str(repo), start_new_session=True)
        threading.Thread(target=self._pump_stdout, args=(self._proc, self._events), daemon=True).start()
        threading.Thread(target=self._pump_stderr, args=(self._proc,), daemon=True).start()
        ev = self._wait(lambda e: e.get("event") == "ready", timeout=300)
        if ev.get("event") != "ready":
            raise ChatError(ev.get("message", "The chat worker did not start."))

    def _pump_stdout(self, proc: subprocess.Popen, events: "queue.Queue[dict]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                events.put(json.loads(line))
            except json.JSONDecodeError:
                self._stderr.append(line.rstrip())
        events.put({"event": "_eof"})

    def _pump_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr.append(line.rstrip())

    def _death_sentence(self, doing: str) -> str:
        code = self._proc.wait(timeout=10) if self._proc else None
        last = next((l for l in reversed(self._stderr) if l.strip()), "")
        if code in (-9, 137):
            why = "it was killed, most likely because the model does not fit in memory"
        else:
            why = f"exit code {code}" + (f": {last[:300]}" if last else "")
        return (f"The chat worker stopped while {doing} ({why}). It will be started again on the next message; "
                "if this repeats, pick a smaller model or lower 'max new tokens'.")

    def _ensure(self) -> None:
        if self.alive:
            return
        crashed = self._proc is not None
        code = self._proc.poll() if self._proc else None
        self._start()
        if crashed:
            self._notice = f"The chat worker had stopped (exit code {code}); it was restarted."
        elif self._wanted:
            self._notice = "The chat model had been unloaded (to free memory for training)."
        if self._wanted:
            self.last_loaded = self._request({"cmd": "load", **self._wanted}, "loaded")
            self._notice = (self._notice or "") + " The model was loaded again."

    def _send(self, msg: dict[str, Any]) -> None:
        with self._write_lock:
            if not self.alive or self._proc.stdin is None:
                return
            try:
                self._proc.stdin.write(json.dumps(msg) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def _wait(self, match, timeout: Optional[float] = None, doing: str = "starting") -> dict[str, Any]:
        try:
            while True:
                ev = self._events.get(timeout=timeout or self._timeout)
                if ev.get("event") == "_eof":
                    raise ChatError(self._death_sentence(doing))
                if match(ev) or ev.get("event") == "error":
                    return ev
        except queue.Empty:
            raise ChatError(f"The chat worker did not answer within {int(timeout or self._timeout)} s while {doing}.") from None

    def _request(self, msg: dict[str, Any], expect: str, doing: str = "loading the model") -> dict[str, Any]:
        self._send(msg)
        ev = self._wait(lambda e: e.get("event") == expect, doing=doing)
        if ev.get("event") == "error":
            raise ChatError(ev.get("message", "The chat worker reported an error."))
        return ev

    # ---- public --------------------------------------------------------------------------
    def _acquire(self, timeout: float = 30.0) -> None:
        if not self._lock.acquire(timeout=timeout):
            raise ChatError("The chat is still answering an earlier message. Press Stop, then try again.")

    def load(self, model: Optional[str] = None, adapter: Optional[str] = None, quantize: bool = False) -> dict[str, Any]:
        """Load a base (and attach an adapter); the base stays when only the adapter changes."""
        self._acquire()
        try:
            self._ensure()
            want = {"model": model or None, "adapter": str(adapter) if adapter else None, "quantize": bool(quantize)}
            ev = self._request({"cmd": "load", **want}, "loaded")
            self._wanted, self.last_loaded = want, ev
            notice = self.take_notice()
            return {**ev, "message": notice} if notice else ev
        finally:
            self._lock.release()

    def status(self) -> dict[str, Any]:
        self._acquire()
        try:
            self._ensure()
            return self._request({"cmd": "status"}, "status", doing="reporting its status")
        finally:
            self._lock.release()

    def stream(self, messages: list[dict[str, str]], settings: Optional[dict[str, Any]] = None,
               use_adapter: bool = True) -> Iterator[str]:
        """Yield reply text chunks as the worker produces them; stop() ends the reply early."""
        s = normalize_settings(settings)  # a bad setting is a sentence before anything starts
        self._acquire()
        try:
            self._ensure()
            if self._wanted is None:
                raise ChatError("No model is loaded yet. Pick a model (and adapter) and press Load.")
            rid = next(self._ids)
            self._send({"cmd": "generate", "id": rid, "messages": messages, "settings": s,
                        "use_adapter": bool(use_adapter)})
            finished = False
            try:
                while True:
                    ev = self._wait(lambda e: e.get("id") == rid, doing="answering")
                    kind = ev.get("event")
                    if kind == "token":
                        yield ev.get("text", "")
                    elif kind == "done":
                        finished = True
                        self.last_done = ev
                        return
                    elif kind == "error":
                        finished = True
                        raise ChatError(ev.get("message", "Generation failed."))
            finally:
                if not finished and self.alive:
                    # The consumer went away mid-reply: stop the worker and drain to its "done".
                    self._send({"cmd": "stop"})
                    try:
                        self._wait(lambda e: e.get("id") == rid and e.get("event") in ("done", "error"),
                                   timeout=60, doing="stopping")
                    except ChatError:
                        pass
        finally:
            self._lock.release()

    def reply(self, messages: list[dict[str, str]], settings: Optional[dict[str, Any]] = None,
              use_adapter: bool = True) -> str:
        return "".join(self.stream(messages, settings, use_adapter))

    def stop(self) -> None:
        """Interrupt the generation under way (safe to call from another thread)."""
        self._send({"cmd": "stop"})

    def shutdown(self, timeout: float = 10.0) -> None:
        """End the worker and free its memory (the Train tab calls this before training)."""
        self.stop()
        got = self._lock.acquire(timeout=timeout)  # a reply being stopped ends within a token or two
        try:
            # _wanted stays: the next message loads the same model again.
            proc, self._proc = self._proc, None
            if proc is None or proc.poll() is not None:
                return
            try:
                if proc.stdin:
                    proc.stdin.write(json.dumps({"cmd": "shutdown"}) + "\n")
                    proc.stdin.flush()
                proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout=5)
        finally:
            if got:
                self._lock.release()
