"""Hyperparameter sweeps: a grid of 1-3 fields over a base RunConfig, run through the queue, compared.

The pieces, each testable on its own:

- `parse_set` / `parse_values` read `train.learning_rate=1e-4,3e-4` (the CLI's `--set`, the Method tab's
  boxes); `plan_sweep` checks every field and value against the RunConfig model (sentences for an
  unknown field, a section, a list, a bad value, a repeated value, a field the method does not use) and
  expands the grid into named configs.
- A sweep's record, `WORKSPACE/sweeps/<id>.json`, lists its runs (name, overrides, queue entry, run
  directory); `backend.runs.sweep_queue` writes it and queues the runs. The record outlives the queue's
  entries, so the comparison still finds the runs after the queue is emptied.
- `median_rule` is the median stopping rule as a pure function; `watch_queue`, called by the queue at
  each look, records where each sweep run went and stops a clearly losing one when the sweep asked for it.
- `comparison` is the table: best validation loss, the evaluation report's figures, time and peak
  memory per run, read from the run directories, with the winner marked.

This module never imports the queue (the queue imports it), so there is no cycle.
"""
from __future__ import annotations

import contextlib
import difflib
import itertools
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from backend.core import catalog
from backend.core.config import ConfigError, RunConfig, validate_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_json, read_json
from backend.core.locks import file_lock
from backend.runs import events as run_events
from backend.runs import rundir

log = logging.getLogger(__name__)

MAX_FIELDS = 3
MAX_RUNS = 32
SWEEPS_DIR = "sweeps"
SWEEP_VERSION = 1
PRUNE_RULES = ("median",)
# Short names in run names, so "lr=0.0001 r=8" fits the runs table and the run id.
SHORT = {"learning_rate": "lr", "gradient_accumulation": "grad_acc", "batch_size": "batch",
         "warmup_ratio": "warmup", "weight_decay": "wd", "max_length": "max_len"}
# The fields the Method tab offers first; any other scalar field of the RunConfig can be typed in.
COMMON_FIELDS = ("train.learning_rate", "method.r", "method.alpha", "train.epochs", "train.max_steps",
                 "train.batch_size", "train.gradient_accumulation", "train.warmup_ratio", "train.weight_decay",
                 "train.scheduler", "train.optimizer", "method.dropout", "data.max_length", "train.seed",
                 "alignment.beta", "method.name")


@dataclass(frozen=True)
class SweepAxis:
    """One swept field and its values, in the order given."""
    field: str
    values: tuple[Any, ...]


@dataclass
class SweepRun:
    """One point of the grid: its run name, the values it sets, and the whole validated config."""
    name: str
    overrides: dict[str, Any]
    config: RunConfig


# ---- reading fields and values -----------------------------------------------------------------

def parse_value(token: str) -> Any:
    """A value as typed: true/false, null, an integer, a number (1e-4 too), else the text itself."""
    text = token.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    # YAML would read "1e-4" as text, so numbers are parsed here, not by yaml.safe_load.
    with contextlib.suppress(ValueError):
        return int(text)
    with contextlib.suppress(ValueError):
        number = float(text)
        if math.isfinite(number):
            return number
    return text


def parse_values(field_name: str, text: str) -> list[Any]:
    """The comma-separated values of one field; a sentence when there are none or one is empty."""
    parts = [p.strip() for p in str(text or "").split(",")]
    if not any(parts):
        raise UserError(f"The sweep field {field_name} has no values: give them separated by commas, "
                        f"for example {field_name}=1e-4,3e-4.")
    if any(not p for p in parts):
        raise UserError(f"The values of {field_name} ({text!r}) have an empty entry between commas: "
                        "remove the extra comma.")
    return [parse_value(p) for p in parts]


def parse_set(text: str) -> SweepAxis:
    """`FIELD=V1,V2,...` (the CLI's --set) as an axis; its values are checked later by plan_sweep."""
    name, sep, values = str(text).partition("=")
    name = name.strip()
    if not sep or not name:
        raise UserError(f"--set {text!r} is not FIELD=VALUES: write it like train.learning_rate=1e-4,3e-4.")
    return SweepAxis(name, tuple(parse_values(name, values)))


def _leaf_paths(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        path = f"{prefix}{k}"
        out.extend(_leaf_paths(v, path + ".") if isinstance(v, dict) else [path])
    return out


def _get(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    for part in head:
        data = data[part]
    data[last] = value


def check_field(base: dict[str, Any], name: str) -> None:
    """A sentence when `name` is not one scalar setting of the RunConfig."""
    parts = name.split(".")
    node: Any = base
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = [p for p in _leaf_paths(base) if isinstance(_get(base, p), (int, float, str, bool, type(None)))]
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" Did you mean {near[0]}?" if near else " Fields look like train.learning_rate or method.r."
            raise UserError(f"{name} is not a setting of the run configuration, so it cannot be swept.{hint}")
        node = node[part]
    if isinstance(node, dict):
        inner = ", ".join(f"{name}.{k}" for k in list(node)[:4])
        raise UserError(f"{name} is a section of the run configuration, not one setting: sweep a field inside it "
                        f"({inner}, ...).")
    if isinstance(node, list):
        raise UserError(f"{name} holds a list; a sweep varies one value at a time, so it cannot be swept. "
                        "Set it in the Method tab and sweep another field.")


def _value_problem(fields: dict[str, str], name: str) -> str:
    if name in fields:
        return fields[name]
    return "; ".join(f"{k}: {v}" if k else v for k, v in fields.items())


def fmt_value(value: Any) -> str:
    """A value as a run name shows it: 0.0001, 8, cosine."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short_name(name: str, all_fields: Iterable[str]) -> str:
    last = name.rsplit(".", 1)[-1]
    clash = sum(1 for f in all_fields if f.rsplit(".", 1)[-1] == last) > 1
    return name if clash else SHORT.get(last, last)


def _method_uses(method_name: str, leaf: str) -> bool:
    info = catalog.METHODS.get(method_name)
    return info is None or leaf in info.params


def plan_sweep(base: RunConfig | dict[str, Any], axes: list[SweepAxis], max_runs: int = MAX_RUNS) -> list[SweepRun]:
    """The grid's runs (every combination, the first field varying slowest), each validated.

    Raises UserError with a sentence for: no field or more than three, a field given twice, a field that
    is not one setting, a value the RunConfig refuses, a value given twice, a method field the method does
    not use, a grid of one run or more than `max_runs`, and a base config without a validation set (the
    runs are compared by their validation loss)."""
    base_cfg = base if isinstance(base, RunConfig) else validate_config(base, source="the sweep's base config")
    base_dict = base_cfg.model_dump(mode="json")
    if not axes:
        raise UserError("A sweep needs at least one field and its values, for example "
                        "train.learning_rate=1e-4,3e-4.")
    if len(axes) > MAX_FIELDS:
        raise UserError(f"A sweep varies at most {MAX_FIELDS} fields at once ({len(axes)} given: "
                        f"{', '.join(a.field for a in axes)}); a bigger grid grows too fast to train.")
    seen: set[str] = set()
    checked: list[SweepAxis] = []
    for axis in axes:
        if axis.field in seen:
            raise UserError(f"{axis.field} is given twice; give all its values once, separated by commas.")
        seen.add(axis.field)
        check_field(base_dict, axis.field)
        values = []
        for value in axis.values:
            trial = _copy(base_dict)
            _set(trial, axis.field, value)
            try:
                cfg = validate_config(trial)
            except ConfigError as e:
                raise UserError(f"{axis.field}={fmt_value(value)} cannot be used: "
                                f"{_value_problem(e.fields, axis.field)}.") from None
            values.append(_get(cfg.model_dump(mode="json"), axis.field))
        for a, b in itertools.combinations(range(len(values)), 2):
            if values[a] == values[b]:
                raise UserError(f"{axis.field} lists the same value twice ({fmt_value(axis.values[a])} and "
                                f"{fmt_value(axis.values[b])}); each value trains one more run, so give each once.")
        checked.append(SweepAxis(axis.field, tuple(values)))
    methods = next((a.values for a in checked if a.field == "method.name"), (base_cfg.method.name,))
    for axis in checked:
        leaf = axis.field.rsplit(".", 1)[-1]
        if axis.field.startswith("method.") and leaf != "name" and not any(_method_uses(m, leaf) for m in methods):
            raise UserError(f"{axis.field} does not change a {'/'.join(methods)} run (the method does not use it), "
                            "so every run of the sweep would train the same way: sweep a field the method uses.")
    total = math.prod(len(a.values) for a in checked)
    if total < 2:
        raise UserError("The sweep has only one run: give a field at least two values to compare.")
    if total > max_runs:
        raise UserError(f"The sweep would train {total} runs ({' × '.join(str(len(a.values)) for a in checked)}); "
                        f"at most {max_runs} are queued at once: give fewer values.")
    if not base_cfg.data.validation_path and not base_cfg.data.validation_split:
        raise UserError("A sweep compares its runs by validation loss, and this configuration has no validation "
                        "set: set a validation split above 0 (Dataset tab) or a validation file.")
    fields = [a.field for a in checked]
    base_name = base_cfg.name or "sweep"
    runs: list[SweepRun] = []
    for combo in itertools.product(*(a.values for a in checked)):
        overrides = dict(zip(fields, combo))
        data = _copy(base_dict)
        for k, v in overrides.items():
            _set(data, k, v)
        label = " ".join(f"{short_name(k, fields)}={fmt_value(v)}" for k, v in overrides.items())
        name = f"{label} · {base_name}"[:80]
        data["name"] = name
        try:
            cfg = validate_config(data)
        except ConfigError as e:  # two values fine alone, refused together (packing with an objective, ...)
            raise UserError(f"The sweep run {label} cannot be used: {e}") from None
        runs.append(SweepRun(name, overrides, cfg))
    return runs


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    import copy
    return copy.deepcopy(data)


# ---- the median stopping rule ----------------------------------------------------------------------

def best_until(curve: list[tuple[int, float]], step: int) -> Optional[float]:
    """The lowest validation loss of a curve at or before `step`; None when it has none by then."""
    seen = [loss for s, loss in curve if s <= step]
    return min(seen) if seen else None


def median_rule(candidate: list[tuple[int, float]], others: list[list[tuple[int, float]]],
                min_others: int = 1) -> Optional[dict[str, Any]]:
    """The median stopping rule at the candidate's latest evaluation step N.

    Only the other runs that reached step N count (their last evaluation is at N or later); each gives
    its best validation loss up to N. When at least `min_others` count and the candidate's best up to N
    is worse (higher) than their median, the candidate is clearly losing: returns {"step", "best",
    "median", "compared"}; otherwise None. A tie with the median is not losing."""
    if not candidate:
        return None
    step = max(s for s, _ in candidate)
    mine = best_until(candidate, step)
    theirs = [best_until(c, step) for c in others if c and max(s for s, _ in c) >= step]
    theirs = [v for v in theirs if v is not None]
    if mine is None or len(theirs) < max(1, min_others):
        return None
    median = statistics.median(theirs)
    if mine > median:
        return {"step": step, "best": mine, "median": median, "compared": len(theirs)}
    return None


_summaries: dict[str, tuple[tuple[int, int], tuple[list[tuple[int, float]], Optional[int]]]] = {}


def _events_summary(run_dir: Path) -> tuple[list[tuple[int, float]], Optional[int]]:
    """(the evaluation curve, the peak GPU memory of the train events) of a run, cached while its
    events file is unchanged: the queue and the Train tab's table look every few seconds."""
    path = Path(run_dir) / rundir.EVENTS_FILE
    try:
        st = path.stat()
    except OSError:
        return [], None
    key = (st.st_mtime_ns, st.st_size)
    hit = _summaries.get(str(path))
    if hit and hit[0] == key:
        return hit[1]
    curve: list[tuple[int, float]] = []
    peak: Optional[int] = None
    for e in rundir.read_events(run_dir)[0]:
        if e.get("type") == run_events.EVAL and isinstance(e.get("val_loss"), (int, float)) \
                and isinstance(e.get("step"), int):
            curve.append((int(e["step"]), float(e["val_loss"])))
        elif e.get("type") == run_events.TRAIN and isinstance(e.get("gpu_mem_peak"), (int, float)):
            peak = max(peak or 0, int(e["gpu_mem_peak"]))
    _summaries[str(path)] = (key, (curve, peak))
    return curve, peak


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of each evaluation in the run's events."""
    return _events_summary(run_dir)[0]


# ---- the sweep's record ------------------------------------------------------------------------

def sweeps_root(workspace: Path) -> Path:
    return Path(workspace) / SWEEPS_DIR


def _lock(workspace: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(sweeps_root(workspace) / ".lock", make_parents=True)


_ID_RE = re.compile(r"sweep-\d{8}-\d{6}(-\d+)?")


def _record_path(workspace: Path, sweep_id: str) -> Path:
    if not _ID_RE.fullmatch(str(sweep_id or "")):
        raise UserError(f"{sweep_id!r} is not a sweep id (they look like sweep-20260101-120000).")
    return sweeps_root(workspace) / f"{sweep_id}.json"


def create_record(workspace: Path, runs: list[SweepRun], axes: list[SweepAxis], prune: Optional[str]) -> dict[str, Any]:
    """Write a new sweep's record (its runs not queued yet) and return it."""
    if prune is not None and prune not in PRUNE_RULES:
        raise UserError(f"--prune {prune} is not a pruning rule; the one offered is 'median'.")
    root = sweeps_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    with _lock(workspace):
        sweep_id, n = f"sweep-{stamp}", 1
        while (root / f"{sweep_id}.json").exists():
            n += 1
            sweep_id = f"sweep-{stamp}-{n}"
        record = {"version": SWEEP_VERSION, "id": sweep_id, "created": rundir.now_iso(), "prune": prune,
                  "fields": [a.field for a in axes], "axes": [{"field": a.field, "values": list(a.values)} for a in axes],
                  "runs": [{"index": i, "name": r.name, "overrides": r.overrides, "entry": None, "run_dir": None,
                            "error": None, "pruned": None} for i, r in enumerate(runs)]}
        atomic_write_json(root / f"{sweep_id}.json", record)
    return record


def load_sweep(workspace: Path, sweep_id: str) -> dict[str, Any]:
    record = read_json(_record_path(workspace, sweep_id), None)
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise UserError(f"There is no readable sweep {sweep_id} in {sweeps_root(workspace)}.")
    return record


def update_runs(workspace: Path, sweep_id: str, changes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Merge `changes` (run index -> fields) into the sweep's record, under its lock."""
    with _lock(workspace):
        record = load_sweep(workspace, sweep_id)
        for run in record["runs"]:
            run.update(changes.get(run.get("index"), {}))
        atomic_write_json(_record_path(workspace, sweep_id), record)
    return record


def list_sweeps(workspace: Path) -> list[dict[str, Any]]:
    """Every readable sweep record, newest first."""
    root = sweeps_root(workspace)
    try:
        paths = sorted((p for p in root.glob("sweep-*.json") if _ID_RE.fullmatch(p.stem)), reverse=True)
    except OSError:
        return []
    out = []
    for p in paths:
        record = read_json(p, None)
        if isinstance(record, dict) and isinstance(record.get("runs"), list):
            out.append(record)
    return out


def sweep_label(record: dict[str, Any]) -> str:
    """'sweep-… · lr, r · 4 runs' for a picker."""
    fields = record.get("fields") or []
    short = ", ".join(short_name(f, fields) for f in fields)
    prune = " · median pruning" if record.get("prune") else ""
    return f"{record.get('id')} · {short} · {len(record.get('runs') or [])} runs{prune}"


# ---- the queue's look at its sweep entries ---------------------------------------------------------

def watch_queue(workspace: Path, entries: list[dict[str, Any]], stop=None) -> list[dict[str, Any]]:
    """Called by `backend.runs.queue.queue_step` under the queue's lock at each look.

    Records each sweep entry's run directory (or its failure to start) in the sweep's record, and, for a
    sweep that asked for pruning, stops a running entry that the median rule finds clearly losing (`stop`,
    the runner's graceful stop by default). Returns queue events ({"kind": "run_pruned", ...}); a problem
    here is logged, never a reason for the queue's look to fail."""
    by_sweep: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if isinstance(e.get("sweep"), dict) and isinstance(e["sweep"].get("id"), str):
            by_sweep.setdefault(e["sweep"]["id"], []).append(e)
    out: list[dict[str, Any]] = []
    for sweep_id, mine in by_sweep.items():
        if not _ID_RE.fullmatch(sweep_id) or not (sweeps_root(workspace) / f"{sweep_id}.json").is_file():
            continue  # its record was deleted by hand: the entries train as plain queue entries
        try:
            out.extend(_watch_one(workspace, sweep_id, mine, stop))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("sweep %s: the queue's look at it failed: %s", sweep_id, exc)
    return out


def _watch_one(workspace: Path, sweep_id: str, entries: list[dict[str, Any]], stop) -> list[dict[str, Any]]:
    record = load_sweep(workspace, sweep_id)
    runs = {r["index"]: r for r in record["runs"]}
    changes: dict[int, dict[str, Any]] = {}
    for e in entries:
        index = e["sweep"].get("index")
        run = runs.get(index)
        if run is None:
            continue
        if e.get("run_dir") and run.get("run_dir") != e["run_dir"]:
            changes.setdefault(index, {})["run_dir"] = e["run_dir"]
        if run.get("entry") != e["id"]:
            changes.setdefault(index, {})["entry"] = e["id"]
        if not e.get("run_dir") and e.get("state") == "failed" and e.get("error") and run.get("error") != e["error"]:
            changes.setdefault(index, {})["error"] = e["error"]
    events: list[dict[str, Any]] = []
    if record.get("prune") == "median":
        dirs = {i: (changes.get(i, {}).get("run_dir") or r.get("run_dir")) for i, r in runs.items()}
        for e in entries:
            index = e["sweep"].get("index")
            if e.get("state") != "running" or index not in runs or runs[index].get("pruned") or not dirs.get(index):
                continue
            if rundir.read_status(Path(dirs[index])).get("state") != "running":
                continue
            others = [val_curve(Path(d)) for i, d in dirs.items() if i != index and d]
            verdict = median_rule(val_curve(Path(dirs[index])), others)
            if verdict is None:
                continue
            (stop or _graceful_stop)(Path(dirs[index]))
            changes.setdefault(index, {})["pruned"] = verdict
            events.append({"kind": "run_pruned", "entry": e["id"], "label": e.get("label"), "run_dir": dirs[index],
                           "message": prune_sentence(verdict)})
    if changes:
        update_runs(workspace, sweep_id, changes)
    return events


def _graceful_stop(run_dir: Path) -> None:
    from backend.runs import runner
    runner.stop_in_background(run_dir)


def prune_sentence(verdict: dict[str, Any]) -> str:
    return (f"Pruned at step {verdict['step']}: its best validation loss {verdict['best']:.4f} was worse than the "
            f"median {verdict['median']:.4f} of the {verdict['compared']} other run(s) at that step.")


# ---- the comparison table --------------------------------------------------------------------------

def run_figures(run_dir: Path) -> dict[str, Any]:
    """What the comparison shows of one run, from its directory: state, best validation loss and its
    step, training seconds, peak GPU memory (CUDA runs only), and the evaluation report's adapter loss
    and headline task metric where `ftstudio eval` wrote one."""
    run_dir = Path(run_dir)
    status = rundir.read_status(run_dir)
    best, best_step = status.get("best_val_loss"), status.get("best_step")
    curve, peak = _events_summary(run_dir)
    if curve and not isinstance(best, (int, float)):  # still running: the events say the best so far
        best_step, best = min(curve, key=lambda p: p[1])
    seconds, _ = rundir.run_times(status)
    report = read_json(run_dir / "eval.json", None)
    eval_loss = metric = metric_value = None
    if isinstance(report, dict):
        with contextlib.suppress(TypeError, KeyError, ValueError):
            eval_loss = float(report["adapter"]["loss"])
        with contextlib.suppress(TypeError, KeyError, ValueError):
            metric, metric_value = str(report["headline"]["metric"]), float(report["headline"]["adapter"])
    return {"state": status.get("state"), "best_val_loss": best if isinstance(best, (int, float)) else None,
            "best_step": best_step, "seconds": seconds, "peak_memory": peak, "eval_loss": eval_loss,
            "metric": metric, "metric_value": metric_value, "error": status.get("error")}


def pick_winner(rows: list[dict[str, Any]]) -> Optional[int]:
    """The index of the completed run with the lowest best validation loss; None when no completed run has one.

    Pruned, stopped and failed runs never win: their loss is not that of a finished training."""
    done = [(r["best_val_loss"], i) for i, r in enumerate(rows)
            if r.get("state") == "completed" and not r.get("pruned") and isinstance(r.get("best_val_loss"), (int, float))]
    return min(done)[1] if done else None


def comparison(workspace: Path, sweep_id: str, queue_entries: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """The sweep's table: {"id", "fields", "prune", "rows": [...], "winner": index or None, "note"}.

    Each row: index, name, overrides, run_dir, run_id, state ("queued" before its run starts, "pruned"
    for a run the median rule stopped), the figures of `run_figures`, and "winner". `queue_entries` (the
    queue's, when at hand) name the state of entries still waiting."""
    record = load_sweep(workspace, sweep_id)
    waiting = {e["id"]: e for e in queue_entries or [] if isinstance(e, dict) and "id" in e}
    rows: list[dict[str, Any]] = []
    for run in record["runs"]:
        row = {"index": run["index"], "name": run["name"], "overrides": run.get("overrides") or {},
               "run_dir": run.get("run_dir"), "run_id": Path(run["run_dir"]).name if run.get("run_dir") else None,
               "pruned": run.get("pruned"), "best_val_loss": None, "best_step": None, "seconds": None,
               "peak_memory": None, "eval_loss": None, "metric": None, "metric_value": None, "error": run.get("error")}
        if run.get("run_dir"):
            figures = run_figures(Path(run["run_dir"]))
            row.update({k: v for k, v in figures.items() if k != "error" or v})
        else:
            entry = waiting.get(run.get("entry"))
            row["state"] = (entry or {}).get("state") or ("failed" if run.get("error") else "queued")
            if entry and entry.get("error"):
                row["error"] = entry["error"]
        if run.get("pruned") and row.get("state") in ("stopped", "stopping", "running"):
            row["state"] = "pruned"
        rows.append(row)
    winner = pick_winner(rows)
    for i, row in enumerate(rows):
        row["winner"] = i == winner
    return {"id": record["id"], "fields": record.get("fields") or [], "prune": record.get("prune"), "rows": rows,
            "winner": winner, "note": _note(rows, winner)}


def _note(rows: list[dict[str, Any]], winner: Optional[int]) -> str:
    open_ = sum(1 for r in rows if r.get("state") in ("queued", "starting", "running", "stopping"))
    if winner is not None:
        w = rows[winner]
        left = f" ({open_} run(s) still to finish, so this may change)" if open_ else ""
        return f"Winner: {w['name']}, best validation loss {w['best_val_loss']:.4f}{left}."
    if open_:
        return f"No winner yet: {open_} run(s) still to finish."
    return "No winner: no run completed with a validation loss."
