"""`make bench`: run the CPU benchmarks and regenerate bench/RESULTS.md from their JSON outputs.

    python bench/run_cpu.py                 # run every job, then write RESULTS.md
    python bench/run_cpu.py --only data_10k # run one job (others keep their last JSON)
    python bench/run_cpu.py --report-only   # rewrite RESULTS.md from bench/results/*.json

Every job is a command run in a child process; its JSON goes to bench/results/<job>.json together
with the exact command, the time it took and the date. RESULTS.md is rendered only from those
files (and from bench/results/gpu_matrix.json when a GPU run left one), so no figure in it is
typed by hand. A job that fails or times out is reported as such, with its last error line.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

PY = "python"  # how commands are shown; they run with this interpreter
TINY = ".test-cache/tiny-llama"
BUNDLED_CONFIG = ".test-cache/models/smollm2-135m-instruct"

# (job, argv after the interpreter, timeout seconds). Sized so the whole run stays under ~10 minutes
# on a 2-core machine.
JOBS: list[tuple[str, list[str], int]] = [
    ("data_10k", ["bench/data_speed.py", "--rows", "10000"], 240),
    ("data_100k", ["bench/data_speed.py", "--rows", "100000", "--preview-repeats", "10"], 1200),
    ("estimator_latency", ["bench/estimator_latency.py", "--repeats", "200"], 240),
    ("precise_vs_closed", ["bench/run_cpu.py", "--job", "precise"], 600),
    ("train_overhead_tiny", ["bench/train_overhead.py", "--model", TINY, "--steps", "60", "--repeats", "3"], 900),
]

# Configs the precise job compares: (label, model, method, batch, seq, checkpointing).
PRECISE_CASES = [
    ("tiny lora b4 s128", TINY, "lora", 4, 128, False),
    ("tiny full b4 s128", TINY, "full", 4, 128, False),
    ("tiny lora b4 s128 ckpt", TINY, "lora", 4, 128, True),
    ("135M lora b1 s512 ckpt", BUNDLED_CONFIG, "lora", 1, 512, True),
]


# ------------------------------------------------------------------------------- running

def machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "versions": {n: v(n) for n in ("torch", "transformers", "trl", "peft", "datasets", "accelerate",
                                           "bitsandbytes")}}


def _ensure_models() -> None:
    """The tiny model and the converted bundled model the jobs use (built once, shared with tests)."""
    os.environ.setdefault("FTSTUDIO_MODEL_CACHE", str(REPO / ".test-cache" / "models"))
    from backend.core.models import ensure_bundled
    from tests.tiny import make_tiny_model
    bundled = ensure_bundled()
    make_tiny_model(REPO / TINY, bundled)


def run_job(name: str, argv: list[str], timeout: int) -> dict[str, Any]:
    command = " ".join([PY] + [shlex.quote(a) for a in argv])
    started = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    record: dict[str, Any] = {"job": name, "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "load_average": round(os.getloadavg()[0], 1)}
    try:
        proc = subprocess.run([sys.executable] + argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            record.update(status="ok", result=json.loads(lines[-1]))
        else:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            record.update(status="failed", error=f"exit {proc.returncode}: {err[:300]}")
    except subprocess.TimeoutExpired:
        record.update(status="failed", error=f"timed out after {timeout} s")
    record["seconds"] = round(time.perf_counter() - started, 1)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds next to wall seconds show how much a shared machine slowed the job down.
    record["cpu_seconds"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)
    return record


def precise_job() -> None:
    """Precise (fake-tensor trace) vs closed form on CPU; prints one JSON object."""
    from backend.core.config import RunConfig
    from backend.estimator.precise import compare

    out = []
    for label, model, method, batch, seq, ckpt in PRECISE_CASES:
        cfg = RunConfig.model_validate({"model": str(REPO / model), "method": {"name": method},
                                        "train": {"batch_size": batch, "gradient_checkpointing": ckpt},
                                        "data": {"max_length": seq}})
        r = compare(cfg)
        out.append({"case": label, "closed_form_bytes": r["closed_form_allocated_bytes"],
                    "closed_form_fused_head_bytes": r["closed_form_with_fused_head_bytes"],
                    "precise_bytes": r["precise"]["peak_bytes"], "precise_seconds": r["precise"]["seconds"],
                    "closed_error": r["closed_vs_precise_error"], "fused_closed_error": r["fused_closed_vs_precise_error"],
                    "closed_logits_term_bytes": r["closed_form_terms_bytes"]["logits"],
                    "fused_head_bytes": r["fused_head_bytes"], "phases_bytes": r["precise"]["phases_bytes"]})
    print(json.dumps({"cases": out}))


# ------------------------------------------------------------------------------- rendering

def _mib(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _section_header(rec: dict[str, Any]) -> list[str]:
    load = ""
    if rec.get("cpu_seconds") is not None:
        load = f", {rec['cpu_seconds']} s of CPU, load average {rec.get('load_average')} at start"
    lines = [f"Command: `{rec['command']}` ({rec['date']}, {rec['seconds']} s wall{load})", ""]
    if rec.get("status") != "ok":
        lines += [f"**Not measured**: {rec.get('error', 'no result')}", ""]
    return lines


def _data(rec: dict[str, Any]) -> list[str]:
    r = rec["result"]
    return [
        "| rows | file | load + detect + normalize | tokenize + labels | tokens | tokens/s | preview one row p50 / p95 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {r['rows']:,} | {r['file_bytes'] / 2**20:.1f} MiB | {r['load_detect_normalize_s']} s"
        f" | {r['tokenize_labels_dataset_s']} s | {r['tokens']:,} | {r['tokens_per_s']:,}"
        f" | {r['preview_one_row_ms']['median']} / {r['preview_one_row_ms']['p95']} ms |", ""]


def _latency(rec: dict[str, Any]) -> list[str]:
    r = rec["result"]
    u, s = r["update_ms"], r["structural_change_first_time_ms"]
    return [
        f"- first inspection of the model (config + meta skeleton): {r['first_inspection_s']} s",
        f"- estimate update after an edit (batch, length, optimizer, precision, checkpointing, alpha):"
        f" p50 {u['p50']} ms, p95 {u['p95']} ms (n = {u['n']})",
        f"- first estimate after a structural edit (LoRA rank): p50 {s['p50']} ms, p95 {s['p95']} ms (n = {s['n']})",
        ""]


def _precise(rec: dict[str, Any]) -> list[str]:
    lines = ["Peak tensor memory in MiB. closed = `estimate().allocated_bytes` as shipped; closed + fused head ="
             " the same with its `logits` term replaced by `precise.fused_head_bytes` (TRL's chunked LM head, which"
             " SFTTrainer trains with); precise = `precise_estimate()` (one real step traced on fake tensors).", "",
             "| case | closed | closed + fused head | precise | closed vs precise | fused vs precise | trace time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in rec["result"]["cases"]:
        lines.append(f"| {c['case']} | {_mib(c['closed_form_bytes'])} | {_mib(c['closed_form_fused_head_bytes'])}"
                     f" | {_mib(c['precise_bytes'])} | {_pct(c['closed_error'])} | {_pct(c['fused_closed_error'])}"
                     f" | {c['precise_seconds']} s |")
    return lines + ["", "TRL's SFT/DPO/KTO trainers (the studio's training path) score tokens through a chunked LM"
                    " head that never holds the full batch x sequence x vocabulary logits. The closed form counts"
                    " that head for those objectives (its `logits` term, `precise.fused_head_bytes`), so both"
                    " columns agree; records made before that change show the full-logits term's gap in the"
                    " first column.", ""]


def _overhead(rec: dict[str, Any]) -> list[str]:
    r = rec["result"]
    return [
        f"- model `{r['model']}`, {r['steps']} steps, LoRA r=8 all-linear, batch 4 x 128 tokens, fp32, {r['device']}",
        f"- studio (runner subprocess, events, stop checks): {r['studio_steps_per_s']} steps/s;"
        f" plain TRL script: {r['plain_steps_per_s']} steps/s; studio overhead {r['overhead_percent']}%", ""]


SECTIONS = [
    ("Data path: 10k rows", "data_10k", _data),
    ("Data path: 100k rows", "data_100k", _data),
    ("Estimator update latency", "estimator_latency", _latency),
    ("Precise mode vs closed form (CPU)", "precise_vs_closed", _precise),
    ("Training throughput: studio vs plain TRL script (CPU, tiny model)", "train_overhead_tiny", _overhead),
]


def _gpu_section(gpu: Optional[dict[str, Any]]) -> list[str]:
    if not gpu:
        return ["## GPU matrix", "",
                "GPU matrix: not measured -- no GPU was available to this task; run "
                "`python bench/gpu_memory_matrix.py` on a CUDA machine (it writes bench/results/gpu_matrix.json"
                " and .md, and `python bench/run_cpu.py --report-only` then adds them here).", "",
                "Because nothing was measured on a GPU, the estimator's calibration constants"
                " (backend/estimator/terms.py) are still the first-guess values, not fitted.", ""]
    _, matrix = _load_matrix()
    return ["## GPU matrix", "", matrix.format_report(gpu["cells"], gpu["device"], gpu["command"])]


def _load_matrix():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_gpu_memory_matrix", REPO / "bench" / "gpu_memory_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return spec, mod


# Everything from this line on in RESULTS.md was measured by hand (each with its command) and is kept
# as it is when the generated part above it is written again.
HAND_MARKER = "<!-- Below: measurements recorded by hand, each with its command; run_cpu.py keeps them as they are. -->"


def with_hand_sections(generated: str, previous: str) -> str:
    """The generated report followed by the hand-recorded part of the previous one (from HAND_MARKER on)."""
    at = previous.find(HAND_MARKER)
    return generated if at < 0 else generated.rstrip("\n") + "\n\n" + previous[at:]


def render(records: dict[str, dict[str, Any]], mach: dict[str, Any], gpu: Optional[dict[str, Any]] = None) -> str:
    """RESULTS.md from job records (bench/results/<job>.json) and an optional GPU matrix result."""
    v = mach["versions"]
    lines = [
        "# Benchmark results", "",
        "Generated by `python bench/run_cpu.py` (`make bench`) from bench/results/*.json; do not edit by hand above the hand-recorded marker.", "",
        f"CPU machine: {mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, {mach['platform']}",
        "Libraries: " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
        "CPU figures come from a machine shared with other work, so wall times are upper bounds; where a job"
        " records its CPU seconds and the load average, compare them to see how much sharing slowed it.", "",
    ]
    lines += _gpu_section(gpu)
    for title, job, fn in SECTIONS:
        lines += [f"## {title}", ""]
        rec = records.get(job)
        if rec is None:
            lines += ["**Not measured**: the job has not run yet (`python bench/run_cpu.py --only " + job + "`).", ""]
            continue
        lines += _section_header(rec)
        if rec.get("status") == "ok":
            try:
                lines += fn(rec)
            except (KeyError, TypeError) as e:
                lines += [f"**Result unreadable** ({type(e).__name__}: {e})", ""]
    lines += ["## Not measured here", "",
              "- Throughput on the bundled 135M model and on a GPU, and packing on vs off: not run by `make bench`"
              " (too slow for this 2-core machine's budget); `python bench/train_overhead.py --model DIR` measures"
              " one configuration, and `python bench/gpu_speed.py` the speed switches (recorded by hand below).", ""]
    return "\n".join(lines)


def _read_records() -> dict[str, dict[str, Any]]:
    out = {}
    for job, _, _ in JOBS:
        path = RESULTS / f"{job}.json"
        if path.exists():
            out[job] = json.loads(path.read_text())
    return out


def write_report() -> Path:
    gpu_path = RESULTS / "gpu_matrix.json"
    gpu = json.loads(gpu_path.read_text()) if gpu_path.exists() else None
    mach_path = RESULTS / "machine.json"
    mach = json.loads(mach_path.read_text()) if mach_path.exists() else machine()
    out = REPO / "bench" / "RESULTS.md"
    previous = out.read_text(encoding="utf-8") if out.exists() else ""
    out.write_text(with_hand_sections(render(_read_records(), mach, gpu), previous), encoding="utf-8")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Run the CPU benchmarks and regenerate bench/RESULTS.md.")
    ap.add_argument("--only", action="append", help="run only this job (repeatable)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("FTSTUDIO_MODEL_CACHE", str(REPO / ".test-cache" / "models"))
    if args.job == "precise":
        precise_job()
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        _ensure_models()
        (RESULTS / "machine.json").write_text(json.dumps(machine(), indent=1))
        for name, argv_, timeout in JOBS:
            if args.only and name not in args.only:
                continue
            print(f"bench: {name} ...", flush=True)
            rec = run_job(name, argv_, timeout)
            (RESULTS / f"{name}.json").write_text(json.dumps(rec, indent=1))
            print(f"bench: {name} {rec['status']} in {rec['seconds']} s", flush=True)
    print(f"wrote {write_report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
