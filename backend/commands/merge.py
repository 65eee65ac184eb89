"""`ftstudio merge`: fold an adapter into its base, or combine several adapters."""
from __future__ import annotations

import argparse
from typing import Any

from backend.core.errors import UserError
from backend.export import merge
from backend.export.merge import progress_printer


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge an adapter into its base model, or combine adapters",
                       description="One source: merge it into its base (a plain transformers model). "
                                   "Several sources: combine them with --method and --weights.")
    p.add_argument("sources", nargs="+", metavar="ADAPTER_OR_RUN_DIR")
    p.add_argument("--out", required=True, help="folder to write (new or empty)")
    p.add_argument("--method", choices=("linear", "ties", "dare_linear", "dare_ties"), default=None,
                   help="how several adapters are combined (default linear)")
    p.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per adapter (default equal)")
    p.add_argument("--density", type=float, default=0.5, help="TIES/DARE: share of each update that is kept")
    p.add_argument("--merge-into-base", action="store_true",
                   help="when combining: also merge the combined adapter into the base")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _progress(machine: bool):
    return progress_printer(machine)


def run(args: argparse.Namespace) -> dict[str, Any]:
    say = _progress(args.progress_json)
    if len(args.sources) == 1:
        if args.method or args.weights:
            raise UserError("--method and --weights combine several adapters; give two or more sources.")
        return merge.merge_adapter(args.sources[0], args.out, progress=say)
    weights = args.weights or [1.0 / len(args.sources)] * len(args.sources)
    return merge.combine_adapters(args.sources, weights, method=args.method or "linear", density=args.density,
                                  out_dir=args.out, merge=args.merge_into_base, progress=say)
