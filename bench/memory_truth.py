"""The estimator against measured memory: real training steps through the studio's training path.

    python bench/memory_truth.py [--device cpu|cuda] [--only SUBSTRING] [--models tiny,bundled]
                                 [--out bench/results] [--max-minutes M]

Each case loads its model with backend.methods.load_trainable_model and trains it with TRL's
SFTTrainer built from backend.training.run.training_args (the studio's own path), on full-length
random token rows. Step 1 is a warm-up outside the measurement (it creates the optimizer states);
step 2 is measured:

- on the CPU by torch.distributed._tools.mem_tracker.MemTracker, which counts every live tensor of
  the step (parameters, gradients, optimizer states, activations, temporaries) and keeps the peak;
- with --device cuda by torch.cuda.max_memory_allocated over the same step.

The measured peak stands beside the closed-form estimate of the same config
(`estimate(cfg).allocated_bytes`, the tensor peak it claims) and its terms. The config is used as
written: a CPU run of the studio would train bf16 as fp32 (training.run.effective_config); here bf16
autocast runs on the CPU so both precision policies are measured.

Results go to OUT/memory_truth_<device>.json and .md; the markdown is what bench/RESULTS.md shows.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MIB = 2**20

# (model, method, method fields, precision, pure_bf16, checkpointing, batch, seq, optimizer)
CASES: list[tuple] = [
    ("tiny", "full", {}, "fp32", False, False, 2, 64, "adamw_torch"),
    ("tiny", "full", {}, "bf16", False, False, 2, 64, "adamw_torch"),
    ("tiny", "full", {}, "bf16", True, False, 2, 64, "adamw_torch"),
    ("tiny", "full", {}, "bf16", False, False, 1, 128, "sgd"),
    ("tiny", "full", {}, "fp32", False, True, 4, 64, "adamw_torch"),
    ("tiny", "full", {}, "bf16", False, False, 2, 64, "adamw_8bit"),
    ("tiny", "lora", {"r": 8, "target_modules": ATTN}, "fp32", False, False, 2, 64, "adamw_torch"),
    ("tiny", "lora", {"r": 64, "target_modules": "all-linear"}, "bf16", False, False, 4, 128, "adamw_torch"),
    ("tiny", "lora", {"r": 8, "target_modules": "all-linear"}, "bf16", False, True, 2, 128, "adamw_torch"),
    ("tiny", "lora", {"r": 8, "target_modules": ATTN}, "fp32", False, False, 2, 64, "adamw_8bit"),
    ("tiny", "dora", {"r": 8, "target_modules": "all-linear"}, "fp32", False, False, 2, 64, "adamw_torch"),
    ("tiny", "dora", {"r": 16, "target_modules": ATTN}, "bf16", False, True, 2, 64, "adamw_torch"),
    ("tiny", "qlora", {"r": 8, "target_modules": "all-linear", "compute_dtype": "bf16"}, "bf16", False, False, 2, 64,
     "adamw_torch"),
    ("tiny", "qlora", {"r": 16, "target_modules": ATTN, "compute_dtype": "fp32"}, "fp32", False, False, 2, 64,
     "adamw_torch"),
    ("tiny", "prompt_tuning", {"num_virtual_tokens": 8}, "fp32", False, False, 2, 64, "adamw_torch"),
    ("tiny", "prefix_tuning", {"num_virtual_tokens": 8}, "bf16", False, False, 2, 64, "adamw_torch"),
    ("tiny", "last_layers", {"num_layers": 1}, "bf16", False, False, 2, 64, "adamw_torch"),
    ("tiny", "last_layers", {"num_layers": 1}, "bf16", True, True, 2, 64, "adamw_torch"),
    ("tiny", "qlora", {"r": 8, "target_modules": "all-linear", "compute_dtype": "bf16"}, "bf16", False, True, 4, 32,
     "adamw_8bit"),
    ("tiny", "prompt_tuning", {"num_virtual_tokens": 16}, "bf16", False, True, 2, 64, "sgd"),
    ("tiny", "last_layers", {"num_layers": 2}, "fp32", False, False, 4, 32, "sgd"),
    ("tiny", "lora", {"r": 64, "target_modules": ATTN}, "fp32", False, True, 4, 32, "adamw_torch"),
    ("tiny", "full", {}, "bf16", True, False, 4, 32, "sgd"),
    ("tiny", "dora", {"r": 8, "target_modules": "all-linear"}, "bf16", False, False, 1, 128, "adamw_8bit"),
    # The 135M model: fp32 first; bf16 autocast on a CPU without native bf16 matmuls is ~10x slower,
    # so its bf16 cases are short.
    ("bundled", "full", {}, "fp32", False, False, 1, 32, "adamw_torch"),
    ("bundled", "full", {}, "fp32", False, True, 1, 64, "sgd"),
    ("bundled", "lora", {"r": 16, "target_modules": "all-linear"}, "fp32", False, False, 2, 64, "adamw_torch"),
    ("bundled", "lora", {"r": 8, "target_modules": ATTN}, "fp32", False, True, 1, 128, "adamw_torch"),
    ("bundled", "lora", {"r": 64, "target_modules": "all-linear"}, "fp32", False, False, 1, 64, "adamw_8bit"),
    ("bundled", "dora", {"r": 8, "target_modules": ATTN}, "fp32", False, False, 1, 64, "adamw_torch"),
    ("bundled", "qlora", {"r": 16, "target_modules": "all-linear", "compute_dtype": "fp32"}, "fp32", False, True, 1,
     64, "adamw_torch"),
    ("bundled", "prompt_tuning", {"num_virtual_tokens": 16}, "fp32", False, False, 1, 64, "adamw_torch"),
    ("bundled", "full", {}, "bf16", False, False, 1, 32, "adamw_torch"),
    ("bundled", "full", {}, "bf16", True, False, 1, 32, "adamw_torch"),
    ("bundled", "last_layers", {"num_layers": 4}, "bf16", False, False, 1, 32, "adamw_8bit"),
]


def build_cases(models: Optional[list[str]] = None) -> list[dict[str, Any]]:
    out = []
    for model, method, fields, precision, pure, ckpt, batch, seq, opt in CASES:
        if models and model not in models:
            continue
        case = {"model": model, "method": method, "fields": fields, "precision": precision, "pure_bf16": pure,
                "checkpointing": ckpt, "batch": batch, "seq": seq, "optimizer": opt}
        case["id"] = case_id(case)
        out.append(case)
    return out


def case_id(c: dict[str, Any]) -> str:
    f = c["fields"]
    what = c["method"]
    if "r" in f:
        what += f" r{f['r']} {'attn' if f.get('target_modules') == ATTN else 'all'}"
    if "num_virtual_tokens" in f:
        what += f" {f['num_virtual_tokens']}vt"
    if "num_layers" in f:
        what += f" top{f['num_layers']}"
    prec = c["precision"] + (" pure" if c["pure_bf16"] else (" mixed" if c["precision"] != "fp32" else ""))
    return (f"{c['model']} {what} {prec} {c['optimizer']} b{c['batch']}x{c['seq']}"
            + (" ckpt" if c["checkpointing"] else ""))


def case_config(case: dict[str, Any], model_dir: str):
    from backend.core.config import RunConfig

    method = {"name": case["method"], "dropout": 0.0, **case["fields"]}
    return RunConfig.model_validate({
        "model": model_dir, "name": "memory-truth", "method": method,
        "data": {"path": "unused.jsonl", "validation_split": 0.0, "max_length": case["seq"]},
        "train": {"max_steps": 2, "batch_size": case["batch"], "gradient_accumulation": 1,
                  "precision": case["precision"], "pure_bf16": case["pure_bf16"], "optimizer": case["optimizer"],
                  "gradient_checkpointing": case["checkpointing"], "logging_steps": 1, "eval_steps": 10_000,
                  "warmup_ratio": 0.0, "learning_rate": 1e-4},
        "early_stopping": {"patience": None}, "report_to": [],
    })


def estimate_case(cfg: Any, device: str) -> dict[str, Any]:
    from backend.estimator import estimate

    est = estimate(cfg, gpus=[], device=device)
    return {"allocated_bytes": est.allocated_bytes, "terms_bytes": dict(est.terms_bytes), "phases": dict(est.phases)}


# ------------------------------------------------------------------------------- measuring

_KINDS = {"Parameter": "parameters", "Buffer": "buffers", "Gradient": "gradients", "Optstate": "optimizer",
          "Activation": "activations", "Temp": "temporaries", "Other": "inputs"}


def _snapshot(mt: Any, kind: str) -> dict[str, int]:
    out = {v: 0 for v in _KINDS.values()}
    out["total"] = 0
    for dev in mt.get_tracker_snapshot(kind).values():
        for key, value in dev.items():
            name = getattr(key, "value", key)
            if name == "Total":
                out["total"] += int(value)
            elif name in _KINDS:
                out[_KINDS[name]] += int(value)
    return out


def measure_case(case: dict[str, Any], model_dir: str, device: str) -> dict[str, Any]:
    """Train two steps of `case`; the second one's peak tensor memory and its split."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from backend.core.models import load_tokenizer
    from backend.data.templates import SftCollator
    from backend.methods import create_optimizer, load_trainable_model
    from backend.training.run import training_args

    cfg = case_config(case, model_dir)
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = load_trainable_model(cfg, device_map={"": 0} if device == "cuda" else None)
        tok = load_tokenizer(cfg.model)
        g = torch.Generator().manual_seed(0)
        rows = torch.randint(10, len(tok) - 1, (case["batch"] * 2, case["seq"]), generator=g).tolist()
        ds = Dataset.from_dict({"input_ids": rows, "labels": rows, "attention_mask": [[1] * case["seq"]] * len(rows)})
        state: dict[str, Any] = {}

        class Measure(TrainerCallback):
            """Step 1 warms up (optimizer states appear); step 2 runs inside the tracker."""

            def on_step_begin(self, args, st, control, model=None, **kw):
                if st.global_step != 1:
                    return
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    state["base"] = torch.cuda.memory_allocated()
                    return
                # The precise estimator's MemTracker: frozen parameters tracked without a gradient hook,
                # and the split read at the moment of the total peak.
                from backend.estimator.precise import _tracker

                mt = _tracker()
                opt = trainer.optimizer
                inner = getattr(opt, "optimizer", opt)
                mt.track_external(model, *([inner] if isinstance(inner, torch.optim.Optimizer) else []))
                mt.__enter__()
                state["mt"] = mt

            def on_step_end(self, args, st, control, **kw):
                if st.global_step != 2:
                    return
                if device == "cuda":
                    torch.cuda.synchronize()
                    measured["peak_bytes"] = torch.cuda.max_memory_allocated()
                    measured["split"] = {"before_step": state["base"]}
                    return
                mt = state.pop("mt")
                mt.__exit__(None, None, None)
                peak = _snapshot(mt, "peak")
                measured["peak_bytes"] = peak.pop("total")
                measured["split"] = peak  # what was live at the peak, by kind

        targs = training_args(cfg, Path(tmp), has_eval=False)
        targs.save_strategy = "no"
        trainer = SFTTrainer(model=model, args=targs, train_dataset=ds, processing_class=tok,
                             data_collator=SftCollator(tok.pad_token_id), callbacks=[Measure()],
                             optimizers=(create_optimizer(model, cfg), None))
        started = time.perf_counter()
        trainer.train()
        measured["seconds"] = round(time.perf_counter() - started, 1)
        if state.get("mt") is not None:
            state.pop("mt").__exit__(None, None, None)
        del trainer, model
        gc.collect()
    return measured


# ------------------------------------------------------------------------------- reporting

def case_error(r: dict[str, Any]) -> Optional[float]:
    m = (r.get("measured") or {}).get("peak_bytes")
    if r.get("status") != "ok" or not m:
        return None
    return (r["estimate"]["allocated_bytes"] - m) / m


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [abs(e) for e in (case_error(r) for r in results) if e is not None]
    return {"cases": len(results), "measured": len(errors),
            "failed": sum(1 for r in results if r.get("status") != "ok"),
            "median_abs_error": statistics.median(errors) if errors else None,
            "worst_abs_error": max(errors) if errors else None}


def _mib(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / MIB:.1f}"


def format_report(results: list[dict[str, Any]], device: str, command: str, machine: str) -> str:
    s = summarize(results)
    prefix = "CPU estimator" if device == "cpu" else "estimator"
    lines = [f"Command: `{command}` ({machine})", "",
             "MiB. measured = peak live tensor memory of training step 2 (after a warm-up step) "
             + ("by MemTracker, split into what was live at that peak (params, grads, optimizer states, "
                "activations, temporaries)" if device == "cpu" else "by torch.cuda.max_memory_allocated")
             + "; estimate = `estimate(cfg).allocated_bytes` and its terms (W weights, G gradients, O optimizer, "
               "A activations, L logits/LM head).", "",
             "| case | measured | params | grads | optim | acts | temps | estimate | W | G | O | A | L | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        m = r.get("measured") or {}
        sp = m.get("split") or {}
        t = (r.get("estimate") or {}).get("terms_bytes") or {}
        err = case_error(r)
        if r.get("status") != "ok":
            lines.append(f"| {r['id']} | {r.get('status')}: {r.get('error', '')[:80]} |" + " |" * 12)
            continue
        lines.append("| " + " | ".join([
            r["id"], _mib(m.get("peak_bytes")), _mib(sp.get("parameters")), _mib(sp.get("gradients")),
            _mib(sp.get("optimizer")), _mib(sp.get("activations")), _mib(sp.get("temporaries")),
            _mib(r["estimate"]["allocated_bytes"]), _mib(t.get("weights")), _mib(t.get("gradients")),
            _mib(t.get("optimizer")), _mib(t.get("activations")), _mib(t.get("logits")),
            f"{err:+.1%}" if err is not None else "-"]) + " |")
    lines.append("")
    if s["median_abs_error"] is not None:
        lines.append(f"{prefix} median abs error: {s['median_abs_error']:.1%}")
        lines.append("")
        lines.append(f"{prefix} worst abs error: {s['worst_abs_error']:.1%}")
    lines.append("")
    lines.append(f"{s['measured']} of {s['cases']} cases measured, {s['failed']} failed.")
    return "\n".join(lines) + "\n"


def _machine(device: str) -> str:
    import platform
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, " \
           f"{time.strftime('%Y-%m-%d %H:%M')}"


def merge(out: Path, device: str, dirs: list[Path]) -> None:
    """One results file from partial runs (say, the tiny model and the 135M model run side by side)."""
    runs = [json.loads((d / f"memory_truth_{device}.json").read_text()) for d in dirs]
    by_id = {c["id"]: c for run in runs for c in run["cases"]}
    order = [c["id"] for c in build_cases()]
    cases = [by_id[i] for i in order if i in by_id]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"memory_truth_{device}.json").write_text(json.dumps({
        "command": "; ".join(r["command"] for r in runs) + f"; python bench/memory_truth.py --merge "
                   + " ".join(str(d) for d in dirs),
        "machine": runs[0].get("machine", ""), "summary": summarize(cases), "cases": cases}, indent=1))


def reestimate(out: Path, device: str) -> int:
    """Recompute the estimate column of a finished run; the measurements stay as they were."""
    from backend.core.models import ensure_bundled

    path = out / f"memory_truth_{device}.json"
    data = json.loads(path.read_text())
    bundled = ensure_bundled()
    dirs = {"bundled": str(bundled), "tiny": str(REPO / ".test-cache" / "tiny-llama")}
    for r in data["cases"]:
        r["estimate"] = estimate_case(case_config(r, dirs[r["model"]]), device)
    data["summary"] = summarize(data["cases"])
    data["reestimated"] = time.strftime("%Y-%m-%d %H:%M")
    path.write_text(json.dumps(data, indent=1))
    command = data["command"] + f" (estimates recomputed with --reestimate, {data['reestimated']})"
    (out / f"memory_truth_{device}.md").write_text(format_report(data["cases"], device, command, data.get(
        "machine", _machine(device))))
    print(json.dumps(data["summary"]))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--models", default="tiny,bundled")
    ap.add_argument("--only", default=None, help="run only cases whose id contains this text")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--max-minutes", type=float, default=None, help="stop starting new cases after this long")
    ap.add_argument("--from-case", type=int, default=0, help="skip the first N selected cases (resume by hand)")
    ap.add_argument("--reestimate", action="store_true",
                    help="keep the measurements in OUT's JSON and recompute only the estimates (after an estimator fix)")
    ap.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                    help="join the results of runs made with other --out folders into OUT (in matrix order)")
    args = ap.parse_args(argv)
    if args.merge:
        merge(Path(args.out), args.device, [Path(d) for d in args.merge])
    if args.reestimate or args.merge:
        return reestimate(Path(args.out), args.device)

    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda needs a CUDA GPU and a CUDA build of torch; none is available here.", file=sys.stderr)
        return 2
    from backend.core.models import ensure_bundled
    from tests.tiny import make_tiny_model

    bundled = ensure_bundled()
    dirs = {"bundled": str(bundled), "tiny": str(make_tiny_model(REPO / ".test-cache" / "tiny-llama", bundled))}
    cases = [c for c in build_cases(args.models.split(",")) if not args.only or args.only in c["id"]]
    cases = cases[args.from_case:]
    command = "python bench/memory_truth.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    started = time.time()
    for case in cases:
        if args.max_minutes and time.time() - started > 60 * args.max_minutes:
            print(f"stopping after {args.max_minutes} minutes", file=sys.stderr)
            break
        cfg = case_config(case, dirs[case["model"]])
        record = dict(case, estimate=estimate_case(cfg, args.device))
        try:
            record.update(status="ok", measured=measure_case(case, dirs[case["model"]], args.device))
        except Exception as e:  # noqa: BLE001 - a broken case is recorded, the matrix goes on
            record.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        results.append(record)
        err = case_error(record)
        print(f"{case['id']}: {record['status']} measured={_mib((record.get('measured') or {}).get('peak_bytes'))} "
              f"estimate={_mib(record['estimate']['allocated_bytes'])} "
              f"error={'-' if err is None else f'{err:+.1%}'} {record.get('error', '')}", flush=True)
        (out / f"memory_truth_{args.device}.json").write_text(json.dumps(
            {"command": command, "machine": _machine(args.device), "summary": summarize(results), "cases": results},
            indent=1))
        (out / f"memory_truth_{args.device}.md").write_text(
            format_report(results, args.device, command, _machine(args.device)))
    print(json.dumps(summarize(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
