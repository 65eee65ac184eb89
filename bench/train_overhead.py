"""Studio overhead: steps/s of a run started through the runner (subprocess, events, stop checks,
status writes) vs a plain script calling the same TRL SFTTrainer on the same config.

    .venv/bin/python bench/train_overhead.py [--model DIR] [--steps 40] [--repeats 2]

Prints one JSON object. Steps/s come from the trainer's own train_runtime in both cases, so model
loading and Python start-up (the same for both) are left out; the number measures what the studio
adds per step. Repeats alternate the two so background load hits both alike; the best of each counts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_config(model: str, steps: int, data: str):
    from backend.core.config import RunConfig
    return RunConfig.model_validate({
        "model": model, "name": "bench",
        "method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"},
        "data": {"path": data, "validation_split": 0.0, "max_length": 128},
        "train": {"max_steps": steps, "batch_size": 4, "gradient_accumulation": 1, "logging_steps": 1,
                  "eval_steps": 10_000, "gradient_checkpointing": False, "precision": "fp32"},
        "early_stopping": {"patience": None}, "report_to": ["tensorboard"],
    })


def plain(config_path: str) -> None:
    """The script a person would write: same model, data, arguments and trainer, none of our callbacks."""
    from trl import SFTTrainer
    from backend.core.config import load_config
    from backend.methods import create_optimizer, load_trainable_model
    from backend.core.models import load_tokenizer
    from backend.data.templates import SftCollator
    from backend.training.run import build_datasets, training_args

    cfg = load_config(config_path)
    tok = load_tokenizer(cfg.model)
    model = load_trainable_model(cfg)
    train_ds, _ = build_datasets(cfg, tok)
    with tempfile.TemporaryDirectory() as out:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out) / "tb")
        trainer = SFTTrainer(model=model, args=training_args(cfg, Path(out), has_eval=False), train_dataset=train_ds,
                             processing_class=tok, data_collator=SftCollator(tok.pad_token_id),
                             optimizers=(create_optimizer(model, cfg), None))
        metrics = trainer.train().metrics
    print(json.dumps({"steps_per_s": cfg.train.max_steps / metrics["train_runtime"]}))


def studio(cfg, workspace: Path) -> float:
    from backend.runs import events as run_events
    from backend.runs import runner
    from backend.runs import rundir
    run_dir = runner.start_run(workspace, cfg)
    status = runner.wait_for_run(run_dir, timeout=3600)
    if status["state"] != "completed":
        raise SystemExit(f"studio run {status['state']}: {status.get('error')}")
    end = [e for e in rundir.read_events(run_dir)[0] if e.get("type") == run_events.TRAIN_END][-1]
    return cfg.train.max_steps / end["train_runtime"]


def callback_cost(n: int = 500) -> float:
    """Seconds our callbacks add per step (a log line, a stop check, a throttled status write), measured
    directly: a bound on the overhead that does not depend on how busy the machine is."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from backend.runs import rundir
    from backend.training.callbacks import EventsCallback, StopRequestCallback
    from backend.core.config import RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = rundir.create_run(Path(tmp), RunConfig())
        events, stop = EventsCallback(run_dir), StopRequestCallback(run_dir)
        args, state, control = TrainingArguments(output_dir=tmp, report_to="none"), TrainerState(), TrainerControl()
        state.max_steps = n
        events.on_train_begin(args, state, control)
        t0 = time.perf_counter()
        for step in range(1, n + 1):
            state.global_step = step
            stop.on_step_end(args, state, control)
            events.on_log(args, state, control, logs={"loss": 1.0, "learning_rate": 1e-4, "grad_norm": 1.0,
                                                      "epoch": step / n, "num_input_tokens_seen": step * 512})
        return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=str(REPO / ".test-cache" / "tiny-llama"))
    ap.add_argument("--data", default=str(REPO / "assets" / "samples" / "instructions.jsonl"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.plain:
        return plain(args.plain)
    from backend.core.config import save_config
    cfg = make_config(args.model, args.steps, args.data)
    studio_rates, plain_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "bench.yaml"
        save_config(cfg, cfg_path)
        for _ in range(args.repeats):
            studio_rates.append(studio(cfg, Path(tmp) / "ws"))
            out = subprocess.run([sys.executable, __file__, "--plain", str(cfg_path)], capture_output=True,
                                 text=True, cwd=REPO, check=True)
            plain_rates.append(json.loads(out.stdout.strip().splitlines()[-1])["steps_per_s"])
    best_studio, best_plain = max(studio_rates), max(plain_rates)
    per_step = callback_cost()
    print(json.dumps({
        "model": args.model, "steps": args.steps, "repeats": args.repeats,
        "studio_steps_per_s": round(best_studio, 4), "plain_steps_per_s": round(best_plain, 4),
        "overhead_percent": round(100 * (best_plain - best_studio) / best_plain, 2),
        "callback_seconds_per_step": per_step,
        "callback_overhead_percent_of_plain_step": round(100 * per_step * best_plain, 4),
        "studio_runs": [round(r, 4) for r in studio_rates], "plain_runs": [round(r, 4) for r in plain_rates],
        "device": "cuda" if _cuda() else "cpu", "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }))


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
