"""`ftstudio serve` as a child process, for the Chat tab's Serve button (the studio never holds a model).

`ServeProcess.start` launches `python -m backend.cli serve ... --json` and returns the JSON line the server
prints once it answers HTTP; a server that exits first is reported with its own sentence.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

from backend.core.errors import UserError
from backend.core.paths import PROJECT_ROOT


def serve_command(choice: str, host: str, port: int) -> list[str]:
    """The command line the Serve button runs (the API key, if any, travels in the environment)."""
    return [sys.executable, "-m", "backend.cli", "serve", str(choice), "--host", host, "--port", str(int(port)),
            "--json"]


class ServeProcess:
    """At most one server per studio; start() replaces a running one."""

    def __init__(self) -> None:
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self.info: Optional[dict[str, Any]] = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, choice: str, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
              timeout: float = 300.0) -> dict[str, Any]:
        """Start serving `choice` (a picker value: run, adapter, merged model or base) and wait until it answers."""
        if not (choice or "").strip():
            raise UserError("Pick a model (a run, a merged model or a base) to serve first.")
        with self._lock:
            self._stop_locked()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
            env.pop("FTSTUDIO_API_KEY", None)
            if api_key:
                env["FTSTUDIO_API_KEY"] = api_key
            # stderr to a file: a chatty library filling a pipe nobody reads would block the server.
            err = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen(serve_command(choice.strip(), host, port), stdout=subprocess.PIPE, stderr=err,
                                    text=True, env=env, cwd=str(PROJECT_ROOT), start_new_session=True)
            self._proc = proc
            line = _first_line(proc, timeout)
            if line is None:
                code = proc.poll()  # None: still silent at the deadline
                self._stop_locked()
                err.seek(0)
                raise UserError(_failure_sentence(code, err.read(), timeout))
            err.close()
            info = json.loads(line)
            if "error" in info:
                self._stop_locked()
                raise UserError(info["error"])
            self.info = info
            return info

    def stop(self) -> bool:
        """End the server and its chat worker; False when none was running."""
        with self._lock:
            return self._stop_locked()

    def _stop_locked(self) -> bool:
        proc, self._proc, self.info = self._proc, None, None
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the worker goes with it
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
        return True


def _first_line(proc: subprocess.Popen, timeout: float) -> Optional[str]:
    """The server's one JSON line, or None when it exits (or stays silent) first."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while reader.is_alive() and time.monotonic() < deadline:
        reader.join(timeout=0.2)
    line = (box[0] if box else "").strip()
    return line or None


def _failure_sentence(code: Optional[int], stderr: str, timeout: float) -> str:
    said = [l[len("ftstudio: "):] for l in stderr.splitlines() if l.startswith("ftstudio: ")]
    if said:
        return said[-1]
    if code is None:
        return f"The server did not come up within {int(timeout)} s; it was stopped. Try a smaller model."
    last = next((l for l in reversed(stderr.splitlines()) if l.strip()), "")
    return f"The server stopped before it answered (exit code {code}): {last[:300]}"
