"""`ftstudio estimate CONFIG.yaml [--gpus N] [--gpu-memory GB] --json`: the VRAM estimate, headless."""
from __future__ import annotations

import argparse
from typing import Any

from backend.core.errors import UserError
from backend.runs.run_files import read_run_files


def add_parser(sub) -> None:
    p = sub.add_parser("estimate", help="estimate the GPU memory a run config needs, term by term")
    p.add_argument("config", metavar="CONFIG.yaml", help="a RunConfig YAML, a preset, or a run's config.yaml")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a preset layered under the config (the config's own fields win)")
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="number of cards (with --gpu-memory: hypothetical cards; alone: the first N found)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                   help="memory of a hypothetical card, in GB as cards are sold (GiB); else the GPUs found")
    p.add_argument("--precise", action="store_true",
                   help="also trace one real training step on fake tensors on the CPU (slower; adds 'precise')")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from backend.estimator import estimate

    if args.gpus is not None and args.gpus < 1:
        raise UserError(f"--gpus must be at least 1 (got {args.gpus}).")
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise UserError(f"--gpu-memory must be a positive number of GB (got {args.gpu_memory}).")
    # The estimate reads no data, so a data file that is not found does not stop it.
    cfg = read_run_files(args.config, preset=args.preset, strict_paths=False)[0]
    out = estimate(cfg, gpu_count=args.gpus, gpu_memory_gb=args.gpu_memory).to_json()
    if getattr(args, "precise", False):
        from backend.estimator.precise import precise_estimate
        out["precise"] = precise_estimate(cfg)
    return out
