"""`ftstudio chat`: one reply from a model (and adapter), loaded in this process."""
from __future__ import annotations

import argparse
from typing import Any
from backend.inference.chat import build_messages
from backend.inference.chat_worker import ChatEngine


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="ask a model (and adapter) one question")
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="bundled name, local directory or hub id (default: the adapter's base)")
    p.add_argument("--adapter", default=None, help="adapter folder or run directory")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (reproducible)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-adapter", action="store_true", help="answer with the adapter disabled (the base)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any] | int:
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "top_k": args.top_k, "repetition_penalty": args.repetition_penalty, "seed": args.seed}
    engine = ChatEngine()
    info = engine.load(args.model, args.adapter)
    parts: list[str] = []

    def on_text(t: str) -> None:
        parts.append(t)
        if not args.json:
            print(t, end="", flush=True)

    engine.generate(build_messages([], args.prompt, args.system), settings,
                    use_adapter=not args.no_adapter, on_text=on_text)
    reply = "".join(parts)
    if not args.json:
        print()
        return 0
    return {"reply": reply, "model": info["model"], "adapter": info["adapter"]}
