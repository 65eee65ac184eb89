"""A packed run trains end to end through SFTTrainer, and its dataset lands in the workspace's Arrow cache."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend import cli
from backend.core.config import save_config
from backend.runs import rundir
from tests.integration.test_train_runner import tiny_config

pytestmark = pytest.mark.timeout(400)


def test_a_packed_run_completes_and_caches_its_encoded_dataset(tmp_path, tiny_model_dir, capsys):
    cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=True, max_steps=3, eval_steps=3)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": True, "max_length": 64})})
    save_config(cfg, tmp_path / "packed.yaml")
    ws = tmp_path / "ws"
    code = cli.main(["train", str(tmp_path / "packed.yaml"), "--workspace", str(ws), "--no-progress"])
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    log = (run_dir / "train.log").read_text()
    assert code == 0 and rundir.read_status(run_dir)["state"] == "completed", log[-2000:]
    assert "Packing:" in log
    assert list((ws / "cache" / "datasets").glob("*/info.json")) and list((ws / "cache" / "datasets").glob("*/data.arrow"))
