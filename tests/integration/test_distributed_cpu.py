"""More than one process on the CPU: the real training entry point under torchrun (gloo), and a 2-node
cluster bundle started on loopback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.runs import rundir
from backend.core.config import RunConfig
from backend.training.distributed import torchrun_command, write_bundle

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(model_dir: Path, data: Path, batch: int) -> RunConfig:
    return RunConfig.model_validate({
        "model": str(model_dir), "name": "dist",
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"path": str(data), "validation_split": 0.0, "max_length": 32},
        "train": {"max_steps": 5, "batch_size": batch, "gradient_accumulation": 1, "learning_rate": 0.01,
                  "precision": "fp32", "gradient_checkpointing": False, "warmup_ratio": 0.0,
                  "scheduler": "constant", "seed": 3},
        "early_stopping": {"patience": None}, "report_to": [],
    })


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    # Rows of equal token length, so a per-rank token mean equals the global token mean.
    p = tmp_path_factory.mktemp("ddpdata") / "train.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Question {i}: say yes.", "completion": " ANSWER: yes"}) + "\n"
                         for i in range(10, 42)))
    return p


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in rundir.read_events(run_dir)[0] if e.get("type") == "train"]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_two_processes_train_like_one_with_the_same_effective_batch(tmp_path, tiny_model_dir, data_file):
    one = rundir.create_run(tmp_path / "ws1", _config(tiny_model_dir, data_file, batch=4))
    subprocess.run([sys.executable, "-m", "backend.training.run", str(one)], check=True, env=_env(), timeout=400,
                   capture_output=True)
    two = rundir.create_run(tmp_path / "ws2", _config(tiny_model_dir, data_file, batch=2))
    r = subprocess.run(torchrun_command(1, 2, two, main_port=_free_port(), python=sys.executable),
                       env=_env(), timeout=400, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert rundir.read_status(two)["state"] == "completed"
    # Only rank 0 writes: each step is logged once, and one adapter is saved.
    steps = [s for s, _ in _losses(two)]
    assert steps == sorted(set(steps)) and steps[-1] == 5
    assert (two / "adapter" / "adapter_model.safetensors").exists()
    assert "rank 1" not in (two / "events.jsonl").read_text()
    # Same global batches (seeded shuffle, the sampler splits each global batch across ranks) and
    # equal-length rows: the curves agree up to float reduction order across processes and the
    # averaging of per-rank means; 2% relative is far below the step-to-step change of the loss.
    a, b = dict(_losses(one)), dict(_losses(two))
    assert set(a) == set(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=0.02), (step, a[step], b[step])
    assert b[5] < b[1]


def test_two_node_bundle_on_loopback_completes(tmp_path, tiny_model_dir, data_file):
    bundle = tmp_path / "bundle"
    write_bundle(_config(tiny_model_dir, data_file, batch=2), nodes=2, gpus_per_node=1, out_dir=bundle,
                 port=_free_port(), rendezvous_timeout=120)
    env = dict(_env(), FTSTUDIO_PYTHON=sys.executable)
    nodes = [subprocess.Popen(["bash", str(bundle / "launch.sh"), str(rank), "127.0.0.1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outs = [n.communicate(timeout=400)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    run_dir = bundle / "run"
    assert rundir.read_status(run_dir)["state"] == "completed"
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert [s for s, _ in _losses(run_dir)][-1] == 5


def test_node_that_cannot_reach_the_main_address_gives_up_with_a_sentence(tmp_path, tiny_model_dir, data_file):
    bundle = tmp_path / "bundle"
    write_bundle(_config(tiny_model_dir, data_file, batch=2), nodes=2, gpus_per_node=1, out_dir=bundle,
                 port=_free_port(), rendezvous_timeout=5)
    started = time.monotonic()
    r = subprocess.run(["bash", str(bundle / "launch.sh"), "1", "127.0.0.1"], capture_output=True, text=True,
                       env=dict(_env(), FTSTUDIO_PYTHON=sys.executable), timeout=180)
    assert r.returncode != 0
    assert "could not reach the main node at 127.0.0.1" in r.stderr
    assert time.monotonic() - started < 150
