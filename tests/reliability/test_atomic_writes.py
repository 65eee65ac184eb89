"""Every JSON/YAML file the studio writes is replaced atomically: a writer killed at any moment
leaves the old or the new file, never a torn one. Checked three ways: real SIGKILLs of a process
writing in a loop, a failure injected inside the write, and a scan of the sources for plain writes."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from backend.core import io as io_utils
from backend.runs import rundir
from backend.core.config import RunConfig, load_config, save_config
from tests.reliability.conftest import REPO

pytestmark = pytest.mark.timeout(120)

BIG = 300_000  # characters per version: a write takes long enough to be caught in the middle

# Each writer alternates two versions of one file, forever, announcing each completed write on stdout.
WRITER = textwrap.dedent("""
    import sys, json
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    kind, target = sys.argv[1], Path(sys.argv[2])
    def blob(v): return (v * {big})
    if kind == "status":
        from backend.runs import rundir
        write = lambda v: rundir.write_status(target, note=blob(v))
    elif kind == "config":
        from backend.core.config import RunConfig, save_config
        write = lambda v: save_config(RunConfig.model_validate({{"data": {{"system_prompt": blob(v)}}}}),
                                      target / "config.yaml")
    elif kind == "queue":
        from backend.runs import queue
        write = lambda v: queue._save(target, {{"entries": [], "marker": blob(v)}})
    elif kind == "preset":
        from backend.core.presets import save_preset
        write = lambda v: save_preset("mine", {{"data": {{"system_prompt": blob(v)}}}}, user=target)
    elif kind == "eval":
        from backend.core.io import atomic_write_json
        write = lambda v: atomic_write_json(target / "eval.json", {{"samples": [blob(v)]}})
    elif kind == "naive":  # the control: what a plain write does when killed half-way
        import time
        def write(v):
            with open(target / "naive.json", "w") as fh:
                fh.write(json.dumps({{"x": blob(v)}})[:1000]); fh.flush(); time.sleep(0.05)
                fh.write(json.dumps({{"x": blob(v)}})[1000:])
    i = 0
    while True:
        write("AB"[i % 2]); i += 1
        print(i, flush=True)
""")

FILES = {"status": "status.json", "config": "config.yaml", "queue": "queue.json", "preset": "mine.yaml",
         "eval": "eval.json", "naive": "naive.json"}


def _content(kind: str, path: Path) -> str:
    """Which version the file holds ('A' or 'B'); raises if the file is torn or unreadable."""
    text = path.read_text(encoding="utf-8")
    if kind == "config":
        return load_config(path).data.system_prompt[0]
    if kind == "preset":
        return yaml.safe_load(text)["data"]["system_prompt"][0]
    data = json.loads(text)
    value = {"status": lambda d: d["note"], "queue": lambda d: d["marker"], "eval": lambda d: d["samples"][0],
             "naive": lambda d: d["x"]}[kind](data)
    assert len(value) == BIG and set(value) == {value[0]}
    return value[0]


def _kill_loop(kind: str, target: Path, kills: int, seed: int) -> list[str]:
    """Start the writer `kills` times, SIGKILL it at a random moment after its first write; the
    content read after each kill."""
    rng = random.Random(seed)
    script = target.parent / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), big=BIG))
    seen = []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, str(script), kind, str(target)], stdout=subprocess.PIPE,
                                text=True)
        proc.stdout.readline()  # one complete write, so there is an "old" file
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        seen.append(_content(kind, target / FILES[kind]))
    return seen


@pytest.fixture()
def target(tmp_path):
    d = tmp_path / "target"
    d.mkdir()
    (d / "status.json").write_text("{}")
    return d


@pytest.mark.parametrize("kind", ["status", "config", "queue", "preset", "eval"])
def test_a_writer_killed_at_random_moments_never_leaves_a_torn_file(target, kind):
    seen = _kill_loop(kind, target, kills=4, seed=sum(map(ord, kind)))
    assert set(seen) <= {"A", "B"}


def test_the_kill_loop_does_catch_a_plain_write_half_way(target):
    with pytest.raises((json.JSONDecodeError, AssertionError, KeyError)):
        for seed in range(5):
            _kill_loop("naive", target, kills=3, seed=seed)


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_failure_inside_the_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch, where):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="old"))
    before_status = (run_dir / rundir.STATUS_FILE).read_text()
    before_config = (run_dir / rundir.CONFIG_FILE).read_text()
    boom = OSError(28, "No space left on device (injected)")

    if where == "write":
        real_fdopen = os.fdopen

        def fdopen(fd, *a, **kw):
            fh = real_fdopen(fd, *a, **kw)
            real_write = fh.write

            class Half:
                def __getattr__(self, name):
                    return getattr(fh, name)

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    return fh.__exit__(*exc)

                def write(self, text):
                    real_write(text[: len(text) // 2])
                    raise boom
            return Half()
        monkeypatch.setattr(io_utils.os, "fdopen", fdopen)
    elif where == "fsync":
        monkeypatch.setattr(io_utils.os, "fsync", lambda fd: (_ for _ in ()).throw(boom))
    else:
        monkeypatch.setattr(io_utils.os, "replace", lambda a, b: (_ for _ in ()).throw(boom))

    with pytest.raises(OSError):
        rundir.write_status(run_dir, state="running", note="new" * 1000)
    with pytest.raises(OSError):
        save_config(RunConfig(name="new"), run_dir / rundir.CONFIG_FILE)
    monkeypatch.undo()
    assert (run_dir / rundir.STATUS_FILE).read_text() == before_status
    assert (run_dir / rundir.CONFIG_FILE).read_text() == before_config
    assert load_config(run_dir / rundir.CONFIG_FILE).name == "old"
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")], "no temp file left behind"


# Plain writes that are fine, and why. Anything else that writes a file must use backend.core.io.
PLAIN_WRITES_ALLOWED = {
    ("backend/core/io.py", "os.fdopen"): "the atomic writer itself (writes a temp file, then os.replace)",
    ("backend/training/callbacks.py", "fault_child.pid"): "test-only fault injection",
    ("backend/core/io.py", "def make_reserve"): "zeros that hold disk space for a full disk; never read",
    ("backend/core/locks.py", "as lock_file"): "the flock helper's lock file; its content is never read",
    ("backend/runs/queue.py", "aside.write_bytes"): "a copy of a bad queue file set aside under a new name",
    ("backend/export/merge.py", "_MERGED_MARK"): "written into a temp directory that is swapped in with os.replace",
    ("backend/core/models.py", "_CONVERTED_MARK"): "written into a temp directory that is swapped in with os.replace",
    ("backend/export/llamacpp_lib.py", "patch_c23_references"): "a library copy written to a temp name and "
                                                              "moved in with os.replace; `.complete` is "
                                                              "written last, under the lock",
    ("backend/inference/arena.py", "VOTES_FILE"): "one JSON line appended per vote under the file lock; a "
                                                  "half-written last line is skipped by the reader",
    ("backend/data/health.py", "open(part"): "the de-duplicated copy is written to a hidden .part name and "
                                            "renamed into place once complete; the original is never touched",
    ("backend/data/rowstore.py", "mkdtemp"): "a process's own scratch folder of training rows, fresh per writer; "
                                             "nothing reads it until finish() returns, and a killed writer's "
                                             "folder is removed by the next one",
    ("studio/tabs/dataset.py", "Exclusive"): "an upload copied to a new name (exclusive create); nothing points "
                                             "at it until the copy has returned",
}
WRITE_CALL = re.compile(r"\.write_text\(|\.write_bytes\(|open\([^)]*[\"'][wax]b?\+?[\"']|json\.dump\(|yaml\.(safe_)?dump\(\w+,\s*\w+\s*[,)]")


def test_every_json_and_yaml_writer_goes_through_the_atomic_helpers():
    offenders = []
    for folder in ("backend", "studio"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines, 1):
                if not WRITE_CALL.search(line) or line.lstrip().startswith("#"):
                    continue
                context = "\n".join(lines[max(0, n - 8):n])
                if any(rel == f and key in context for (f, key) in PLAIN_WRITES_ALLOWED):
                    continue
                if re.search(r"open\([^)]*[\"']ab?[\"']", line) and re.search(r"lock|LOG_FILE|\.log", line):
                    continue  # appending to a log, or a lock file for flock: never read back as a whole
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "plain writes (use backend.core.io.atomic_write_*):\n" + "\n".join(offenders)
