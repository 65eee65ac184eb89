"""`ftstudio export`: a run, adapter or model folder as a checked GGUF file plus an Ollama Modelfile."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from backend.core.errors import UserError
from backend.export.gguf import export_gguf
from backend.export.merge import progress_printer


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run/adapter/model as GGUF (checked) with an Ollama Modelfile",
                       description="Merges an adapter into its base when needed, writes the GGUF, loads it back "
                                   "with transformers and compares logits with the source. Exit 1 when the "
                                   "check fails (nothing is written then).")
    p.add_argument("source", metavar="RUN_OR_MODEL_DIR")
    p.add_argument("--format", default="gguf", help="export format (gguf)")
    p.add_argument("--quant", default="f16", help="f16 (default) or q8_0")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--base", default=None,
                   help="the untrained base of a plain model folder, to reject an export equal to it")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _progress(machine: bool):
    return progress_printer(machine)


def run(args: argparse.Namespace) -> dict[str, Any] | int:
    if args.format.lower() != "gguf":
        raise UserError(f"Unknown export format '{args.format}'. The only format is gguf.")

    result = export_gguf(args.source, args.out, quant=args.quant, progress=_progress(args.progress_json),
                         base=args.base)
    if result["checked"]:
        return result
    # A failed check is not bad input (exit 2) but a failed export: the JSON still goes out.
    print(json.dumps(result, default=str) if args.json else result["error"])
    print(f"ftstudio: {result['error']}", file=sys.stderr)
    return 1
