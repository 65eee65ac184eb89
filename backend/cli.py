"""`ftstudio`: the headless command line (its JSON outputs are described in docs/ARCHITECTURE.md).

Each subcommand lives in `backend/commands/<name>.py` with `add_parser(subparsers)`;
the parser it adds sets `func(args) -> dict | int`. With `--json` a dict result is
printed as exactly one JSON object. Exit codes: 0 success, 2 bad input, 1 anything else.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback

from backend.core.config import ConfigError
from backend.core.errors import UserError
from backend.core.models import ModelError

COMMANDS = ("ui", "data", "estimate", "train", "eval", "merge", "chat", "score", "export", "launch_bundle", "serve",
            "push", "sweep")
BAD_INPUT = (UserError, ConfigError, ModelError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftstudio", description="Fine-Tune Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"backend.commands.{name}").add_parser(sub)
    return parser


def _emit_error(args: argparse.Namespace, message: str, code: int) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": message}))
    print(f"ftstudio: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except BAD_INPUT as e:
        return _emit_error(args, str(e), 2)
    except KeyboardInterrupt:
        return _emit_error(args, "interrupted", 1)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        traceback.print_exc(file=sys.stderr)
        return _emit_error(args, f"{type(e).__name__}: {e}", 1)
    if isinstance(result, int):
        return result
    if getattr(args, "json", False):
        print(json.dumps(result, default=str))
    elif result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
