"""The event types of a run's events.jsonl, shared by the writers (trainer callbacks, runner) and the
readers (charts, CLI progress bar).

One line of events.jsonl is one JSON object with a "type" (one of EVENT_TYPES) and a "time" (epoch
seconds, added by `rundir.append_event`). The TypedDicts below say which fields each type carries;
they describe the file, they do not change it. Standard library only: this sits in the runs layer.
"""
from __future__ import annotations

from typing import Any, Optional, TypedDict

TRAIN_BEGIN = "train_begin"          # the Trainer started (or resumed) its loop
TRAIN = "train"                      # one training log: loss, lr, grad norm, throughput
EVAL = "eval"                        # one evaluation, with the best validation loss so far
EARLY_STOP = "early_stop"            # early stopping ended training
CHECKPOINT = "checkpoint"            # a checkpoint was saved
TRAIN_END = "train_end"              # the Trainer's closing summary (train_loss, runtime, ...)
END = "end"                          # the run ended normally (completed or stopped)
ERROR = "error"                      # the run ended with an error (failed, out of memory, stopped by signal)
RESUME = "resume"                    # the trainer resumed from a checkpoint
RESUME_FALLBACK = "resume_fallback"  # the runner passed over broken checkpoints to resume from an older one
ALIGNMENT = "alignment"              # alignment trainers' metrics (reward margins, accuracies, ...)
FISH_MASK = "fish_mask"              # the Fish Mask method chose its trainable weights
UNFREEZE = "unfreeze"                # gradual unfreezing made one more layer group trainable

def check_event_type(event: Any) -> str:
    """The event's type; ValueError when it has none or one not in EVENT_TYPES (a typo in a writer)."""
    kind = event.get("type") if isinstance(event, dict) else None
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}; expected one of {sorted(EVENT_TYPES)}")
    return kind


class Event(TypedDict):
    """What every line has. `time` is added by rundir.append_event."""
    type: str
    time: float


class TrainBeginEvent(Event):
    step: int
    total_steps: int
    epochs: float


class _TrainEventFields(Event):
    step: int
    epoch: Optional[float]
    loss: Optional[float]
    lr: Optional[float]
    grad_norm: Optional[float]
    tokens_per_s: Optional[float]
    tokens_seen: Optional[int]


class TrainEvent(_TrainEventFields, total=False):
    # on CUDA only
    gpu_mem_allocated: int
    gpu_mem_peak: int
    gpu_mem_used: int
    # when the trainer logs them
    mean_token_accuracy: float
    entropy: float


class EvalEvent(Event):
    """Also carries the evaluation's other metrics under their eval_* names (eval_runtime, ...)."""
    step: int
    epoch: Optional[float]
    val_loss: Optional[float]
    best_val_loss: Optional[float]
    best_step: Optional[int]


class EarlyStopEvent(Event):
    step: int
    best_step: Optional[int]
    best_val_loss: Optional[float]
    best_checkpoint: Optional[str]
    patience: int


class CheckpointEvent(Event):
    step: int
    path: str
    best_checkpoint: Optional[str]


class TrainEndEvent(Event):
    """Plus the Trainer's closing logs as they are (train_loss, train_runtime, train_samples_per_second, ...)."""
    step: int
    epoch: Optional[float]
    train_loss: float


class EndEvent(Event):
    state: str                       # "completed" | "stopped"
    step: int
    best_val_loss: Optional[float]
    best_step: Optional[int]
    adapter: str
    seconds: float


class ErrorEvent(Event):
    state: str                       # a final run state: "failed", "out_of_memory", "stopped"
    message: str


class ResumeEvent(Event):
    checkpoint: str                  # str() of the checkpoint path, "None" when there was none


class SkippedCheckpoint(TypedDict):
    path: str
    problem: str


class ResumeFallbackEvent(Event):
    checkpoint: str
    skipped: list[SkippedCheckpoint]
    message: str


class AlignmentEvent(Event):
    """Plus the picked metrics under the trainer's names (rewards/margins, eval_rewards/accuracies, ...)."""
    step: int
    epoch: Optional[float]
    phase: str                       # "train" | "eval"


class FishMaskEvent(Event):
    step: int
    selected: int
    density: float
    batches: int


class UnfreezeEvent(Event):
    step: int
    epoch: Optional[float]
    group: int
    layer: int
    trainable_layers: int
    message: str


EVENT_SHAPES: dict[str, type] = {
    TRAIN_BEGIN: TrainBeginEvent, TRAIN: TrainEvent, EVAL: EvalEvent, EARLY_STOP: EarlyStopEvent,
    CHECKPOINT: CheckpointEvent, TRAIN_END: TrainEndEvent, END: EndEvent, ERROR: ErrorEvent,
    RESUME: ResumeEvent, RESUME_FALLBACK: ResumeFallbackEvent, ALIGNMENT: AlignmentEvent,
    FISH_MASK: FishMaskEvent, UNFREEZE: UnfreezeEvent,
}
EVENT_TYPES = frozenset(EVENT_SHAPES)  # what append_event accepts
