"""Helpers for the reliability suite: a stand-in trainer (no torch), a studio in a subprocess, timing."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import pytest

from backend.runs import runner

REPO = Path(__file__).resolve().parents[2]

# Marks itself running, then waits for a stop request; lets process-level tests run without torch.
FAKE_TRAINER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from backend.runs import rundir
    run_dir = Path(sys.argv[1])
    rundir.write_status(run_dir, state="running")
    while not rundir.stop_requested(run_dir):
        time.sleep(0.05)
    rundir.write_status(run_dir, state="stopped", ended=rundir.now_iso())
""")


def write_fake_trainer(folder: Path) -> Path:
    script = folder / "fake_trainer.py"
    script.write_text(FAKE_TRAINER.format(repo=str(REPO)))
    return script


@pytest.fixture()
def fake_trainer(monkeypatch, tmp_path) -> Path:
    script = write_fake_trainer(tmp_path)
    monkeypatch.setattr(runner, "_launch_command",
                        lambda run_dir, cfg, resume: [sys.executable, str(script), str(run_dir)])
    return script


@pytest.fixture()
def launch_kwargs(monkeypatch) -> dict:
    """What the launcher hands Gradio's launch(), captured by a stand-in app (no server, no bundled model)."""
    import studio.app
    from backend.core import models

    seen: dict = {}

    class FakeDemo:
        def queue(self, **kw):
            return self

        def launch(self, **kw):
            seen.update(kw)

    monkeypatch.setattr(studio.app, "build_app", lambda ws: FakeDemo())
    monkeypatch.setattr(models, "ensure_bundled", lambda *a, **k: None)
    return seen


def wait_until(predicate: Callable, timeout: float = 60.0, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Studio:
    """`python launch.py` in its own process group, on a free port, against a given workspace."""

    def __init__(self, workspace: Path, log: Path, auth: Optional[str] = None, extra: tuple[str, ...] = ()):
        self.workspace, self.log, self.auth, self.extra = workspace, log, auth, list(extra)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 120.0) -> "Studio":
        cmd = [sys.executable, "launch.py", "--port", str(self.port), "--workspace", str(self.workspace)]
        if self.auth:
            cmd += ["--auth", self.auth]
        cmd += self.extra
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"the studio exited: {self.log.read_text()[-3000:]}")
            try:
                return http_get(self.url + "/", timeout=2)[0] in (200, 401, 302, 307)
            except OSError:
                return False

        wait_until(up, timeout, 0.5)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM killer would: nothing gets to clean up."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture()
def studio_factory(tmp_path):
    started: list[Studio] = []

    def make(workspace: Path, auth: Optional[str] = None, extra: tuple[str, ...] = ()) -> Studio:
        s = Studio(workspace, tmp_path / f"studio-{len(started)}.log", auth, extra)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


def peak_rss_kb() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
