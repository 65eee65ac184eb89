"""`ftstudio eval RUN_DIR [--data FILE] [--samples N] --json`: base vs adapter report."""
from __future__ import annotations

import argparse
import sys
from backend.inference.evaluate import evaluate_run


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="compare a run's adapter with its base model")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="evaluate on this file instead of the run's validation rows")
    p.add_argument("--samples", type=int, default=5, help="prompts answered side by side")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    return evaluate_run(args.run_dir, data_path=args.data, samples=max(0, args.samples),
                        max_new_tokens=args.max_new_tokens,
                        progress=lambda s: print(f"eval: {s}", file=sys.stderr, flush=True))
