"""`ftstudio launch-bundle CONFIG.yaml --nodes N --gpus-per-node G --out DIR`."""
from __future__ import annotations

import argparse
from pathlib import Path
from backend.core.config import load_config
from backend.training.distributed import write_bundle


def add_parser(sub) -> None:
    p = sub.add_parser("launch-bundle", help="write a folder that starts this training on a cluster")
    p.add_argument("config")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--port", type=int, default=29500)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    return write_bundle(load_config(args.config), args.nodes, args.gpus_per_node, Path(args.out), port=args.port)
