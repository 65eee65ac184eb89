"""What some methods need beyond building the model: training callbacks and their own save format.

A MethodSpec names these in `extra`: "callbacks" -> fn(model, cfg, run_dir) -> list of
TrainerCallbacks (AdaLoRA's rank budget, gradual unfreezing, Fish Mask), and a model may carry
`ftstudio_save(out_dir)` when PEFT's or transformers' save would not write a reloadable result
(bottleneck adapters).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from backend.data.records import load_for_training
from backend.methods.registry import get_method


def method_callbacks(model: Any, cfg: Any, run_dir: Path) -> list:
    """The method's own TrainerCallbacks (empty for most methods)."""
    factory = get_method(cfg.method.name).extra.get("callbacks")
    return list(factory(model, cfg, Path(run_dir))) if factory else []


def save_trained(trainer: Any, out_dir: str) -> None:
    """Save the trained model or adapter in the method's reloadable format."""
    model = trainer.model
    custom = getattr(model, "ftstudio_save", None)
    if custom is None:
        trainer.save_model(out_dir)
        return
    custom(out_dir)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(out_dir)


def is_meta(model: Any) -> bool:
    return any(p.is_meta for p in model.parameters())


def total_training_steps(cfg: Any) -> int:
    """Optimizer steps the run will take: max_steps, or epochs over the training rows.

    Methods with a schedule of their own (AdaLoRA's rank budget) need it before the trainer exists.
    """
    t = cfg.train
    if t.max_steps:
        return int(t.max_steps)

    import tempfile
    from pathlib import Path

    # Only the count is needed: the rows go to a file on disk (removed at once), not into memory.
    _, train_rows, _ = load_for_training(cfg.data, t.seed, spill=Path(tempfile.gettempdir()) / "ftstudio-rows")
    per_step = t.batch_size * t.gradient_accumulation * cfg.distributed.gpus * cfg.distributed.nodes
    return max(1, math.ceil(max(len(train_rows), 1) / per_step) * math.ceil(t.epochs))
