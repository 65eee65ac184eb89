"""More than one GPU, more than one machine: launcher configs generated from the RunConfig.

The field's launchers do the process-group work: `accelerate launch` (DDP, DeepSpeed
ZeRO, FSDP) where GPUs are, `torchrun` on CPU where accelerate's GPU paths do not apply.
This module only writes their config files and command lines, so what the Method tab
estimates for N nodes x G GPUs with a strategy is exactly what the bundle runs.
"""
from __future__ import annotations

import json
import shlex
import stat
from pathlib import Path
from typing import Any

import yaml

from backend.core import catalog
from backend.core.config import MAX_GPUS_PER_NODE, RunConfig, save_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_text

DEFAULT_PORT = 29500
PRECISION_TO_ACCELERATE = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


def world_size(cfg: RunConfig) -> int:
    return cfg.distributed.gpus * cfg.distributed.nodes


def distributed_problems(cfg: RunConfig) -> list[str]:
    """Sentences for layouts the strategy cannot run; empty when fine."""
    d = cfg.distributed
    out: list[str] = []
    if d.gpus > MAX_GPUS_PER_NODE:
        out.append(f"{d.gpus} GPUs per node is more than any single machine has (at most {MAX_GPUS_PER_NODE}); "
                   "use more nodes instead.")
    if d.strategy in ("zero1", "zero2", "zero3", "fsdp") and world_size(cfg) < 2:
        out.append(f"The {d.strategy} strategy shards memory across GPUs and needs at least 2 in all; "
                   "with one GPU choose ddp (plain training).")
    if catalog.METHODS[cfg.method.name].quantized and d.strategy in ("zero3", "fsdp"):
        out.append(f"QLoRA with {d.strategy} needs the 4-bit weights stored in a shardable dtype, which the "
                   "studio does not set up yet; use ddp or zero2 with QLoRA.")
    return out


def deepspeed_config(cfg: RunConfig) -> dict[str, Any]:
    stage = {"zero1": 1, "zero2": 2, "zero3": 3}[cfg.distributed.strategy]
    # "auto" lets the HF Trainer fill batch sizes and accumulation from its own arguments,
    # so the DeepSpeed file cannot disagree with the RunConfig.
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def accelerate_config(cfg: RunConfig, machine_rank: int = 0, main_ip: str = "127.0.0.1",
                      main_port: int = DEFAULT_PORT) -> dict[str, Any]:
    d = cfg.distributed
    base: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": d.nodes,
        "num_processes": world_size(cfg),
        "machine_rank": machine_rank,
        "main_process_ip": main_ip,
        "main_process_port": main_port,
        "mixed_precision": PRECISION_TO_ACCELERATE[cfg.train.precision],
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if d.strategy.startswith("zero"):
        base["distributed_type"] = "DEEPSPEED"
        base["deepspeed_config"] = {"deepspeed_config_file": "deepspeed.json",
                                    "deepspeed_multinode_launcher": "standard"}
    elif d.strategy == "fsdp":
        base["distributed_type"] = "FSDP"
        base["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
            "fsdp_activation_checkpointing": cfg.train.gradient_checkpointing,
        }
    else:
        base["distributed_type"] = "MULTI_GPU" if world_size(cfg) > 1 else "NO"
    return base


def accelerate_command(config_file: Path, run_dir: Path, python: str = "python") -> list[str]:
    return [python, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", "backend.training.run", str(run_dir)]


def torchrun_command(nnodes: int, nproc: int, run_dir: Path, node_rank: int | str = 0,
                     main_addr: str = "127.0.0.1", main_port: int | str = DEFAULT_PORT,
                     python: str = "python") -> list[str]:
    return [python, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
            f"--node_rank={node_rank}", f"--master_addr={main_addr}", f"--master_port={main_port}",
            "-m", "backend.training.run", str(run_dir)]


def write_launcher_configs(cfg: RunConfig, out_dir: Path) -> list[Path]:
    """accelerate.yaml (+ deepspeed.json) beside the run's config; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    acc = out_dir / "accelerate.yaml"
    atomic_write_text(acc, yaml.safe_dump(accelerate_config(cfg), sort_keys=False))
    written.append(acc)
    if cfg.distributed.strategy.startswith("zero"):
        ds = out_dir / "deepspeed.json"
        atomic_write_text(ds, json.dumps(deepspeed_config(cfg), indent=2))
        written.append(ds)
    return written


LAUNCH_SH = """#!/usr/bin/env bash
# Start this node's share of the training.
#   ./launch.sh NODE_RANK MAIN_ADDR [MAIN_PORT]
# Run it on every node (rank 0 on the main node) with the same MAIN_ADDR.
# Generated by Fine-Tune Studio from config.yaml: {nodes} node(s) x {gpus} GPU(s), strategy {strategy}.
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
NODE_RANK="${{1:?usage: launch.sh NODE_RANK MAIN_ADDR [MAIN_PORT]}}"
MAIN_ADDR="${{2:?usage: launch.sh NODE_RANK MAIN_ADDR [MAIN_PORT]}}"
MAIN_PORT="${{3:-{port}}}"
PYTHON="${{FTSTUDIO_PYTHON:-python}}"
RUN_DIR="${{FTSTUDIO_RUN_DIR:-$HERE/run}}"
# A node that cannot reach the main address gives up after this many seconds instead of hanging.
export FTSTUDIO_RENDEZVOUS_TIMEOUT="${{FTSTUDIO_RENDEZVOUS_TIMEOUT:-{timeout}}}"
mkdir -p "$RUN_DIR"
# Nodes sharing a filesystem start at once: copy under a private name, then rename (atomic), so two
# nodes never race on creating the same file.
if [ ! -f "$RUN_DIR/config.yaml" ]; then
  cp "$HERE/config.yaml" "$RUN_DIR/.config.yaml.$NODE_RANK.$$"
  mv -f "$RUN_DIR/.config.yaml.$NODE_RANK.$$" "$RUN_DIR/config.yaml"
fi
set +e
if "$PYTHON" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  "$PYTHON" -m accelerate.commands.launch --config_file "$HERE/accelerate.yaml" \\
    --machine_rank "$NODE_RANK" --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" \\
    -m backend.training.run "$RUN_DIR"
else
  # No GPU here: torchrun with the gloo backend, one process per requested device.
  "$PYTHON" -m torch.distributed.run \\
    --nnodes={nodes} --nproc_per_node={gpus} --node_rank="$NODE_RANK" \\
    --master_addr="$MAIN_ADDR" --master_port="$MAIN_PORT" \\
    --rdzv_conf=timeout="$FTSTUDIO_RENDEZVOUS_TIMEOUT" \\
    -m backend.training.run "$RUN_DIR"
fi
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "launch.sh: node $NODE_RANK stopped with exit code $rc. If the log above says the client socket timed out," \\
       "this node could not reach the main node at $MAIN_ADDR:$MAIN_PORT within ${{FTSTUDIO_RENDEZVOUS_TIMEOUT}}s:" \\
       "start node 0 first, and check the address, the port and the firewall. The run's state is in $RUN_DIR/status.json." >&2
fi
exit "$rc"
"""

SBATCH = """#!/usr/bin/env bash
#SBATCH --job-name={name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --exclusive
# Generated by Fine-Tune Studio. Submit with: sbatch slurm.sbatch
set -euo pipefail
HERE="${{SLURM_SUBMIT_DIR:-$(pwd)}}"
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun bash -c "\\"$HERE/launch.sh\\" \\$SLURM_NODEID $MAIN_ADDR {port}"
"""


def write_bundle(cfg: RunConfig, nodes: int, gpus_per_node: int, out_dir: Path,
                 port: int = DEFAULT_PORT, rendezvous_timeout: int = 120) -> dict[str, Any]:
    """A self-contained folder that starts this training on a cluster."""
    if nodes < 1 or gpus_per_node < 1:
        raise UserError("A bundle needs at least 1 node and 1 GPU per node.")
    if gpus_per_node > MAX_GPUS_PER_NODE:
        raise UserError(f"{gpus_per_node} GPUs per node is more than any single machine has (at most "
                        f"{MAX_GPUS_PER_NODE}); use more nodes instead.")
    cfg = cfg.model_copy(deep=True)
    cfg.distributed.nodes = nodes
    cfg.distributed.gpus = gpus_per_node
    problems = distributed_problems(cfg)
    if problems:
        raise UserError(" ".join(problems))
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "launch.sh").exists():
        raise UserError(f"{out_dir} already holds other files; choose an empty or new folder for the bundle.")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    files = [out_dir / "config.yaml", *write_launcher_configs(cfg, out_dir)]
    fmt = dict(nodes=nodes, gpus=gpus_per_node, strategy=cfg.distributed.strategy, port=port,
               timeout=rendezvous_timeout, name=shlex.quote(cfg.name or "ftstudio"))
    for name, template in (("launch.sh", LAUNCH_SH), ("slurm.sbatch", SBATCH)):
        path = out_dir / name
        atomic_write_text(path, template.format(**fmt))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        files.append(path)
    return {"out": str(out_dir), "files": [f.name for f in files], "world_size": world_size(cfg),
            "command": f"{out_dir}/launch.sh NODE_RANK MAIN_ADDR"}
