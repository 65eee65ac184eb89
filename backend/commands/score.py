"""`ftstudio score`: what a reward model thinks of answers, or how often it agrees with a preference file."""
from __future__ import annotations

import argparse
from typing import Any
from backend.core.errors import UserError
from backend.data.records import load_rows
from backend.inference.reward_score import pair_accuracy, score_answers
from backend.objectives.online_rl import load_reward_model


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score answers with a reward model, or measure its accuracy on preference pairs")
    p.add_argument("reward_model", metavar="REWARD_MODEL",
                   help="a finished reward-model run directory, or a directory holding a reward model")
    p.add_argument("--prompt", default=None, help="the user message the answers reply to")
    p.add_argument("--answer", action="append", default=[], help="an answer to score (repeat for more)")
    p.add_argument("--data", default=None, help="a preference file (prompt/chosen/rejected): report pair accuracy")
    p.add_argument("--limit", type=int, default=200, help="score at most this many pairs of --data")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any] | int:
    if (args.data is None) == (args.prompt is None):
        raise UserError("Give either --prompt with one or more --answer, or --data with a preference file.")
    import torch

    # Scores are compared to each other: on a CPU use fp32, where bf16 would round close scores together.
    model, tokenizer = load_reward_model(args.reward_model, dtype=None if torch.cuda.is_available() else torch.float32)
    if args.data is not None:
        loaded = load_rows(args.data)
        if loaded.format != "preference":
            raise UserError(f"{args.data} holds '{loaded.format}' rows; scoring accuracy needs prompt/chosen/rejected "
                            "pairs.")
        result = pair_accuracy(model, tokenizer, list(loaded.rows)[:args.limit], args.system)
        if not args.json:
            print(f"{result['pairs']} pairs: the chosen answer scores higher in {result['accuracy']:.1%} "
                  f"(mean margin {result['mean_margin']:+.3f}).")
            return 0
        return result
    scores = score_answers(model, tokenizer, args.prompt, args.answer, args.system)
    if not args.json:
        for score, answer in sorted(zip(scores, args.answer), reverse=True):
            print(f"{score:+.4f}  {answer}")
        return 0
    return {"scores": [{"answer": a, "score": s} for a, s in zip(args.answer, scores)]}
