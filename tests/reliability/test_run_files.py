"""Damaged run files: corrupt checkpoints are named and passed over on resume, a torn events.jsonl keeps
every complete event (and the next append is not lost), a hand-edited config names each bad field,
and two starts at once from separate processes leave exactly one winner."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backend.runs import runner
from backend.runs import rundir
from backend.training import run as train
from backend.core.config import ConfigError, RunConfig, load_config
from backend.core.errors import UserError
from tests.reliability.conftest import REPO, wait_until, write_fake_trainer

pytestmark = pytest.mark.timeout(120)


def make_checkpoint(run_dir: Path, step: int) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    ckpt = rundir.checkpoints_dir(run_dir) / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"lora_A": np.ones((4, 4), dtype=np.float32)}, str(ckpt / "adapter_model.safetensors"))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return ckpt


DAMAGE = {
    "truncated trainer_state.json": (lambda c: (c / "trainer_state.json").write_text('{"global_step": 4, "log_hi'),
                                     "trainer_state.json is truncated"),
    "missing trainer_state.json": (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    "missing model file": (lambda c: (c / "adapter_model.safetensors").unlink(), "model weights file is missing"),
    "truncated weights": (lambda c: (c / "adapter_model.safetensors").write_bytes(
        (c / "adapter_model.safetensors").read_bytes()[:-20]), "adapter_model.safetensors is truncated"),
    "empty weights": (lambda c: (c / "adapter_model.safetensors").write_bytes(b""),
                      "adapter_model.safetensors is truncated"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_names_the_bad_checkpoint_and_falls_back_to_the_previous_one(tmp_path, fake_trainer, damage):
    spoil, says = DAMAGE[damage]
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="corrupt"))
    rundir.write_status(run_dir, state="failed", error="killed")
    make_checkpoint(run_dir, 2)
    spoil(make_checkpoint(run_dir, 4))
    assert rundir.checkpoint_problem(rundir.checkpoints_dir(run_dir) / "checkpoint-2") is None
    assert says in rundir.checkpoint_problem(rundir.checkpoints_dir(run_dir) / "checkpoint-4")
    assert rundir.last_checkpoint(run_dir).name == "checkpoint-2"

    runner.resume_run(run_dir)
    try:
        status = rundir.read_raw_status(run_dir)
        assert status["resume_from"].endswith("checkpoint-2")
        assert "checkpoint-4 is damaged" in status["note"] and says in status["note"]
        assert "resuming from the previous checkpoint, checkpoint-2" in status["note"]
        fallback = [e for e in rundir.read_events(run_dir)[0] if e["type"] == "resume_fallback"]
        assert fallback and fallback[0]["skipped"][0]["path"].endswith("checkpoint-4")
    finally:
        wait_until(lambda: rundir.read_status(run_dir)["state"] == "running", 30)
        runner.stop_run(run_dir, timeout=20)
    assert (rundir.checkpoints_dir(run_dir) / "checkpoint-4").is_dir(), "the damaged checkpoint is kept to look at"


def test_resume_with_every_checkpoint_damaged_says_which_and_starts_nothing(tmp_path, fake_trainer):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="all bad"))
    rundir.write_status(run_dir, state="failed")
    DAMAGE["missing model file"][0](make_checkpoint(run_dir, 2))
    DAMAGE["truncated trainer_state.json"][0](make_checkpoint(run_dir, 4))
    with pytest.raises(UserError) as e:
        runner.resume_run(run_dir)
    assert "checkpoint-4 is damaged" in str(e.value) and "checkpoint-2 is damaged" in str(e.value)
    assert rundir.read_raw_status(run_dir)["state"] == "failed"


def test_a_truncated_events_file_keeps_every_complete_event_and_the_next_append(tmp_path):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig())
    for step in range(1, 21):
        rundir.append_event(run_dir, {"type": "train", "step": step, "loss": 1.0 / step})
    path = run_dir / rundir.EVENTS_FILE
    data = path.read_bytes()
    cut = data.rfind(b"\n", 0, len(data) - 1) + 15  # inside the last line, as a kill mid-write leaves it
    path.write_bytes(data[:cut])
    events, offset = rundir.read_events(run_dir)
    assert [e["step"] for e in events] == list(range(1, 20)), "the torn line is skipped, never fatal"

    # The trainer resumes and appends: the new event must not be glued to the torn line.
    rundir.append_event(run_dir, {"type": "resume", "checkpoint": "checkpoint-18"})
    rundir.append_event(run_dir, {"type": "train", "step": 19, "loss": 0.5})
    more, _ = rundir.read_events(run_dir, offset)
    assert [e["type"] for e in more] == ["resume", "train"]
    everything, _ = rundir.read_events(run_dir)
    assert [e.get("step") for e in everything if e["type"] == "train"] == list(range(1, 20)) + [19]

    path.write_bytes(b'{"type": "train", "st')  # nothing but a torn line
    assert rundir.read_events(run_dir) == ([], 0)
    path.write_bytes(b"\x00\xff garbage\n" + json.dumps({"type": "eval", "step": 1}).encode() + b"\n")
    assert [e["type"] for e in rundir.read_events(run_dir)[0]] == ["eval"]


HAND_EDITED = textwrap.dedent("""\
    model: some-model
    method:
      name: lora
      r: sixteen
      dropout: 2
    train:
      batch_size: "4 please"
      learning_rate: fast
      epochs: [1, 2]
      gradient_checkpointing: maybe
    data:
      max_length: -5
    early_stopping:
      patiance: 3
""")


def test_a_hand_edited_config_with_wrong_types_names_every_bad_field(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(HAND_EDITED)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    expected = {"method.r", "method.dropout", "train.batch_size", "train.learning_rate", "train.epochs",
                "train.gradient_checkpointing", "data.max_length", "early_stopping.patiance"}
    assert set(e.value.fields) == expected
    message = str(e.value)
    assert str(path) in message and all(f in message for f in expected) and "Traceback" not in message


def test_a_run_whose_config_was_edited_badly_fails_with_the_sentence(tmp_path, monkeypatch):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="edited"))
    (run_dir / rundir.CONFIG_FILE).write_text(HAND_EDITED)
    monkeypatch.setattr(train.signal, "signal", lambda *a: None)  # train.run installs a SIGTERM handler
    assert train.run(run_dir) == 1
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and "train.batch_size" in status["error"] and "method.r" in status["error"]
    rundir.write_status(run_dir, state="failed")
    make_checkpoint(run_dir, 2)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        runner.resume_run(run_dir)


STARTER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from backend.runs import runner
    from backend.core.config import RunConfig
    from backend.core.errors import UserError
    runner._launch_command = lambda run_dir, cfg, resume: [sys.executable, {script!r}, str(run_dir)]
    while time.time() < {go_at}:
        time.sleep(0.001)
    try:
        print("WON", runner.start_run({ws!r}, RunConfig(name=sys.argv[1])).name, flush=True)
    except UserError as e:
        print("REFUSED", e, flush=True)
""")


def test_two_processes_starting_at_once_one_wins_the_other_is_told_which_run(tmp_path):
    import time

    ws = tmp_path / "ws"
    script = write_fake_trainer(tmp_path)
    go_at = time.time() + 4.0  # both interpreters are up and waiting by then
    code = STARTER.format(repo=str(REPO), script=str(script), go_at=go_at, ws=str(ws))
    procs = [subprocess.Popen([sys.executable, "-c", code, f"racer {i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    won = [o for o in outs if o.startswith("WON")]
    refused = [o for o in outs if o.startswith("REFUSED")]
    assert len(won) == 1 and len(refused) == 2, outs
    winner = won[0].split()[1]
    try:
        assert all(winner in r and "already training" in r for r in refused), outs
        assert [r["id"] for r in rundir.list_runs(ws)] == [winner], "the losers left no run directory"
    finally:
        runner.stop_run(rundir.runs_root(ws) / winner, timeout=20)
