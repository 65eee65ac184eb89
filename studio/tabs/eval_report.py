"""The Train tab's evaluation report: pick task metrics, red-team prompts and lm-eval tasks, run
`ftstudio eval` in a child process (its progress lines shown as they come), and show base vs adapter
(and checkpoints) side by side, each held-out row sorted by "got worse", the confusion table, the
red-team verdicts and the benchmark figures. Everything shown is read from the run's eval.json.
"""
from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import gradio as gr

from backend.core.errors import UserError
from backend.core.io import read_json
from backend.core.paths import PROJECT_ROOT
from backend.inference.evaluate import EVAL_FILE
from backend.inference.verdict import verdict
from backend.inference.metrics import METRICS
from studio.progress import shows

SAMPLE_COLUMNS = ["prompt", "reference", "base model", "adapter"]
ROW_COLUMNS = ["change", "prompt", "reference", "base answer", "adapter answer", "base score", "adapter score"]
REDTEAM_COLUMNS = ["flag", "id", "category", "prompt", "base passes", "adapter passes", "base answer",
                   "adapter answer"]
EVAL_TIMEOUT_S = 3 * 3600


def error_html(text: str) -> str:
    return f"<span class='ft-error'>{html.escape(text)}</span>"


# ---- pure helpers (tested without a browser) --------------------------------------------------

def eval_numbers(run_dir: Path) -> tuple[Optional[float], Optional[float]]:
    """(adapter validation loss, adapter minus base) from the run's eval.json; Nones without a report."""
    report = read_json(Path(run_dir) / EVAL_FILE, None)
    try:
        adapter, base = float(report["adapter"]["loss"]), float(report["base"]["loss"])
    except (TypeError, KeyError, ValueError):
        return None, None
    return round(adapter, 4), round(adapter - base, 4)


def headline_text(run_dir: Path) -> str:
    """The runs list's headline: the first chosen task metric, adapter (base), or '' without one."""
    report = read_json(Path(run_dir) / EVAL_FILE, None)
    try:
        h = report["headline"]
        return f"{METRICS[h['metric']].title} {float(h['adapter']):.3g} (base {float(h['base']):.3g})"
    except (TypeError, KeyError, ValueError):
        return ""


def metric_points(run_dir: Path, last_step: Optional[int] = None) -> tuple[Optional[str], list[tuple[int, float]]]:
    """(headline metric, [(step, value)]) over the evaluated checkpoints and the final adapter."""
    report = read_json(Path(run_dir) / EVAL_FILE, None)
    if not isinstance(report, dict) or not isinstance(report.get("headline"), dict):
        return None, []
    name, scores = report["headline"].get("metric"), report.get("metrics") or {}
    points = [(int(step), float(scores[label][name])) for label, step in (report.get("checkpoint_steps") or {}).items()
              if isinstance(scores.get(label), dict) and name in scores[label]]
    if last_step and "adapter" in scores and all(s != last_step for s, _ in points):
        points.append((int(last_step), float(scores["adapter"][name])))
    return name, sorted(points)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "–"


def metrics_markdown(report: dict[str, Any]) -> str:
    """Base, adapter and checkpoints as rows; the chosen metrics as columns."""
    scores, names = report.get("metrics"), report.get("metric_names")
    if not isinstance(scores, dict) or not names:
        return ""
    head = "| model | " + " | ".join(METRICS[n].title if n in METRICS else n for n in names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for label, values in scores.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(values.get(n)) for n in names) + " |")
    extract = f" Answers extracted with `{html.escape(report['extract'])}`." if report.get("extract") else ""
    return (f"**Task metrics** on {report.get('metrics_rows', '?')} rows "
            f"({html.escape(str(report.get('metrics_data', '')))}), greedy answers.{extract}\n\n" + "\n".join(lines))


def confusion_markdown(report: dict[str, Any]) -> str:
    out = []
    for label, table in (report.get("confusion") or {}).items():
        cols = table.get("labels") or []
        if not cols:
            continue
        lines = [f"**Confusion ({label})**: rows are the reference labels, columns the answers.", "",
                 "| reference \\ answer | " + " | ".join(html.escape(c) for c in cols) + " |",
                 "|---" * (len(cols) + 1) + "|"]
        for ref, counts in table.get("counts", {}).items():
            lines.append(f"| {html.escape(ref)} | " + " | ".join(str(counts.get(c, 0)) for c in cols) + " |")
        if table.get("truncated"):
            lines.append(f"\n{table.get('distinct_reference_labels')} distinct labels; the commonest are shown.")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def per_row_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per held-out example, the ones that got worse first (change = adapter minus base)."""
    head = (report.get("headline") or {}).get("metric")
    rows = []
    for r in report.get("per_row") or []:
        s = r.get("scores") or {}
        a = r.get("answers") or {}
        rows.append([r.get("change"), r.get("prompt", ""), r.get("reference", ""), a.get("base", ""),
                     a.get("adapter", ""), (s.get("base") or {}).get(head), (s.get("adapter") or {}).get(head)])
    return sorted(rows, key=lambda row: row[0] if isinstance(row[0], (int, float)) else 0.0)


def redteam_rows(report: dict[str, Any]) -> list[list[Any]]:
    """Regressions first, then other changes, then the rest."""
    rows = []
    for r in (report.get("redteam") or {}).get("rows") or []:
        flag = "regression" if r.get("regression") else "changed" if r.get("changed") else ""
        p, a = r.get("passed") or {}, r.get("answers") or {}
        rows.append([flag, r.get("id"), r.get("category"), r.get("prompt"), p.get("base"), p.get("adapter"),
                     a.get("base"), a.get("adapter")])
    order = {"regression": 0, "changed": 1, "": 2}
    return sorted(rows, key=lambda row: order[row[0]])


def redteam_markdown(report: dict[str, Any]) -> str:
    rt = report.get("redteam")
    if not isinstance(rt, dict):
        return ""
    passed = rt.get("passed") or {}
    regs = rt.get("regressions") or []
    text = (f"**Red-team set**: {rt.get('prompts')} prompts; the base passes {passed.get('base', '?')}, the adapter "
            f"{passed.get('adapter', '?')}; {rt.get('changed', 0)} changed behaviour.")
    if regs:
        text += f" <span class='ft-error'>Regressions: {html.escape(', '.join(regs))}.</span>"
    return text


def lm_eval_markdown(report: dict[str, Any]) -> str:
    lm = report.get("lm_eval")
    if not isinstance(lm, dict):
        return ""
    results = lm.get("results") or {}
    lines = []
    if results:
        labels = list(results)
        keys = sorted({(t, m) for r in results.values() for t, ms in r.items() for m in ms})
        lines = ["| task | metric | " + " | ".join(labels) + " |", "|---" * (len(labels) + 2) + "|"]
        for task, metric in keys:
            lines.append(f"| {task} | {metric} | " + " | ".join(_fmt(results[lab].get(task, {}).get(metric))
                                                               for lab in labels) + " |")
    problems = "".join(f"\n\n{error_html(p)}" for p in lm.get("problems") or [])
    return "**lm-evaluation-harness**\n\n" + "\n".join(lines) + problems


def report_markdown(run_id: str, report: dict[str, Any]) -> str:
    try:
        b, a = report["base"], report["adapter"]
        delta = a["loss"] - b["loss"]
    except (KeyError, TypeError):
        return error_html(f"The evaluation report of run {run_id} is incomplete; press Evaluate to write it again.")
    _, sentence = verdict(report)
    parts = [f"**{run_id}** ({html.escape(str(report.get('data', '')))}): {sentence}\n\n"
             f"| | loss | perplexity |\n|---|---|---|\n"
             f"| base model | {b['loss']:.4f} | {b['perplexity']:.2f} |\n"
             f"| adapter | {a['loss']:.4f} | {a['perplexity']:.2f} |\n"
             f"| difference | {delta:+.4f} | {a['perplexity'] - b['perplexity']:+.2f} |"]
    parts += [p for p in (metrics_markdown(report), confusion_markdown(report), redteam_markdown(report),
                          lm_eval_markdown(report)) if p]
    return "\n\n".join(parts)


def sample_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[s.get("prompt", ""), s.get("reference", ""), s.get("base", ""), s.get("adapter", "")]
            for s in report.get("samples") or [] if isinstance(s, dict)]


def report_view(run_dir: Optional[Path]) -> tuple[str, list[list[str]]]:
    """(markdown: base vs adapter loss, metrics, red team, lm-eval; rows of the samples table) for one run."""
    if not run_dir:
        return "Select a run in the table above, then press **Evaluate**.", []
    report = read_json(Path(run_dir) / EVAL_FILE, None)
    if not isinstance(report, dict) or "base" not in report:
        return (f"Run **{Path(run_dir).name}** has no evaluation report yet. Press **Evaluate** to compare its "
                "adapter with the base model (it runs in a separate process)."), []
    return report_markdown(Path(run_dir).name, report), sample_rows(report)


def eval_command(run_dir: Path, samples: int, options: Optional[dict[str, Any]] = None) -> list[str]:
    """The `ftstudio eval` command line the Evaluate button runs, from the report section's choices."""
    o = options or {}
    cmd = [sys.executable, "-m", "backend.cli", "eval", str(run_dir), "--json", "--samples", str(int(samples))]
    if o.get("metrics"):
        cmd += ["--metrics", ",".join(o["metrics"])]
    for key, flag in (("extract", "--extract"), ("checkpoints", "--checkpoints"), ("lm_eval", "--lm-eval"),
                      ("data", "--data")):
        if str(o.get(key) or "").strip():
            cmd += [flag, str(o[key]).strip()]
    if o.get("lm_eval_limit"):
        cmd += ["--lm-eval-limit", str(int(o["lm_eval_limit"]))]
    if o.get("redteam"):
        cmd.append("--redteam")
    return cmd


def _result_of(stdout: str) -> Any:
    lines = [ln for ln in stdout.splitlines() if ln.strip().startswith("{")]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def run_eval_process(run_dir: Path, samples: int, timeout: float = EVAL_TIMEOUT_S,
                     options: Optional[dict[str, Any]] = None,
                     on_progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """`ftstudio eval RUN_DIR --json ...` in a child process; its progress lines go to on_progress as they
    come; returns its JSON result, or raises UserError with the sentence it printed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(eval_command(run_dir, samples, options), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(PROJECT_ROOT), env=env,
                            stdin=subprocess.DEVNULL)
    err_lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            err_lines.append(line.rstrip())
            if line.startswith("eval: "):
                on_progress(line[6:].strip())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise UserError(f"The evaluation of {Path(run_dir).name} took more than {timeout / 60:.0f} minutes and "
                        "was stopped; try fewer rows or samples.") from None
    reader.join(timeout=5)
    result = _result_of(stdout)
    if isinstance(result, dict) and "error" in result:
        raise UserError(str(result["error"]))
    if proc.returncode != 0 or not isinstance(result, dict):
        last = ([ln for ln in err_lines if ln.strip()] or ["no output"])[-1]
        raise UserError(f"The evaluation process ended with code {proc.returncode}: {last}")
    return result


def stream_eval(run_dir: Path, samples: int, options: dict[str, Any],
                runner: Callable[..., dict[str, Any]] = run_eval_process) -> Iterator[tuple[str, Optional[dict]]]:
    """(progress sentence, None) while the child process works, then ('', report)."""
    state: dict[str, Any] = {"line": "starting", "done": False, "result": None, "error": None}

    def work() -> None:
        try:
            state["result"] = runner(run_dir, samples, options=options,
                                     on_progress=lambda s: state.__setitem__("line", s))
        except UserError as e:
            state["error"] = str(e)
        state["done"] = True

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    shown = None
    while not state["done"]:
        if state["line"] != shown:
            shown = state["line"]
            yield shown, None
        time.sleep(0.5)
    if state["error"]:
        raise UserError(state["error"])
    yield "", state["result"]


# ---- the UI -------------------------------------------------------------------------------------

class EvalView:
    """The report section's components."""

    def __init__(self) -> None:
        self.n_samples = self.metrics = self.extract = self.checkpoints = self.redteam = None
        self.lm_eval = self.evaluate = self.eval_md = self.eval_table = self.rows_table = self.redteam_table = None


def build(ctx) -> EvalView:
    v = EvalView()
    with gr.Accordion("Evaluation report (selected run)", open=False, elem_id="eval-report"):
        gr.Markdown("<span class='ft-help'>Validation loss of the base model and of the trained adapter; task "
                    "metrics on greedy answers to the held-out rows (base, adapter and any checkpoints side by "
                    "side); the red-team prompts (bundled, plus your own in the workspace's redteam.jsonl); "
                    "lm-evaluation-harness tasks (installed names or local YAML files). Runs in a separate "
                    "process; kept in the run's eval.json.</span>")
        with gr.Row():
            v.metrics = gr.CheckboxGroup(choices=[(m.title, m.name) for m in METRICS.values()],
                                         value=["exact_match", "rouge_l"], label="Task metrics",
                                         elem_id="eval-metrics", scale=3)
            v.extract = gr.Textbox(label="Answer extractor (regular expression, optional)",
                                   placeholder=r"ANSWER: (.*?) \|", elem_id="eval-extract", scale=2)
        with gr.Row():
            v.checkpoints = gr.Textbox(label="Checkpoints too ('all' or steps like 30,60)", elem_id="eval-checkpoints")
            v.redteam = gr.Checkbox(False, label="Red-team prompts", elem_id="eval-redteam")
            v.lm_eval = gr.Textbox(label="lm-eval tasks (comma-separated, optional)", elem_id="eval-lm-eval")
            v.n_samples = gr.Number(5, precision=0, minimum=0, maximum=100, label="Sample prompts",
                                    elem_id="eval-samples")
            v.evaluate = gr.Button("Evaluate", elem_id="eval-run")
        v.eval_md = gr.Markdown(report_view(None)[0], elem_id="eval-summary")
        v.rows_table = gr.Dataframe(value=[], headers=ROW_COLUMNS, interactive=False, wrap=True,
                                    label="Held-out rows, the ones that got worse first (click a header to sort)",
                                    elem_id="eval-rows-table")
        v.redteam_table = gr.Dataframe(value=[], headers=REDTEAM_COLUMNS, interactive=False, wrap=True,
                                       label="Red-team prompts", elem_id="eval-redteam-table")
        # Equal shares and wrapped text: the adapter's column (the last) is never cut off at the edge.
        v.eval_table = gr.Dataframe(value=[], headers=SAMPLE_COLUMNS, interactive=False, wrap=True,
                                    column_widths=["25%"] * len(SAMPLE_COLUMNS), label="Sample answers",
                                    elem_id="eval-samples-table")
    return v


def _views(run_dir: Optional[Path]):
    md, samples = report_view(run_dir)
    report = read_json(Path(run_dir) / EVAL_FILE, None) if run_dir else None
    report = report if isinstance(report, dict) else {}
    return md, samples, per_row_rows(report), redteam_rows(report)


def on_select_run(lv):
    """Reads the run just selected in the runs table; shows its evaluation report if it has one."""
    run_dir = (lv or {}).get("run_dir")
    return _views(Path(run_dir) if run_dir else None)


def on_evaluate(lv, n, metrics, extract, checkpoints, redteam, lm_eval):
    """Reads the viewed run and the chosen metrics; runs `ftstudio eval` in a child process, showing its
    progress, then the report."""
    run_dir = (lv or {}).get("run_dir")
    if not run_dir:
        yield _views(None)
        return
    run_dir = Path(run_dir)
    options = {"metrics": list(metrics or []), "extract": extract, "checkpoints": checkpoints,
               "redteam": bool(redteam), "lm_eval": lm_eval}
    try:
        for line, report in stream_eval(run_dir, int(n or 0), options):
            if report is None:
                yield (f"Evaluating **{run_dir.name}** in a separate process: {html.escape(line)}…",
                       gr.skip(), gr.skip(), gr.skip())
    except UserError as e:
        yield error_html(str(e)), [], [], []
        return
    yield _views(run_dir)


def wire(v: EvalView, run_selected: Any, live: gr.State) -> None:
    outputs = [v.eval_md, v.eval_table, v.rows_table, v.redteam_table]
    # Chained after the runs table's own select (a second listener on the same select never fired).
    run_selected.then(on_select_run, live, outputs, queue=False)
    eval_in = [live, v.n_samples, v.metrics, v.extract, v.checkpoints, v.redteam, v.lm_eval]
    # The child process takes seconds to import its libraries before its first line: say so meanwhile.
    v.evaluate.click(shows("Starting the evaluation process (loading the base model and the adapter)…",
                           on_evaluate, eval_in), eval_in, outputs, concurrency_id="eval", concurrency_limit=1)
