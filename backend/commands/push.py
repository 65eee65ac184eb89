"""`ftstudio push RUN --repo owner/name [--what adapter|merged|gguf]`: upload to the model hub with a model card."""
from __future__ import annotations

import argparse
from typing import Any

from backend.export.merge import progress_printer
from backend.export.push import WHAT, push


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="upload a run's adapter, merged model or GGUF to the model hub",
                       description="Writes a fresh model card (README.md) and uploads with huggingface_hub. "
                                   "Needs a write token (HF_TOKEN or `hf auth login`) and a reachable hub.")
    p.add_argument("run", metavar="RUN", help="a run directory (or an adapter/merged folder, or a .gguf file)")
    p.add_argument("--repo", required=True, help="hub repository, owner/name (created when missing)")
    p.add_argument("--what", choices=WHAT, default="adapter", help="what to upload (default adapter)")
    p.add_argument("--file", default=None, help="the merged folder or .gguf file, when the run has several")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return push(args.run, args.repo, what=args.what, path=args.file, private=args.private,
                progress=progress_printer(args.progress_json))
