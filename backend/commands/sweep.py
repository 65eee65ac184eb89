"""`ftstudio sweep CONFIG.yaml --set train.learning_rate=1e-4,3e-4 --set method.r=8,16 [--prune median]`.

Every combination of the values (1-3 fields) is one run of CONFIG with those values set. The runs go
through the workspace's queue (`WORKSPACE/queue.json`), so a studio open on the same workspace shows them
in its queue and its Train tab's sweep table; this command looks at the queue until the sweep's runs
have ended (entries queued before them train first), then prints the comparison table with the winner
marked. `--prune median` stops a run whose best validation loss is worse than the median of the other
runs' at the same step. `--no-wait` only queues; `--show SWEEP_ID` prints the table of an earlier sweep.
Exit 0 when every run completed (or was pruned), 1 otherwise, 2 on a bad config, field or value.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from backend.core.config import config_to_yaml
from backend.core.errors import UserError
from backend.runs import queue as run_queue
from backend.runs import runner
from backend.runs.run_files import read_run_files
from backend.runs.sweep import PRUNE_RULES, comparison, parse_set, plan_sweep
from backend.runs.sweep_queue import cancel_sweep, queue_sweep, sweep_done, sweep_entries
from backend.training.checks import start_problems


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="train a grid of runs (1-3 fields) through the queue and compare them")
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="the base run config")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=V1,V2",
                   help="a swept field and its values, e.g. train.learning_rate=1e-4,3e-4 (1 to 3 times)")
    p.add_argument("--prune", choices=PRUNE_RULES, default=None,
                   help="stop a clearly losing run: 'median' stops a run whose best validation loss is worse "
                        "than the median of the other runs' at the same step")
    p.add_argument("--workspace", default=os.environ.get("FTSTUDIO_WORKSPACE", "workspace"),
                   help="where the queue and the run directories are (default: ./workspace)")
    p.add_argument("--preset", default=None, metavar="NAME", help="a preset layered under the config")
    p.add_argument("--print-config", action="store_true", help="print each run's config as YAML and queue nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="queue the runs and return (a studio on the workspace trains them)")
    p.add_argument("--show", default=None, metavar="SWEEP_ID", help="print the table of an earlier sweep")
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object: the sweep and its table")
    p.set_defaults(func=run)


def _fmt_seconds(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "–"
    m, sec = divmod(int(s), 60)
    return f"{m}:{sec:02d}"


def _fmt_mem(n: Any) -> str:
    return f"{n / 2**30:.2f} GB" if isinstance(n, (int, float)) else "–"


def table_text(table: dict[str, Any]) -> str:
    """The comparison as aligned text columns, the winner marked with a star."""
    head = ["", "run", "state", "best val loss", "eval loss", "metric", "time", "peak GPU memory", "run id"]
    lines = [head]
    for r in table["rows"]:
        best = (f"{r['best_val_loss']:.4f} @ {r['best_step']}" if isinstance(r.get("best_val_loss"), float)
                else "–")
        metric = f"{r['metric']} {r['metric_value']:.3g}" if r.get("metric") else "–"
        lines.append(["★" if r["winner"] else "", r["name"], str(r.get("state")), best,
                      f"{r['eval_loss']:.4f}" if isinstance(r.get("eval_loss"), float) else "–", metric,
                      _fmt_seconds(r.get("seconds")), _fmt_mem(r.get("peak_memory")), r.get("run_id") or ""])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)
    return f"{table['id']}\n{text}\n{table['note']}"


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _show(workspace: Path, sweep_id: str, as_json: bool) -> Any:
    table = comparison(workspace, sweep_id, run_queue.read_queue(workspace)["entries"])
    if as_json:
        return {"sweep": table}
    print(table_text(table))
    return 0


def _wait(workspace: Path, sweep_id: str, poll: float) -> bool:
    """Look at the queue until the sweep's entries have ended; False when interrupted (the sweep is cancelled)."""
    ours = {e["id"] for e in sweep_entries(workspace, sweep_id)}

    def say(ev: dict[str, Any]) -> None:
        if ev.get("entry") not in ours:
            return
        kind = ev.get("kind")
        if kind == "run_start":
            print(f"ftstudio: started {ev.get('label')} ({Path(ev['run_dir']).name})", file=sys.stderr)
        elif kind == "run_end":
            print(f"ftstudio: {ev.get('label')} {ev.get('state')}"
                  + (f": {ev['error']}" if ev.get("error") else ""), file=sys.stderr)
        elif kind == "run_pruned":
            print(f"ftstudio: {ev.get('label')}: {ev.get('message')}", file=sys.stderr)

    worker = run_queue.QueueWorker(workspace, poll=poll, on_event=say).start()
    try:
        while not sweep_done(workspace, sweep_id):
            time.sleep(poll)
        # One more look, so the last run's end is recorded before the table is read.
        for ev in run_queue.queue_step(workspace):
            say(ev)
        return True
    except KeyboardInterrupt:
        print("ftstudio: interrupted: the sweep's waiting runs leave the queue and its running run stops "
              "(it saves a checkpoint first)...", file=sys.stderr)
        worker.stop()
        cancel_sweep(workspace, sweep_id)
        run_queue.queue_step(workspace)
        return False
    finally:
        worker.stop()


def run(args: argparse.Namespace) -> Any:
    workspace = Path(args.workspace).resolve()
    if args.show:
        return _show(workspace, args.show, args.json)
    if not args.config:
        raise UserError("Give the base CONFIG.yaml and one to three --set FIELD=V1,V2 (or --show SWEEP_ID).")
    configs = read_run_files(args.config, preset=args.preset, workspace=workspace)
    if len(configs) != 1:
        raise UserError(f"{args.config} holds {len(configs)} configs; a sweep starts from one: export it from the "
                        "Method tab or take a run's config.yaml.")
    base = configs[0]
    axes = [parse_set(s) for s in args.sets]
    runs = plan_sweep(base, axes)  # every sentence about a field or a value comes before anything is queued
    if args.print_config:
        print("\n---\n".join(f"# {r.name}\n{config_to_yaml(r.config)}" for r in runs), end="")
        return 0
    for r in runs:
        runner.preflight(r.config)
    problem = start_problems(base)
    if problem:
        raise UserError(problem)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    record = queue_sweep(workspace, base, axes, args.prune)
    print(f"ftstudio: queued {len(runs)} runs as {record['id']}", file=sys.stderr)
    if args.no_wait:
        result = {"sweep": comparison(workspace, record["id"], run_queue.read_queue(workspace)["entries"]),
                  "waited": False}
        if not args.json:
            print(record["id"])
            return 0
        return result
    finished = _wait(workspace, record["id"], args.poll)
    table = comparison(workspace, record["id"], run_queue.read_queue(workspace)["entries"])
    ok = finished and all(r.get("state") in ("completed", "pruned") for r in table["rows"])
    if args.json:
        import json
        print(json.dumps({"sweep": table, "waited": True, "all_completed": ok}, default=str))
    else:
        print(table_text(table))
    return 0 if ok else 1
