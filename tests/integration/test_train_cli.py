"""`ftstudio train A.yaml B.yaml`: runs in order, one run directory per line, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend import cli
from backend.runs import rundir
from backend.core.config import save_config
from tests.integration.test_train_runner import tiny_config

pytestmark = pytest.mark.timeout(400)


def test_a_queue_of_two_where_one_fails_prints_the_good_run_dir_and_exits_1(tmp_path, tiny_model_dir, capsys):
    good = tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=2)
    # A file that exists but holds no usable row: the checks that need no model weights refuse it before
    # anything starts (no run directory, no model load); the good config still trains, and the exit code
    # says one did not complete.
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n{also not\n")
    bad = good.model_copy(update={"data": good.data.model_copy(update={"path": str(broken)}), "name": "bad"})
    save_config(good, tmp_path / "good.yaml")
    save_config(bad, tmp_path / "bad.yaml")
    code = cli.main(["train", str(tmp_path / "bad.yaml"), str(tmp_path / "good.yaml"),
                     "--workspace", str(tmp_path / "ws"), "--no-progress"])
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert "bad.yaml" in out.err and "broken.jsonl" in out.err
    assert rundir.read_status(Path(lines[0]))["state"] == "completed"
    assert (rundir.adapter_dir(Path(lines[0])) / "adapter_config.json").is_file()
    assert [p for p in (tmp_path / "ws" / "runs").iterdir() if (p / rundir.STATUS_FILE).exists()] == [Path(lines[0])]


def test_a_bad_config_exits_2_and_starts_nothing(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train:\n  learning_rat: 0.1\n")
    code = cli.main(["train", str(tmp_path / "bad.yaml"), "--workspace", str(tmp_path / "ws"), "--json"])
    out = capsys.readouterr()
    assert code == 2 and "learning_rat" in json.loads(out.out)["error"]
    assert rundir.list_runs(tmp_path / "ws") == []


def test_sigterm_to_the_command_stops_its_training_instead_of_orphaning_it(tmp_path, tiny_model_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    from backend.runs import runner

    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, max_steps=200)
    save_config(cfg, tmp_path / "long.yaml")
    env = dict(os.environ, FTSTUDIO_FAULT="slow@300")
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "train", str(tmp_path / "long.yaml"),
                             "--workspace", str(tmp_path / "ws"), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        found = rundir.list_runs(tmp_path / "ws")
        if found and any(e.get("type") == "train" for e in rundir.read_events(Path(found[0]["dir"]))[0]):
            break
        time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("the run never started training")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    run_dir = Path(out.strip().splitlines()[-1])
    status = rundir.read_status(run_dir)
    assert status["state"] == "stopped"
    assert not runner._group_alive(status["pgid"])
