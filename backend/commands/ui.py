"""`ftstudio ui`: the same as `python launch.py`."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--workspace", default="workspace", help="where runs, uploads and caches go")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="a folder outside the workspace the studio may read (data, models); repeat for more")
    p.add_argument("--no-browser", action="store_true", help="accepted for compatibility; no browser is opened")


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="open the studio in the browser")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from studio.launcher import launch_from_args  # the UI only loads when asked for

    launch_from_args(args)
    return 0
