"""Training speed of the speed switches: real tokens/s and peak memory, per model and variant.

    python bench/gpu_speed.py                       # the GPU run: bundled 135M + a ~1.5B Llama, 4 variants
    python bench/gpu_speed.py --dry-run             # CPU, tiny random Llama, a few steps: seconds
    python bench/gpu_speed.py --device cpu --models bundled --variants plain,packing --seq 512 --steps 6

Variants (each trains through the studio's own path: load_trainable_model, build_sft_dataset,
training_args, make_collator and TRL's SFTTrainer, so what is measured is what a run does):

    plain                  no packing, sdpa, Liger off
    packing                rows packed (position ids restart per row), sdpa
    liger                  Liger's RMSNorm/RoPE/SwiGLU kernels, no packing
    packing+liger+flash    packing, Liger and FlashAttention-2 (padding-free batches)

Every variant runs in a child process of its own (Liger patches transformers' modules in place), bf16,
LoRA r=16 on all linear layers, batch 4 of at most --seq tokens (default 2048) on rows of varied length.
"Real tokens" are the non-padding tokens the Trainer counts (`num_input_tokens_seen`), timed from the
end of the warm-up steps to the last step. Peak memory is torch.cuda.max_memory_allocated (on a CPU:
the process's peak RSS). A variant this machine cannot run (Liger or flash-attn missing, no CUDA) is a
row with the reason from backend.core.kernels instead of a number.

Writes OUT/gpu_speed.json and OUT/gpu_speed.md (a markdown table for bench/RESULTS.md); OUT defaults to
bench/results. The GPU run is sized to finish in under 8 minutes on an H100/H200.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.peak_memory import resident_bytes  # noqa: E402 - after the path it needs
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"packing": False, "liger_kernel": "off", "attention": "sdpa"},
    "packing": {"packing": True, "liger_kernel": "off", "attention": "sdpa"},
    "liger": {"packing": False, "liger_kernel": "on", "attention": "sdpa"},
    "packing+liger+flash": {"packing": True, "liger_kernel": "on", "attention": "flash_attention_2"},
}
# A Llama-shaped model of about 1.5B parameters (with the bundled tokenizer's 49,152-token vocabulary):
# 22 blocks of hidden 2048, MLP 8192, 32 heads over 8 KV heads, untied head: 1.54B.
LLAMA_1_5B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=22, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
WORDS = ("the model reads every token of the prompt and learns to write only the answer while masked "
         "positions carry minus one hundred in the label array so packing must keep rows apart").split()


def make_data(path: Path, rows: int, seq: int, seed: int = 0) -> None:
    """Prompt/completion rows from a few to ~60% of `seq` words long (mean about a fifth), so padding
    wastes most of a plain batch and packing has room to fill."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(rows):
            n = min(int(rng.expovariate(1 / max(seq / 5, 8))) + 8, int(seq * 0.6))
            prompt = " ".join(rng.choice(WORDS) for _ in range(max(4, n // 4)))
            answer = " ".join(rng.choice(WORDS) for _ in range(max(4, n - n // 4)))
            fh.write(json.dumps({"prompt": prompt, "completion": answer}) + "\n")


def make_model(out: Path, shape: dict[str, Any], device: str) -> Path:
    """A random-weight Llama of `shape` with the bundled model's tokenizer, saved in bf16."""
    if (out / "model.safetensors.index.json").exists() or (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from backend.core.models import ensure_bundled

    tok = AutoTokenizer.from_pretrained(str(ensure_bundled()))
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device(device if device == "cuda" else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def run_config(model: str, data: Path, variant: str, args: argparse.Namespace):
    from backend.core.config import RunConfig

    v = VARIANTS[variant]
    return RunConfig.model_validate({
        "model": model, "name": f"speed-{variant}",
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"path": str(data), "validation_split": 0.0, "max_length": args.seq, "packing": v["packing"]},
        "train": {"max_steps": args.steps, "batch_size": args.batch, "gradient_accumulation": 1,
                  "logging_steps": 1, "eval_steps": 100_000, "save_steps": 100_000, "learning_rate": 1e-4,
                  "precision": "bf16", "gradient_checkpointing": args.checkpointing,
                  "liger_kernel": v["liger_kernel"], "attention": v["attention"], "torch_compile": "off"},
        "early_stopping": {"patience": None}, "report_to": ["tensorboard"],
    })


def _peak_rss() -> int:
    return resident_bytes("VmHWM")


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (model, variant) in this process; the numbers, or the reason it cannot run here."""
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from backend.core import kernels
    from backend.core.errors import UserError
    from backend.core.models import load_tokenizer
    from backend.methods import create_optimizer, load_trainable_model
    from backend.training.run import build_datasets, effective_config, make_collator, training_args

    args = argparse.Namespace(**spec["args"])
    # As the training subprocess does: this machine's precision (a CPU trains bf16 configs in fp32).
    cfg = effective_config(run_config(spec["model"], Path(spec["data"]), spec["variant"], args))
    out: dict[str, Any] = {"model": spec["label"], "variant": spec["variant"]}
    problems = kernels.kernel_problems(cfg)
    if problems:
        return {**out, "status": "not available", "reason": " ".join(problems.values())}
    cuda = torch.cuda.is_available()
    tok = load_tokenizer(cfg.model)
    model = load_trainable_model(cfg)
    if cuda:
        model = model.to("cuda")
    train_ds, _ = build_datasets(cfg, tok)
    warmup = min(args.warmup, max(args.steps - 1, 0))

    class Counting:
        """The collator, counting each batch's real tokens: the rows (or packs) it is given, before any
        padding. The Trainer's own count cannot tell a pad from a real token when the pad token is also
        the end-of-turn token (SmolLM2's), and packed batches carry no attention mask to count by."""
        def __init__(self, inner):
            self.inner, self.per_batch = inner, []

        def __call__(self, features):
            self.per_batch.append(sum(len(f["input_ids"]) for f in features))
            return self.inner(features)

    class Clock(TrainerCallback):
        """Time from the end of the warm-up steps to the last step."""
        def __init__(self):
            self.start = self.end = None

        def on_step_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if state.global_step == warmup:
                self.start = now
            self.end = now

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(tmp) / "tb")
        try:
            collator = Counting(make_collator(cfg.data, model, tok))
            trainer = SFTTrainer(model=model, args=training_args(cfg, Path(tmp), has_eval=False),
                                 train_dataset=train_ds, processing_class=tok,
                                 data_collator=collator, callbacks=[clock],
                                 optimizers=(create_optimizer(model, cfg), None))
        except UserError as e:
            return {**out, "status": "not available", "reason": str(e)}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    steps = args.steps - warmup
    # Step k trains batch k (gradient accumulation 1); the DataLoader may already have built the next one.
    tokens = sum(collator.per_batch[warmup:args.steps])
    seconds = (clock.end - clock.start) if clock.start is not None else None
    if warmup == 0:  # no warm-up step to time from: the whole run counts
        seconds = trainer.state.log_history[-1].get("train_runtime")
    impl = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    return {**out, "status": "ok", "timed_steps": steps, "seconds": seconds, "real_tokens": tokens,
            "tokens_per_s": (tokens / seconds) if seconds else None,
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else _peak_rss(),
            "peak_kind": "cuda max_memory_allocated" if cuda else "process peak RSS",
            "attention": impl, "packed_rows": len(train_ds),
            "kernels": [c.to_json() for c in kernels.select_kernels(cfg)]}


def _child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"model": spec["label"], "variant": spec["variant"], "status": "timeout",
                "reason": f"did not finish in {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"model": spec["label"], "variant": spec["variant"], "status": "failed",
            "reason": " | ".join(tail) or f"exit code {proc.returncode}"}


def _fmt_bytes(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | variant | real tokens/s | vs plain | peak memory | timed steps | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    plain = {r["model"]: r.get("tokens_per_s") for r in results if r["variant"] == "plain"}
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"| {r['model']} | {r['variant']} | - | - | - | - | {r.get('status')}: {r.get('reason', '')} |")
            continue
        tps, base = r.get("tokens_per_s"), plain.get(r["model"])
        ratio = f"{tps / base:.2f}x" if tps and base else "-"
        lines.append(f"| {r['model']} | {r['variant']} | {tps:,.0f} | {ratio} | {_fmt_bytes(r.get('peak_bytes'))} "
                     f"({r.get('peak_kind')}) | {r.get('timed_steps')} | attention {r.get('attention') or '?'}; "
                     f"{r.get('packed_rows')} sequences |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    from backend.core import kernels
    info["kernel_packages"] = sorted(kernels.installed_packages())
    return info


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny random model, 2 steps: checks the script")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--models", default="bundled,llama-1.5b", help="comma list: bundled, llama-1.5b, tiny")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                   help="train without gradient checkpointing (the studio's default is on)")
    p.add_argument("--timeout", type=float, default=150, help="seconds per variant")
    p.add_argument("--budget", type=float, default=450,
                   help="seconds for the whole run; variants left when it is spent are listed as skipped")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--in-process", action="store_true",
                   help="run every variant in this process (the dry run does; fine without Liger variants)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure_one(json.loads(a.one))))
        return 0
    if a.dry_run:
        a.device, a.models, a.seq, a.batch, a.steps, a.warmup = "cpu", "tiny", 64, 2, 3, 1
        a.budget = float("inf")  # seconds on an idle machine; a loaded one must not turn it into skips
    if a.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("No CUDA GPU here: run with --device cpu, or --dry-run to check the script.", file=sys.stderr)
            return 2
    started = time.monotonic()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-speed-"))
    data = work / "rows.jsonl"
    make_data(data, rows=max(64, a.steps * a.batch * 6), seq=a.seq)
    models: list[tuple[str, str]] = []
    for name in a.models.split(","):
        if name == "bundled":
            models.append(("SmolLM2-135M (bundled)", "smollm2-135m-instruct"))
        elif name == "llama-1.5b":
            models.append(("Llama-shaped 1.5B (random)", str(make_model(work / "llama-1.5b", LLAMA_1_5B, a.device))))
        elif name == "tiny":
            models.append(("tiny Llama (random)", str(make_model(work / "tiny", TINY, "cpu"))))
        else:
            p.error(f"unknown model {name!r}; use bundled, llama-1.5b or tiny")
    results = []
    spec_args = {"seq": a.seq, "batch": a.batch, "steps": a.steps, "warmup": a.warmup, "checkpointing": a.checkpointing}
    for label, ref in models:
        for variant in a.variants.split(","):
            if variant not in VARIANTS:
                p.error(f"unknown variant {variant!r}; use {', '.join(VARIANTS)}")
            spec = {"model": ref, "label": label, "variant": variant, "data": str(data), "args": spec_args}
            left = a.budget - (time.monotonic() - started)
            from backend.core.kernels import kernel_problems
            problems = kernel_problems(run_config(ref, data, variant, a))
            if problems:  # said at once, without a process or any of the time budget
                r = {"model": label, "variant": variant, "status": "not available", "reason": " ".join(problems.values())}
            elif left < 20:
                r = {"model": label, "variant": variant, "status": "skipped", "reason": "the time budget was spent"}
            else:
                # The dry run stays in this process (seconds, not a fresh import per variant); a real run
                # gives each variant its own process, since Liger patches transformers' modules in place.
                r = measure_one(spec) if a.dry_run or a.in_process else _child(spec, min(a.timeout, left))
            print(json.dumps({k: r.get(k) for k in ("model", "variant", "status", "tokens_per_s", "peak_bytes",
                                                     "reason")}), flush=True)
            results.append(r)
    record = {"machine": machine(), "settings": {**spec_args, "device": a.device, "method": "lora r=16 all-linear",
                                                 "precision": "bf16"},
              "results": results, "seconds": round(time.monotonic() - started, 1),
              "command": "python bench/gpu_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    name = "gpu_speed_dry_run" if a.dry_run else ("gpu_speed" if a.device == "cuda" else "cpu_speed")
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    head = (f"{record['machine'].get('gpu', 'CPU: ' + str(record['machine']['cpu']))}, seq {a.seq}, batch {a.batch}, "
            f"{a.steps} steps ({a.warmup} warm-up), bf16 LoRA r=16 all-linear, gradient checkpointing "
            f"{'on' if a.checkpointing else 'off'}; `{record['command']}` ({record['seconds']:.0f} s)")
    (out / f"{name}.md").write_text(head + "\n\n" + table(results) + "\n")
    print(json.dumps({"wrote": str(out / f"{name}.md"), "seconds": record["seconds"]}))
    return 0 if all(r.get("status") in ("ok", "not available", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
