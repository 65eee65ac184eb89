"""The browser harness: the studio as a real subprocess, driven by Playwright in Debian's Chromium.

One studio server and one browser serve the whole session (starting Gradio costs
seconds on a small CPU); every test gets a fresh browser context and page. Where
Chromium is missing the e2e tests skip, loudly, instead of failing the suite:
`tests/ensure_browser.py` (run by `make test`) installs it where it can.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.helpers import CHROMIUM, CHROMIUM_ARGS, REPO, Studio, goto_studio, run_groups

if importlib.util.find_spec("playwright") is None:
    # The test modules import playwright; without it they cannot even be collected.
    collect_ignore_glob = ["test_*.py"]
    print("\nE2E TESTS SKIPPED: the Python package `playwright` is missing; `pip install -e .[dev]`.",
          file=sys.stderr)

STEP_TIMEOUT_MS = 60_000
SERVER_START_TIMEOUT_S = 180  # cold imports of torch/transformers/gradio on a busy 2-core box
E2E_DIR = Path(__file__).resolve().parent


def _missing_browser_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return (f"E2E TESTS SKIPPED: {CHROMIUM} is missing. Install it with "
                "`python tests/ensure_browser.py` (root + apt) or `apt-get install chromium`.")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "E2E TESTS SKIPPED: the Python package `playwright` is missing; `pip install -e .[dev]`."
    return None


def pytest_collection_modifyitems(config, items):
    ours = [item for item in items if Path(str(item.fspath)).resolve().is_relative_to(E2E_DIR)]
    if not ours:
        return
    reason = _missing_browser_reason()
    for item in ours:
        item.add_marker(pytest.mark.e2e)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
    if reason:
        # A skip line is easy to miss in -q output; say it where a person looks.
        print(f"\n{'!' * 20}\n{reason}\n{'!' * 20}", file=sys.stderr)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _kill_group(pgid: int, grace_s: float = 10.0) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(fields[1]), fields[19])
        except (OSError, IndexError, ValueError):
            continue
    return table


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of pid's children at any depth: the chat worker and merges run in their own sessions."""
    table = _proc_table()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, started) in table.items():
            if ppid == parent:
                found.append((child, started))
                todo.append(child)
    return found


def _kill_pids(procs: list[tuple[int, str]]) -> None:
    table = _proc_table()
    for pid, started in procs:
        if pid in table and table[pid][1] == started:  # the same process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _stop_studio(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    # Wait on the Popen itself: an exited but unreaped child still counts as a member of its group.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
        pass
    proc.wait()


def _kill_run_groups(workspace: Path) -> None:
    """Training/merge/chat subprocesses run in their own sessions; end the ones this workspace started."""
    for pgid in run_groups(workspace):
        _kill_group(pgid, grace_s=3.0)


@pytest.fixture(scope="session")
def studio_server(tmp_path_factory) -> Iterator[Studio]:
    if _missing_browser_reason():
        pytest.skip(_missing_browser_reason())
    workspace = tmp_path_factory.mktemp("e2e") / "workspace"
    workspace.mkdir()
    port = _free_port()
    log_path = workspace.parent / "studio.log"
    # A hub cache of the session's own: the model picker lists what is in it, and a test puts a model there
    # (the user's real ~/.cache/huggingface is not the tests' business).
    hub_cache = workspace.parent / "hub-cache"
    hub_cache.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", HF_HUB_CACHE=str(hub_cache),
               FTSTUDIO_MODEL_CACHE=str(REPO / ".test-cache" / "models"))
    python = REPO / ".venv" / "bin" / "python"
    # The tests' tiny model lives outside the workspace: the studio reads it only where --allow-path says.
    test_cache = REPO / ".test-cache"
    test_cache.mkdir(exist_ok=True)
    cmd = [str(python if python.exists() else sys.executable), "launch.py",
           "--port", str(port), "--workspace", str(workspace), "--allow-path", str(test_cache)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    studio = Studio(url=url, workspace=workspace, log_path=log_path, proc=proc, hub_cache=hub_cache)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _answers(url):
            if proc.poll() is not None:
                pytest.fail(f"The studio exited with code {proc.returncode} before answering.\n"
                            f"--- {log_path} ---\n{studio.log()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"The studio did not answer on {url} within {SERVER_START_TIMEOUT_S}s.\n"
                            f"--- {log_path} ---\n{studio.log()}", pytrace=False)
            time.sleep(0.5)
        yield studio
    finally:
        helpers = _descendants(proc.pid)
        _stop_studio(proc)
        _kill_run_groups(workspace)
        _kill_pids(helpers)
        log.close()


@pytest.fixture(scope="session")
def chromium_browser(studio_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def studio_page(chromium_browser, studio_server, request):
    """A fresh page on the studio, loaded and showing its tabs. Dumps the server log tail on failure."""
    from playwright.sync_api import expect

    # Every step waits on a server event; on a busy 2-core machine one can take tens of seconds.
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The studio keeps a user's choices in the workspace (backend.core.choices); each test starts as a
    # new user would, from the defaults, whatever the test before it chose.
    (studio_server.workspace / "studio-choices.json").unlink(missing_ok=True)
    goto_studio(page, studio_server.url)
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(f"\n--- studio log tail ---\n{studio_server.log()[-4000:]}", file=sys.stderr)
        if errors:
            print("--- page errors ---\n" + "\n".join(errors), file=sys.stderr)
        try:
            page.screenshot(path=str(E2E_DIR / "screenshots" / f"FAILED-{request.node.name}.png"), full_page=True)
        except Exception:
            pass
    context.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
