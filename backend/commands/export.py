"""`ftstudio export`: a run, adapter or model folder as a checked GGUF file plus an Ollama Modelfile."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from backend.core.errors import UserError
from backend.export.gguf import QUANTS, export_gguf
from backend.export.gguf_lora import export_lora_gguf
from backend.export.merge import progress_printer


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run/adapter/model as GGUF (checked by llama.cpp) with an Ollama "
                                      "Modelfile",
                       description="Merges an adapter into its base when needed, writes the GGUF (f16, then "
                                   "llama.cpp's quantizer for the others), loads each file in llama.cpp and "
                                   "compares tokens, top-k next tokens, greedy continuations and perplexity with "
                                   "the merged model. Exit 1 when a check fails (that file is not written).")
    p.add_argument("source", metavar="RUN_OR_MODEL_DIR")
    p.add_argument("--format", default="gguf",
                   help="gguf (the merged model) or lora-gguf (the adapter alone, llama.cpp's --lora format)")
    p.add_argument("--quant", default="f16",
                   help=f"one of {', '.join(QUANTS)}, or several separated by commas (one merge; each file is "
                        "written as OUT's name plus -QUANT)")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--base", default=None,
                   help="the untrained base of a plain model folder, to reject an export equal to it")
    p.add_argument("--keep-base", action="store_true",
                   help="lora-gguf: keep the f16 base GGUF the adapter was checked with, as OUT's name plus -base-f16")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _progress(machine: bool):
    return progress_printer(machine)


def run(args: argparse.Namespace) -> dict[str, Any] | int:
    fmt = args.format.lower()
    if fmt == "lora-gguf":
        result = export_lora_gguf(args.source, args.out, progress=_progress(args.progress_json),
                                  keep_base=args.keep_base)
    elif fmt == "gguf":
        result = export_gguf(args.source, args.out, quant=args.quant, progress=_progress(args.progress_json),
                             base=args.base)
    else:
        raise UserError(f"Unknown export format '{args.format}'. Choose gguf (the merged model) or lora-gguf "
                        "(the adapter alone).")
    if result["checked"]:
        return result
    # A failed check is not bad input (exit 2) but a failed export: the JSON still goes out.
    print(json.dumps(result, default=str) if args.json else result["error"])
    print(f"ftstudio: {result['error']}", file=sys.stderr)
    return 1
