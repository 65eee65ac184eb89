"""`ftstudio train CONFIG.yaml [MORE.yaml ...]`: the same training the Train tab starts, from a shell.

A CONFIG may be any file the studio ships or writes: a preset, a run's config.yaml, the Method
tab's exported YAML, or a queue.json (its waiting entries). `--preset NAME` layers a preset under
each config; `--print-config` prints the filled configs and starts nothing. Configs run one after another through the runner (so the studio sees them and one device trains
one run at a time). Each run directory is printed on stdout as the run ends; progress goes to stderr.
Exit 0 when every run completed, 1 otherwise, 2 when a config is bad (nothing is started then).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from backend.core.config import config_to_yaml
from backend.core.errors import UserError
from backend.runs import events as run_events, rundir, runner
from backend.runs.run_files import read_run_files
from backend.training.checks import start_problems


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one or more run configs, one after another")
    p.add_argument("configs", nargs="*", metavar="CONFIG.yaml", help="run configs, trained in this order")
    p.add_argument("--more", default=None, metavar="RUN_DIR",
                   help="train a completed run further: a new run that starts from its adapter")
    p.add_argument("--steps", type=int, default=None, help="with --more: how many steps more (required)")
    p.add_argument("--workspace", default=os.environ.get("FTSTUDIO_WORKSPACE", "workspace"),
                   help="where the run directories go (default: ./workspace)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a preset layered under each config (the config's own fields win)")
    p.add_argument("--print-config", action="store_true",
                   help="print each filled config as YAML (paths resolved) and start nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object with every run's result at the end")
    p.set_defaults(func=run)


def _progress(run_dir: Path, show: bool, poll: float = 0.5) -> dict[str, Any]:
    """Follow a run's events until it ends, drawing a bar on stderr; Ctrl-C stops the run gracefully."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=run_dir.name, unit="step", file=sys.stderr, disable=not show, dynamic_ncols=True)
    offset, postfix = 0, {}
    try:
        while True:
            status = rundir.read_status(run_dir)
            events, offset = rundir.read_events(run_dir, offset)
            for ev in events:
                if ev.get("total_steps") and bar.total != ev["total_steps"]:
                    bar.total = ev["total_steps"]
                if ev.get("type") == run_events.TRAIN:
                    bar.update(max(0, int(ev["step"]) - bar.n))
                    if ev.get("loss") is not None:
                        postfix["loss"] = f"{ev['loss']:.4f}"
                elif ev.get("type") == run_events.EVAL and ev.get("val_loss") is not None:
                    postfix["val"] = f"{ev['val_loss']:.4f}"
            preparing = status.get("preparing")
            if preparing and not bar.n:  # tokenizing the data, before the first step
                postfix["data"] = f"{preparing.get('text', '')} ({float(preparing.get('fraction') or 0):.0%})"
            else:
                postfix.pop("data", None)
            if postfix:
                bar.set_postfix(postfix, refresh=False)
            bar.refresh()
            if status["state"] not in rundir.ACTIVE_STATES:
                return status
            time.sleep(poll)
    except KeyboardInterrupt:
        bar.write("Stopping the run (it saves a checkpoint first)...")
        status = runner.stop_run(run_dir, timeout=60)
        raise _Interrupted(status) from None
    finally:
        bar.close()


class _Interrupted(Exception):
    def __init__(self, status: dict[str, Any]):
        self.status = status


def _sigterm_as_interrupt(signum, frame) -> None:
    # The trainer lives in its own process group, so a `timeout` or `kill` aimed at this command
    # would leave it running: turn SIGTERM into the same graceful stop as Ctrl-C.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    workspace = Path(args.workspace)
    if not args.configs and not args.more:
        raise UserError("Give one or more CONFIG.yaml files, or --more RUN_DIR --steps N.")
    # A bad config stops everything before anything starts: exit 2.
    configs = [(path, cfg) for path in args.configs
               for cfg in read_run_files(path, preset=args.preset, workspace=workspace)]
    if args.more:
        if args.steps is None:
            raise UserError("--more needs --steps N: how many steps to train further.")
        configs.append((args.more, runner.train_more_config(Path(args.more), args.steps)))
    if args.print_config:
        print("\n---\n".join(config_to_yaml(cfg) for _, cfg in configs), end="")
        return 0
    for path, cfg in configs:
        # The checks that need no model (data files, this machine's GPUs) for every config before the
        # first run starts: a folder or /dev/zero as data is exit 2 in a second, not a failed run later.
        try:
            runner.preflight(cfg)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    results: list[dict[str, Any]] = []
    interrupted = False
    for path, cfg in configs:
        if interrupted:
            results.append({"config": path, "state": "not_started", "error": "the queue was interrupted"})
            continue
        try:
            problem = start_problems(cfg)  # data, mapping, template, objective: before any model load
            if problem:
                raise UserError(problem)
            run_dir = runner.start_run(workspace, cfg)
        except UserError as e:
            print(f"ftstudio: {path}: {e}", file=sys.stderr)
            results.append({"config": path, "state": "not_started", "error": str(e)})
            continue
        try:
            status = _progress(run_dir, show=not args.no_progress)
        except _Interrupted as stop:
            status, interrupted = stop.status, True
        state = status.get("state")
        if state != "completed" and status.get("error"):
            print(f"ftstudio: {run_dir.name} {state}: {status['error']}", file=sys.stderr)
        if not args.json:
            print(run_dir, flush=True)
        results.append({"config": path, "run_dir": str(run_dir), "state": state,
                        "best_val_loss": status.get("best_val_loss"), "error": status.get("error")})
    ok = all(r["state"] == "completed" for r in results)
    if args.json:
        print(json.dumps({"runs": results, "all_completed": ok}, default=str))
    return 0 if ok else 1
