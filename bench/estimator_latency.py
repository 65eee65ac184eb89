"""How fast the VRAM estimate follows an edit in the Method tab. Prints one JSON object.

    python bench/estimator_latency.py [--model smollm2-135m-instruct] [--repeats 200]

A model never seen is timed twice in a fresh process and workspace: with nothing imported
(first_estimate_new_model_cold) and after the studio's start-up preload of the estimator's libraries
(first_estimate_new_model_after_preload: what a user who picks a new model in the Method tab waits).
The first call for a model builds its meta skeleton (the "first inspection") and stores its counts on
disk, so a new process pays only imports and a JSON read (first_estimate_new_process_cached_s); every later edit --
batch size, sequence length, optimizer, precision, checkpointing, LoRA alpha -- should cost only
arithmetic. Edits that change a LoRA's rank or target modules are counted from the probe skeleton's
linear-layer shapes (no PEFT) and are timed separately. Times are wall-clock per estimate() call.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(1000 * statistics.median(values), 3), "p95": round(1000 * _quantile(values, 0.95), 3),
            "max": round(1000 * max(values), 3), "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()

    from backend.core.config import RunConfig
    from backend.estimator import estimate
    from backend.core.models import DEFAULT_MODEL, ensure_bundled

    model = args.model or str(ensure_bundled(DEFAULT_MODEL))
    base = RunConfig.model_validate({"model": model, "method": {"name": "lora"}})
    t0 = time.perf_counter()
    estimate(base, gpus=[])
    first = time.perf_counter() - t0

    edits = [
        ("train", {"batch_size": b}) for b in (1, 2, 4, 8, 16)
    ] + [("data", {"max_length": s}) for s in (256, 512, 1024, 2048)] + [
        ("train", {"optimizer": o}) for o in ("adamw_torch", "adamw_8bit", "paged_adamw_8bit")
    ] + [("train", {"precision": p}) for p in ("bf16", "fp16", "fp32")] + [
        ("train", {"gradient_checkpointing": g}) for g in (True, False)
    ] + [("method", {"alpha": a}) for a in (8.0, 16.0, 32.0)]
    updates = []
    for i in range(args.repeats):
        section, change = edits[i % len(edits)]
        cfg = base.model_copy(update={section: getattr(base, section).model_copy(update=change)})
        t0 = time.perf_counter()
        estimate(cfg, gpus=[])
        updates.append(time.perf_counter() - t0)

    structural = []
    for r in (4, 8, 32, 64, 12, 24):
        cfg = base.model_copy(update={"method": base.method.model_copy(update={"r": r})})
        t0 = time.perf_counter()
        estimate(cfg, gpus=[])
        structural.append(time.perf_counter() - t0)
    targets = []  # a target change is counted from the probe skeleton's linear shapes (no PEFT)
    for t in (["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"], ["down_proj"],
              ["gate_proj", "up_proj"], "all-linear", ["k_proj", "o_proj", "down_proj"]):
        for r in (8, 16, 48):
            cfg = base.model_copy(update={"method": base.method.model_copy(update={"r": r, "target_modules": t})})
            t0 = time.perf_counter()
            estimate(cfg, gpus=[])
            targets.append(time.perf_counter() - t0)
    edits_all = updates + structural + targets

    # A new studio process: imports, config, and the skeleton read from the disk cache.
    import subprocess
    code = ("import time; t=time.perf_counter(); from backend.core.config import RunConfig; "
            "from backend.estimator import estimate; "
            f"estimate(RunConfig.model_validate({{'model': {model!r}, 'method': {{'name': 'lora'}}}}), gpus=[]); "
            "print(time.perf_counter()-t)")
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    fresh = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 cwd=str(Path(__file__).resolve().parents[1])).stdout.split()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # On a shared machine the wall time waits for a CPU; the CPU seconds are what the process itself needed.
    fresh_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    # A model never seen (no skeleton on disk, in a fresh workspace): with nothing imported yet, and after
    # the studio's start-up preload (`skeleton.preload`, run in the background when the studio starts).
    import tempfile
    cold_code = ("import json, time; w=time.perf_counter(); c=time.process_time(); import sys; "
                 "from backend.core.config import RunConfig; from backend.estimator import estimate; "
                 "from backend.estimator.skeleton import preload; "
                 "sys.argv[1] == 'preload' and preload(); w1=time.perf_counter(); c1=time.process_time(); "
                 f"estimate(RunConfig.model_validate({{'model': {model!r}, 'method': {{'name': 'lora'}}}}), gpus=[]); "
                 "print(json.dumps({'before_s': w1-w, 'estimate_s': time.perf_counter()-w1, "
                 "'estimate_cpu_s': time.process_time()-c1}))")
    cold = {}
    for mode in ("cold", "preload"):
        with tempfile.TemporaryDirectory() as ws:
            env = {**os.environ, "FTSTUDIO_WORKSPACE": ws}
            out = subprocess.run([sys.executable, "-c", cold_code, mode], capture_output=True, text=True, check=True,
                                 cwd=str(Path(__file__).resolve().parents[1]), env=env).stdout.split("\n")
            cold[mode] = {k: round(v, 3) for k, v in json.loads(next(x for x in out if x.startswith("{"))).items()}

    print(json.dumps({
        "first_estimate_new_model_cold": cold["cold"], "first_estimate_new_model_after_preload": cold["preload"],
        "model": model, "first_inspection_s": round(first, 3), "update_ms": _ms(updates),
        "rank_change_first_time_ms": _ms(structural), "target_change_first_time_ms": _ms(targets),
        "all_edits_ms": _ms(edits_all), "first_estimate_new_process_cached_s": round(fresh, 3),
        "first_estimate_new_process_cached_cpu_s": round(fresh_cpu, 3), "load_average": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }))


if __name__ == "__main__":
    main()
