"""Trainer callbacks that connect a transformers/TRL trainer to the run directory.

- EventsCallback: every log, evaluation, checkpoint and early stop becomes one line of events.jsonl,
  and the status file gets the step, totals and best validation loss.
- StopRequestCallback: the runner's stop request (a file) becomes `control.should_training_stop`
  after a checkpoint is saved.
- FaultCallback and GuardedCollator: test-only fault injection (FTSTUDIO_FAULT), so tests can
  produce out-of-memory, collation errors, hangs and a full disk on a CPU.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

from transformers import EarlyStoppingCallback, TrainerCallback

from backend.core import io as core_io
from backend.core.gpu import gpu_memory_used, visible_indices
from backend.runs import events as ev, rundir

STATUS_EVERY_S = 2.0  # status.json is fsynced; the per-line events file carries the fine detail


def nvml_index(cuda_index: int) -> int:
    """NVML's number for the process's CUDA device: a run restricted by CUDA_VISIBLE_DEVICES (the queue
    gives each run its own GPUs) counts its GPUs from 0, NVML counts every GPU of the machine."""
    visible = visible_indices()
    return visible[cuda_index] if visible and cuda_index < len(visible) else cuda_index


def _cuda_memory() -> dict[str, Any]:
    try:
        import torch
        if not torch.cuda.is_available():
            return {}
        out: dict[str, Any] = {"gpu_mem_allocated": torch.cuda.memory_allocated(),
                               "gpu_mem_peak": torch.cuda.max_memory_allocated()}
    except Exception:  # noqa: BLE001 - memory numbers are nice to have, never worth a crash
        return {}
    try:
        out["gpu_mem_used"] = gpu_memory_used(nvml_index(torch.cuda.current_device()))
    except Exception:  # noqa: BLE001
        pass
    return out


class EventsCallback(TrainerCallback):
    """Writes events.jsonl (train / eval / checkpoint / early_stop / train_end) and keeps status.json current."""

    def __init__(self, run_dir: Path, early_stopping: Optional[EarlyStoppingCallback] = None):
        self.run_dir = Path(run_dir)
        self.early_stopping = early_stopping
        self._last_tokens: Optional[int] = None
        self._last_time: Optional[float] = None
        self._last_status = 0.0
        self.early_stopped = False
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None

    def _status(self, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if force or now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            rundir.write_status(self.run_dir, **fields)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._last_time = time.monotonic()
        self._last_tokens = state.num_input_tokens_seen or 0
        # On resume the trainer state carries the best so far.
        self.best, self.best_step = state.best_metric, getattr(state, "best_global_step", None)
        rundir.append_event(self.run_dir, {"type": ev.TRAIN_BEGIN, "step": state.global_step,
                                         "total_steps": state.max_steps,
                                         "epochs": args.num_train_epochs})
        self._status(force=True, total_steps=state.max_steps, step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if not state.is_world_process_zero:
            return
        base = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch)}
        if "eval_loss" in logs:
            return  # on_evaluate reports evaluations, with the best-so-far
        if "loss" not in logs:
            if "train_loss" in logs:  # the Trainer's closing summary
                rundir.append_event(self.run_dir, {"type": ev.TRAIN_END, **base, **logs})
            return
        now = time.monotonic()
        # GRPO/RLOO count tokens themselves (prompts + sampled answers) as "num_tokens".
        tokens = logs.get("num_input_tokens_seen", logs.get("num_tokens"))
        tps = None
        if tokens is not None and self._last_tokens is not None and self._last_time is not None:
            dt = now - self._last_time
            tps = (tokens - self._last_tokens) / dt if dt > 0 else None
        self._last_tokens, self._last_time = tokens, now
        event = {"type": ev.TRAIN, **base, "loss": logs.get("loss"), "lr": logs.get("learning_rate"),
                 "grad_norm": logs.get("grad_norm"), "tokens_per_s": tps, "tokens_seen": tokens,
                 **_cuda_memory()}
        for extra in ("mean_token_accuracy", "entropy"):
            if extra in logs:
                event[extra] = logs[extra]
        rundir.append_event(self.run_dir, event)
        self._status(step=state.global_step, total_steps=state.max_steps, epoch=event["epoch"],
                     loss=event["loss"], tokens_per_s=tps)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        metrics = dict(metrics or {})
        val_loss = metrics.get("eval_loss")
        # The Trainer updates best_metric only after this callback runs, so the best is tracked here.
        if val_loss is not None and (self.best is None or val_loss < self.best):
            self.best, self.best_step = val_loss, state.global_step
        best = self.best
        event = {"type": ev.EVAL, "step": state.global_step, "epoch": state.epoch, "val_loss": val_loss,
                 "best_val_loss": best, "best_step": self.best_step,
                 **{k: v for k, v in metrics.items() if k != "eval_loss"}}
        rundir.append_event(self.run_dir, event)
        self._status(force=True, best_val_loss=best, best_step=event["best_step"], val_loss=val_loss,
                     step=state.global_step)
        self._last_time = time.monotonic()  # tokens/s measures training, not the evaluation pause
        es = self.early_stopping
        if es is not None and control.should_training_stop and \
                es.early_stopping_patience_counter >= es.early_stopping_patience:
            self.early_stopped = True
            rundir.append_event(self.run_dir, {
                "type": ev.EARLY_STOP, "step": state.global_step, "best_step": event["best_step"],
                "best_val_loss": best, "best_checkpoint": state.best_model_checkpoint,
                "patience": es.early_stopping_patience})
            self._status(force=True, early_stopped=True)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        rundir.append_event(self.run_dir, {"type": ev.CHECKPOINT, "step": state.global_step, "path": str(path),
                                         "best_checkpoint": state.best_model_checkpoint})
        self._status(force=True, last_checkpoint=str(path), best_checkpoint=state.best_model_checkpoint)
        self._last_time = time.monotonic()


class StopRequestCallback(TrainerCallback):
    """Turns the runner's stop request into a checkpoint save followed by a clean end of training."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(rundir.stop_requested(self.run_dir)):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control


def _any_rank(flag: bool) -> bool:
    """With several processes (accelerate launch) all ranks must stop at the same step, or DDP hangs."""
    try:
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return flag
        import torch
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
    except Exception:  # noqa: BLE001 - without a working collective, each rank decides alone
        return flag


class HeartbeatCallback(TrainerCallback):
    """Writes heartbeat.json as steps (and evaluation batches, and saves) finish, with the recent time per
    step, so a reader can tell a live but stalled trainer (SIGSTOP, a hang, swapping) from a slow one."""

    EVERY_S = 1.0

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.step_time: Optional[float] = None
        self._begin: Optional[float] = None
        self._last_write = 0.0

    def _beat(self, state, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_write >= self.EVERY_S:
            self._last_write = now
            try:
                rundir.write_heartbeat(self.run_dir, state.global_step, self.step_time)
            except OSError:
                pass  # a missed beat is not worth ending the training over

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._begin is not None:
            took = time.monotonic() - self._begin
            # A moving average: one slow step (a checkpoint, an evaluation) does not swing it.
            self.step_time = took if self.step_time is None else 0.7 * self.step_time + 0.3 * took
        self._beat(state, force=True)

    def on_prediction_step(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.step_time is not None:
            self._beat(state)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.step_time is not None:
            self._beat(state, force=True)


# A checkpoint also holds the tokenizer, the trainer state and RNG files: a margin over the weights.
SAVE_MARGIN_BYTES = 16 * 2**20


def trainable_size(model: Any) -> tuple[int, int]:
    """(bytes as saved, element count) of the trainable parameters."""
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        return sum(p.numel() * p.element_size() for p in params), sum(p.numel() for p in params)
    except Exception:  # noqa: BLE001 - an odd model: no estimate, only the margin
        return 0, 0


def newest_checkpoint_bytes(run_dir: Path) -> Optional[int]:
    ckpt = rundir.last_checkpoint(run_dir)
    if ckpt is None:
        return None
    try:
        return sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    except OSError:
        return None


def checkpoint_bytes_needed(run_dir: Path, model: Any) -> int:
    """What the next checkpoint takes: the size of the last one, or (before the first) the trainable
    weights and the optimizer's two fp32 moments per weight, plus a margin."""
    last = newest_checkpoint_bytes(run_dir)
    if last:
        return int(last * 1.05) + SAVE_MARGIN_BYTES
    size, count = trainable_size(model)
    return size + 8 * count + SAVE_MARGIN_BYTES


def adapter_bytes_needed(model: Any) -> int:
    """What the final adapter (or model) folder takes: the trainable weights and the tokenizer."""
    return trainable_size(model)[0] + SAVE_MARGIN_BYTES


class DiskSpaceCallback(TrainerCallback):
    """Before each checkpoint, the free space is checked against what the save needs (the check the GGUF
    export uses): a full disk ends the run with a sentence and the previous checkpoint intact, instead of
    a save cut short part-way."""

    def __init__(self, run_dir: Path, model: Any):
        self.run_dir = Path(run_dir)
        self.model = model

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and state.is_world_process_zero:
            folder = rundir.checkpoints_dir(self.run_dir)
            core_io.check_free_space(folder, checkpoint_bytes_needed(self.run_dir, self.model),
                                     f"checkpoint-{state.global_step} (then resume the run)")
        return control


# ---- test-only fault injection -------------------------------------------------------------

def parse_faults(spec: Optional[str]) -> dict[str, int]:
    """"oom@step3,disk_full@save2" -> {"oom": 3, "disk_full": 2}. A fault without @N gets 1."""
    faults: dict[str, int] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, where = part.partition("@")
        digits = "".join(ch for ch in where if ch.isdigit())
        faults[name] = int(digits) if digits else 1
    return faults


class InjectedFault(RuntimeError):
    pass


class CollateError(RuntimeError):
    """A batch could not be built; carries which batch it was."""
class GuardedCollator:
    """Wraps the real collator so a failure names the batch instead of surfacing deep in the DataLoader."""

    def __init__(self, inner: Callable, faults: Optional[dict[str, int]] = None):
        self.inner = inner
        self.calls = 0
        self.fail_at = (faults or {}).get("collate_error")

    def __call__(self, features):
        self.calls += 1
        try:
            if self.fail_at is not None and self.calls >= self.fail_at:
                raise InjectedFault("injected collate error (FTSTUDIO_FAULT)")
            return self.inner(features)
        except Exception as e:  # noqa: BLE001 - re-raised with where it happened
            raise CollateError(f"building batch {self.calls} failed: {type(e).__name__}: {e}") from e


class FaultCallback(TrainerCallback):
    """FTSTUDIO_FAULT for tests: oom@stepN, hang@stepN (ignores stop and SIGTERM, spawns a child), slow@MS."""

    def __init__(self, faults: dict[str, int]):
        self.faults = faults

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step + 1
        if "oom" in self.faults and step >= self.faults["oom"]:
            import torch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by FTSTUDIO_FAULT)")
        if "hang" in self.faults and step >= self.faults["hang"]:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # A grandchild in the same process group: stop must not leave it behind.
            child = subprocess.Popen(["sleep", "600"])
            Path(args.output_dir).parent.joinpath("fault_child.pid").write_text(str(child.pid))
            while True:
                time.sleep(0.2)
        if "slow" in self.faults:
            time.sleep(self.faults["slow"] / 1000.0)


def install_save_fault(trainer: Any, faults: dict[str, int]) -> None:
    """disk_full@saveN: the Nth checkpoint save fails with ENOSPC part-way through, as a full disk would."""
    if "disk_full" not in faults:
        return
    fail_at = faults["disk_full"]
    original = trainer._save
    count = {"n": 0}

    def failing_save(output_dir=None, state_dict=None, *a, **kw):
        if output_dir and Path(output_dir).name.startswith("checkpoint-"):
            count["n"] += 1
            if count["n"] >= fail_at:
                Path(output_dir).mkdir(parents=True, exist_ok=True)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected by FTSTUDIO_FAULT)")
        return original(output_dir, state_dict, *a, **kw)

    trainer._save = failing_save
