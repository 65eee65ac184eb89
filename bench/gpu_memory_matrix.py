"""Estimator accuracy on a CUDA GPU: real training steps against the estimate, cell by cell.

    python bench/gpu_memory_matrix.py [--out bench/results] [--only SUBSTRING] [--max-minutes M]
                                      [--precise] [--models bundled,half_b]

The matrix (issue 9): the bundled 135M model and a ~0.5B Llama built from a config with random
weights (no hub needed), x methods full / lora / qlora / dora / prefix_tuning, x AdamW and 8-bit
AdamW, x gradient checkpointing on/off, x batch 1 and 8, x sequence 512 and 2048, all bf16.

Each cell runs in its own child process (an out-of-memory error or a fragmented allocator cannot
leak into the next cell) through the studio's own training path: load_trainable_model, TRL's
SFTTrainer with backend.training.run.training_args, two optimizer steps on full-length rows. It records
torch.cuda.max_memory_allocated after load, after the first forward, after the first optimizer
step and after the second (steady-state) step, plus max_memory_reserved, next to the closed-form
estimate of the same config. Results are appended to gpu_matrix.json as each cell finishes, so a
run cut short resumes where it stopped; gpu_matrix.md is rewritten from the JSON each time.

Without a CUDA GPU the script says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODELS = ("bundled", "half_b")
METHODS = ("full", "lora", "qlora", "dora", "prefix_tuning")
OPTIMIZERS = ("adamw_torch", "adamw_8bit")
CHECKPOINTING = (False, True)
BATCHES = (1, 8)
SEQS = (512, 2048)
GIB = 2**30

# ~0.5B parameters with the bundled tokenizer's 49,152-token vocabulary: 20 blocks x 25.2M + 75M embeddings.
HALF_B = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=20, num_attention_heads=12,
              num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=True)


# ------------------------------------------------------------------------------- the matrix

def build_cells(models: Iterable[str] = MODELS, methods: Iterable[str] = METHODS,
                optimizers: Iterable[str] = OPTIMIZERS, checkpointing: Iterable[bool] = CHECKPOINTING,
                batches: Iterable[int] = BATCHES, seqs: Iterable[int] = SEQS) -> list[dict[str, Any]]:
    """Every combination, each with a stable id used to resume and to join results."""
    cells = []
    for model, method, opt, ckpt, batch, seq in itertools.product(models, methods, optimizers, checkpointing,
                                                                  batches, seqs):
        cell = {"model": model, "method": method, "optimizer": opt, "checkpointing": ckpt, "batch": batch, "seq": seq}
        cell["id"] = cell_id(cell)
        cells.append(cell)
    return cells


def cell_id(cell: dict[str, Any]) -> str:
    return (f"{cell['model']}/{cell['method']}/{cell['optimizer']}/ckpt-{'on' if cell['checkpointing'] else 'off'}"
            f"/b{cell['batch']}/s{cell['seq']}")


def cell_config(cell: dict[str, Any], model_dir: str, data_path: str):
    """The RunConfig a person would write for this cell (bf16, no accumulation, two steps)."""
    from backend.core.config import RunConfig

    method: dict[str, Any] = {"name": cell["method"]}
    if cell["method"] in ("lora", "qlora", "dora"):
        method.update(r=16, alpha=32, dropout=0.05, target_modules="all-linear")
    return RunConfig.model_validate({
        "model": model_dir, "name": "gpu-matrix", "method": method,
        "data": {"path": data_path, "validation_split": 0.0, "max_length": cell["seq"]},
        "train": {"max_steps": 2, "batch_size": cell["batch"], "gradient_accumulation": 1, "precision": "bf16",
                  "optimizer": cell["optimizer"], "gradient_checkpointing": cell["checkpointing"],
                  "logging_steps": 1, "eval_steps": 10_000, "warmup_ratio": 0.0},
        "early_stopping": {"patience": None}, "report_to": [],
    })


def estimate_cell(cfg: Any) -> dict[str, Any]:
    """The closed form's figures for a cell, split into the phases the GPU run measures."""
    from backend.estimator import estimate

    est = estimate(cfg, gpus=[])
    t = est.terms_bytes
    return {
        "terms_bytes": dict(t), "allocated_bytes": est.allocated_bytes, "total_bytes": est.total_bytes,
        "reserved_bytes": est.total_bytes - _cuda_context(), "phases": dict(est.phases),
        # Optimizer states do not exist yet during the first forward.
        "after_load_bytes": t["weights"], "after_forward_bytes": t["weights"] + t["activations"] + t["logits"],
    }


def _cuda_context() -> int:
    from backend.estimator import terms
    return terms.CUDA_CONTEXT_BYTES


# ------------------------------------------------------------------------------- reporting

def cell_error(result: dict[str, Any]) -> Optional[float]:
    """(estimated - measured) / measured on the steady-state peak; None for OOM or failed cells."""
    m = result.get("measured") or {}
    e = result.get("estimate") or {}
    if result.get("status") != "ok" or not m.get("peak_allocated_bytes"):
        return None
    return (e["allocated_bytes"] - m["peak_allocated_bytes"]) / m["peak_allocated_bytes"]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [abs(x) for x in (cell_error(r) for r in results) if x is not None]
    return {
        "cells": len(results), "measured": len(errors),
        "oom": sum(1 for r in results if r.get("status") == "oom"),
        "failed": sum(1 for r in results if r.get("status") == "error"),
        "median_abs_error": statistics.median(errors) if errors else None,
        "worst_abs_error": max(errors) if errors else None,
    }


def _gib(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _abs_pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_report(results: list[dict[str, Any]], device: dict[str, Any], command: str) -> str:
    """Markdown: device, summary lines in the contract's form, then one row per cell."""
    s = summarize(results)
    lines = [
        f"Device: {device.get('name', '?')} ({_gib(device.get('total_bytes'))} GiB), driver {device.get('driver', '?')},"
        f" torch {device.get('torch', '?')}, CUDA {device.get('cuda', '?')}, transformers {device.get('transformers', '?')},"
        f" TRL {device.get('trl', '?')}, PEFT {device.get('peft', '?')}, bitsandbytes {device.get('bitsandbytes', '?')};"
        f" {device.get('date', '?')}",
        f"Command: `{command}`",
        "",
        f"Cells: {s['cells']} ({s['measured']} measured, {s['oom']} out of memory, {s['failed']} failed)",
        "",
        f"estimator median abs error: {_abs_pct(s['median_abs_error'])}%",
        f"estimator worst abs error: {_abs_pct(s['worst_abs_error'])}%",
        "",
        "All memory in GiB. measured = torch.cuda.max_memory_allocated (cumulative) after each phase; "
        "error = (estimated - measured) / measured on the steady-state peak.",
        "",
        "| cell | load meas/est | 1st forward meas/est | 1st step meas | peak meas | peak est | precise | "
        "reserved meas/est | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        m, e = r.get("measured") or {}, r.get("estimate") or {}
        precise = (r.get("precise") or {}).get("peak_bytes")
        if r.get("status") == "oom":
            lines.append(f"| {r['id']} | OOM | | | | {_gib(e.get('allocated_bytes'))} | {_gib(precise)} | | OOM |")
            continue
        if r.get("status") != "ok":
            lines.append(f"| {r['id']} | failed: {str(r.get('error', '?'))[:80]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['id']} | {_gib(m.get('after_load_bytes'))} / {_gib(e.get('after_load_bytes'))}"
            f" | {_gib(m.get('after_forward_bytes'))} / {_gib(e.get('after_forward_bytes'))}"
            f" | {_gib(m.get('after_first_step_bytes'))} | {_gib(m.get('peak_allocated_bytes'))}"
            f" | {_gib(e.get('allocated_bytes'))} | {_gib(precise)}"
            f" | {_gib(m.get('peak_reserved_bytes'))} / {_gib(e.get('reserved_bytes'))} | {_pct(cell_error(r))} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- one cell (child)

def _load_model(cfg: Any):
    """The studio's own loader, exactly as training calls it."""
    from backend.methods import load_trainable_model

    return load_trainable_model(cfg, device_map={"": 0})


def run_cell(cell: dict[str, Any], model_dir: str) -> dict[str, Any]:
    """Measure one cell on GPU 0 (runs in a child process)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from backend.methods import create_optimizer
    from backend.core.models import load_tokenizer
    from backend.data.templates import SftCollator
    from backend.training.run import training_args

    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cell_config(cell, model_dir, str(Path(tmp) / "unused.jsonl"))
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        peak = lambda: torch.cuda.max_memory_allocated() - base  # noqa: E731
        try:
            model = _load_model(cfg)
            measured["after_load_bytes"] = peak()
            tok = load_tokenizer(cfg.model)
            g = torch.Generator().manual_seed(0)
            rows = torch.randint(10, len(tok) - 1, (cell["batch"] * 2, cell["seq"]), generator=g).tolist()
            ds = Dataset.from_dict({"input_ids": rows, "labels": rows, "attention_mask": [[1] * cell["seq"]] * len(rows)})

            def on_forward(module, args, output):
                measured.setdefault("after_forward_bytes", peak())

            hook = model.register_forward_hook(on_forward)

            class Probe(TrainerCallback):
                def on_optimizer_step(self, args, state, control, **kw):
                    measured.setdefault("after_first_step_bytes", peak())

            targs = training_args(cfg, Path(tmp), has_eval=False)
            targs.save_strategy = "no"
            trainer = SFTTrainer(model=model, args=targs, train_dataset=ds, processing_class=tok,
                                 data_collator=SftCollator(tok.pad_token_id), callbacks=[Probe()],
                                 optimizers=(create_optimizer(model, cfg), None))
            trainer.train()
            hook.remove()
            measured["peak_allocated_bytes"] = peak()
            measured["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
            status, error = "ok", None
        except torch.cuda.OutOfMemoryError as e:
            status, error = "oom", str(e).splitlines()[0][:300]
        except Exception as e:  # noqa: BLE001 - a broken cell is recorded, the matrix goes on
            status, error = "error", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    return {"status": status, "error": error, "measured": measured}


# ------------------------------------------------------------------------------- driver

def make_half_b(out_dir: Path, tokenizer_dir: Path) -> Path:
    """The ~0.5B random-weight Llama, saved once in bf16 with the bundled tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out_dir / "model.safetensors").exists():
        return out_dir
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **HALF_B)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def device_info() -> dict[str, Any]:
    import importlib.metadata as md
    import torch

    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": v("transformers"),
                            "trl": v("trl"), "peft": v("peft"), "bitsandbytes": v("bitsandbytes"),
                            "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, total_bytes=p.total_memory)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            info["driver"] = "?"
    return info


def _child(cell_json: str, model_dir: str) -> None:
    cell = json.loads(cell_json)
    out = run_cell(cell, model_dir)
    print("RESULT " + json.dumps(out), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--only", default=None, help="run only cells whose id contains this text")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop starting new cells after this long")
    ap.add_argument("--precise", action="store_true", help="also trace each cell on fake tensors (slow on CPU)")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        _child(args.cell, args.model_dir)
        return 0

    import torch
    if not torch.cuda.is_available():
        print("No CUDA GPU is available: the memory matrix measures torch.cuda.max_memory_allocated and needs one. "
              "Run `python bench/gpu_memory_matrix.py` on a machine with an NVIDIA GPU and a CUDA build of torch.",
              file=sys.stderr)
        return 2

    from backend.core.models import ensure_bundled
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundled = ensure_bundled()
    dirs = {"bundled": str(bundled)}
    if "half_b" in args.models:
        dirs["half_b"] = str(make_half_b(REPO / ".test-cache" / "llama-0.5b-random", bundled))
    json_path = out / "gpu_matrix.json"
    done = {r["id"]: r for r in json.loads(json_path.read_text())["cells"]} if json_path.exists() else {}
    device = device_info()
    command = "python bench/gpu_memory_matrix.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cells = [c for c in build_cells(models=args.models.split(",")) if not args.only or args.only in c["id"]]
    started = time.time()
    for cell in cells:
        if cell["id"] in done and done[cell["id"]].get("status") in ("ok", "oom"):
            continue
        if args.max_minutes and time.time() - started > 60 * args.max_minutes:
            print(f"stopping after {args.max_minutes} minutes; run again to resume", file=sys.stderr)
            break
        cfg = cell_config(cell, dirs[cell["model"]], "unused.jsonl")
        record = dict(cell, estimate=estimate_cell(cfg))
        if args.precise:
            from backend.estimator.precise import precise_estimate
            try:
                record["precise"] = precise_estimate(cfg)
            except Exception as e:  # noqa: BLE001
                record["precise"] = {"error": f"{type(e).__name__}: {e}"}
        proc = subprocess.run([sys.executable, __file__, "--cell", json.dumps(cell), "--model-dir", dirs[cell["model"]]],
                              capture_output=True, text=True, cwd=REPO)
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT ")), None)
        if line:
            record.update(json.loads(line[len("RESULT "):]))
        else:
            record.update(status="error", error=(proc.stderr.strip().splitlines() or ["child died"])[-1][:300])
        done[cell["id"]] = record
        print(f"{cell['id']}: {record['status']} error={_pct(cell_error(record))}", flush=True)
        ordered = [done[c["id"]] for c in build_cells(models=args.models.split(",")) if c["id"] in done]
        json_path.write_text(json.dumps({"device": device, "command": command, "summary": summarize(ordered),
                                         "cells": ordered}, indent=1))
        (out / "gpu_matrix.md").write_text(format_report(ordered, device, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
