"""`ftstudio eval RUN_DIR [--metrics M,N] [--extract REGEX] [--data FILE] [--checkpoints all|STEPS]
[--redteam] [--lm-eval TASKS] --json`: base vs adapter report."""
from __future__ import annotations

import argparse
import sys

from backend.inference.evaluate import evaluate_run
from backend.inference.metrics import METRICS


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="compare a run's adapter with its base model")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="evaluate on this file instead of the run's validation rows")
    p.add_argument("--samples", type=int, default=5, help="prompts answered side by side")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--metrics", default=None,
                   help=f"task metrics on greedy answers, comma-separated: {', '.join(METRICS)}")
    p.add_argument("--extract", default=None,
                   help="regular expression whose first group is the answer (exact match, token F1, accuracy)")
    p.add_argument("--checkpoints", default=None, help="also score these checkpoints: 'all' or steps like 30,60")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    p.add_argument("--batch-size", type=int, default=8, help="prompts answered at once")
    p.add_argument("--redteam", action="store_true",
                   help="answer the bundled red-team set (plus WORKSPACE/redteam.jsonl) with base and adapter")
    p.add_argument("--redteam-file", default=None, help="a further red-team prompt file (JSONL with prompt and rule)")
    p.add_argument("--lm-eval", default=None, dest="lm_eval",
                   help="lm-evaluation-harness tasks, comma-separated: installed names or local YAML files")
    p.add_argument("--lm-eval-limit", type=int, default=None, help="at most N documents per lm-eval task")
    p.add_argument("--merged", default=None, help="a merged model folder lm-eval also runs on")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    return evaluate_run(args.run_dir, data_path=args.data, samples=max(0, args.samples),
                        max_new_tokens=args.max_new_tokens, metrics=args.metrics, extract=args.extract,
                        checkpoints=args.checkpoints, batch_size=max(1, args.batch_size), limit=args.limit,
                        redteam_set=args.redteam, redteam_file=args.redteam_file, lm_eval_tasks=args.lm_eval,
                        lm_eval_limit=args.lm_eval_limit, merged=args.merged,
                        progress=lambda s: print(f"eval: {s}", file=sys.stderr, flush=True))
