import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backend.core.config import ConfigError, RunConfig, load_config, validate_config
from backend.training.distributed import accelerate_config, deepspeed_config, distributed_problems, write_bundle
from backend.core.errors import UserError


def _cfg(**dist):
    return RunConfig.model_validate({"distributed": dist})


def test_zero3_generates_deepspeed_stage_3_through_accelerate():
    cfg = _cfg(gpus=8, nodes=2, strategy="zero3")
    acc = accelerate_config(cfg)
    assert acc["distributed_type"] == "DEEPSPEED" and acc["num_processes"] == 16 and acc["num_machines"] == 2
    assert deepspeed_config(cfg)["zero_optimization"]["stage"] == 3


def test_fsdp_and_ddp_map_to_accelerate_types():
    assert accelerate_config(_cfg(gpus=4, strategy="fsdp"))["distributed_type"] == "FSDP"
    assert accelerate_config(_cfg(gpus=4, strategy="ddp"))["distributed_type"] == "MULTI_GPU"


def test_impossible_layouts_are_sentences():
    assert any("at least 2" in p for p in distributed_problems(_cfg(gpus=1, strategy="zero3")))
    with pytest.raises(ConfigError, match="at most 16"):  # the per-node limit is the config's own bound
        validate_config({"distributed": {"gpus": 64}})
    with pytest.raises(UserError, match="more than any single machine"):
        write_bundle(RunConfig(), 1, 64, Path("unused-bundle"))


def test_bundle_writes_config_launchers_and_sbatch(tmp_path):
    out = write_bundle(RunConfig.model_validate({"distributed": {"strategy": "zero2"}}), 2, 8, tmp_path / "b")
    files = set(out["files"])
    assert {"config.yaml", "accelerate.yaml", "deepspeed.json", "launch.sh", "slurm.sbatch"} <= files
    cfg = load_config(tmp_path / "b" / "config.yaml")
    assert (cfg.distributed.nodes, cfg.distributed.gpus) == (2, 8)
    acc = yaml.safe_load((tmp_path / "b" / "accelerate.yaml").read_text())
    assert acc["num_processes"] == 16
    assert json.loads((tmp_path / "b" / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2
    assert subprocess.run(["bash", "-n", str(tmp_path / "b" / "launch.sh")]).returncode == 0
    assert "#SBATCH --nodes=2" in (tmp_path / "b" / "slurm.sbatch").read_text()


def test_bundle_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="already holds other files"):
        write_bundle(RunConfig(), 1, 2, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_cli_launch_bundle_bad_strategy_exits_2(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("distributed: {strategy: fsdp}\n")
    r = subprocess.run([sys.executable, "-m", "backend.cli", "launch-bundle", str(p), "--nodes", "1",
                        "--gpus-per-node", "1", "--out", str(tmp_path / "o"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "at least 2" in json.loads(r.stdout)["error"]
