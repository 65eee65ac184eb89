"""`ftstudio serve RUN_OR_MODEL [--adapter PATH] [--port P] [--host H] [--api-key KEY]`: an OpenAI-compatible API."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from backend.inference.chat import split_choice
from backend.inference.serve import API_KEY_ENV, DEFAULT_PORT, api_key_from, check_bind, check_port_free, serve


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="answer OpenAI-style chat requests with a model (and adapter)",
                       description="Serves /v1/chat/completions (streaming and not) and /v1/models until Ctrl+C. "
                                   "Loopback only unless an API key is set.")
    p.add_argument("model", metavar="RUN_OR_MODEL",
                   help="a run directory, an adapter or merged-model folder, a bundled name or a hub id")
    p.add_argument("--adapter", default=None, help="adapter folder or run directory to attach to MODEL")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--api-key", default=None,
                   help=f"key every request must send as 'Authorization: Bearer KEY' (or set {API_KEY_ENV}); "
                        "required for any address other than loopback")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (url, model, examples) once the server is up")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, adapter = split_choice(args.model)
    if args.adapter:
        model, adapter = model or args.model, args.adapter

    def ready(info: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(info), flush=True)
            return
        print(f"Serving {info['model']} at {info['url']}/v1 (Ctrl+C stops).", flush=True)
        print(f"\n{info['examples']['curl']}\n\n{info['examples']['python']}\n", flush=True)

    check_bind(args.host, api_key_from(args.api_key))  # sentences before a model is loaded
    check_port_free(args.host, args.port)
    print("Loading the model…", file=sys.stderr, flush=True)
    serve(model, adapter, host=args.host, port=args.port, api_key=args.api_key, on_ready=ready)
    return 0
