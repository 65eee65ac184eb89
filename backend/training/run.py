"""The training subprocess: `python -m backend.training.run RUN_DIR [--resume]`.

Read top to bottom: meta.json first, then config -> model -> data -> trainer -> train -> save,
and one distinct final state in status.json: completed, stopped, failed or out_of_memory, each
with a sentence. The trainer is TRL's SFTTrainer on the dataset our own templates built (the same
token ids and labels the Dataset tab previews), with transformers' callbacks for early stopping.

torch, transformers, TRL and the modules that load them are imported inside the functions that use
them: the process marks itself running and installs its SIGTERM handler before those seconds of
imports, so a stop or a broken install during start-up still ends in a state with a sentence.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from backend.core import catalog, precision
from backend.core.config import ConfigError, load_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_json, is_disk_full
from backend.core.log import is_main_process, note
from backend.core.noise import quiet_known_noise
from backend.core.models import ModelError
from backend.data.records import load_for_training
from backend.data.special_tokens import training_tokenizer
from backend.data.templates import SftCollator, build_sft_dataset
from backend.objectives.online_rl import drop_reference_adapter
from backend.objectives.validate import is_alignment
from backend.runs import events as ev, rundir
from backend.runs.model_card import write_card
from backend.runs.notify import post_webhook, run_end_payload

LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "fine-tune-studio")
GENERIC_OOM_ADVICE = [
    "lower train.batch_size and raise train.gradient_accumulation to keep the effective batch",
    "lower data.max_length", "turn on train.gradient_checkpointing",
    f"use QLoRA (method {catalog.METHOD.qlora}) or an 8-bit optimizer ({catalog.OPTIMIZER.adamw_8bit})",
]


class Terminated(Exception):
    """SIGTERM from the runner: the graceful stop did not land in time."""


def _versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _devices() -> list[dict[str, Any]]:
    import torch
    if torch.cuda.is_available():
        return [{"type": "cuda", "index": i, "name": torch.cuda.get_device_name(i),
                 "total_bytes": torch.cuda.get_device_properties(i).total_memory}
                for i in range(torch.cuda.device_count())]
    return [{"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}]


def write_meta(run_dir: Path, seed: Optional[int]) -> None:
    atomic_write_json(run_dir / rundir.META_FILE, {
        "versions": _versions(), "devices": _devices(), "seed": seed, "platform": platform.platform(),
        "command": f"ftstudio train {shlex.quote(str(run_dir / rundir.CONFIG_FILE))}",
        "trainer_command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "backend.training.run", str(run_dir)]),
        "written": rundir.now_iso(),
    })


def effective_config(cfg):
    """Settings this machine cannot honour are changed, with a note, instead of crashing.

    The precision follows backend.core.precision, the policy the Method tab validates with: one this
    machine cannot train is refused with the same sentence; an accepted one it trains differently
    (bf16 on a CPU trains in fp32) is changed with a note.
    """
    import torch

    train = {}
    plan = precision.plan_for(cfg, precision.this_machine())
    if plan.problems:
        raise UserError(" ".join(plan.problems.values()))
    if plan.precision != cfg.train.precision:
        note(plan.note)
        train["precision"] = plan.precision
    if not torch.cuda.is_available():
        if catalog.OPTIMIZERS[cfg.train.optimizer].bitsandbytes:
            fallback = catalog.OPTIMIZER.adamw_torch
            note(f"No GPU found: the {cfg.train.optimizer} optimizer needs CUDA; using {fallback}.")
            train["optimizer"] = fallback
    if not train:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})


def build_datasets(cfg, tokenizer, cache: Optional[Path] = None, progress=None):
    if is_alignment(cfg.objective):
        from backend.objectives.trainers import build_alignment_datasets

        return build_alignment_datasets(cfg, tokenizer)  # TRL tokenizes these itself (GRPO/RLOO: prompts only)
    # The normalized rows go to a memory-mapped file beside the dataset cache (removed when the run ends),
    # so a file of millions of rows trains with the memory of a few batches.
    spill = None if cache is None else Path(cache).parent / "rows"
    loaded, train_rows, val_rows = load_for_training(cfg.data, cfg.train.seed, spill=spill)
    if not train_rows:
        raise UserError(f"The training file {cfg.data.path} has no usable rows; check it in the Dataset tab.")
    note(f"Data: {len(train_rows)} training rows, {len(val_rows)} validation rows "
         f"({getattr(loaded, 'skipped', 0)} skipped) from {cfg.data.path}.")
    # The encoded rows are kept in the workspace's cache (Arrow, keyed by rows, tokenizer, template and
    # data settings), so a resume or a re-run with other hyperparameters does not tokenize again.
    train_ds = build_sft_dataset(tokenizer, train_rows, cfg.data, cache_dir=cache,
                                 progress=progress or encode_progress())
    val_ds = build_sft_dataset(tokenizer, val_rows, cfg.data, cache_dir=cache) if val_rows else None
    if cfg.data.packing:
        note(f"Packing: {len(train_ds)} sequences of at most {cfg.data.max_length} tokens.")
    return train_ds, val_ds


def encode_progress(run_dir: Optional[Path] = None):
    """progress(fraction, text) for the dataset build: a train.log line per tenth, and status.json's
    `preparing` (fraction and text, at most once a second) that `ftstudio train` and the Train tab show."""
    shown = {"tenth": -1, "at": 0.0}

    def progress(fraction: float, text: str) -> None:
        tenth = int(fraction * 10)
        if tenth != shown["tenth"]:
            shown["tenth"] = tenth
            note(f"{text} ({fraction:.0%}).")
        now = time.monotonic()
        if run_dir is not None and (now - shown["at"] >= 1.0 or fraction >= 1.0):
            shown["at"] = now
            rundir.write_status(run_dir, preparing={"fraction": round(float(fraction), 4), "text": text})
    return progress


def training_args(cfg, run_dir: Path, has_eval: bool):
    from trl import SFTConfig
    import torch

    t = cfg.train
    save_steps = t.save_steps or t.eval_steps
    early = cfg.early_stopping.patience is not None and has_eval
    if early and save_steps % t.eval_steps:
        note(f"Checkpoints every {t.eval_steps} steps (not {save_steps}): keeping the best model needs a "
             "checkpoint at every evaluation.")
        save_steps = t.eval_steps
    report_to = [r for r in cfg.report_to if r == "tensorboard" or _installed(r)]
    for missing in sorted(set(cfg.report_to) - set(report_to)):
        note(f"{missing} is not installed: not reporting to it.")
    from backend.training.kernels import choices_for_run, trainer_kwargs

    # Liger, fused AdamW and torch.compile where backend.core.kernels turns them on (the attention is the loader's).
    speed = trainer_kwargs(choices_for_run(cfg))
    return SFTConfig(
        output_dir=str(rundir.checkpoints_dir(run_dir)),
        num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation, learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, optim=speed.pop("optim", catalog.OPTIMIZERS[t.optimizer].trainer_name),
        seed=t.seed,
        # NEFTune: the Trainer hooks the input embeddings for the length of train() only, and the hook adds
        # noise only in training mode, so evaluation, the saved model and chat never see it.
        neftune_noise_alpha=t.neftune_noise_alpha,
        # GaLore/APOLLO project the gradients of the linear layers; the rest gets their AdamW part.
        optim_target_modules="all-linear" if t.optimizer in (catalog.OPTIMIZER.galore_adamw,
                                                             catalog.OPTIMIZER.apollo_adamw) else None,
        bf16=t.precision == "bf16", fp16=t.precision == "fp16", use_cpu=not torch.cuda.is_available(),
        logging_steps=t.logging_steps, logging_first_step=True,
        eval_strategy="steps" if has_eval else "no", eval_steps=t.eval_steps if has_eval else None,
        save_strategy="steps", save_steps=save_steps, save_total_limit=2,
        # The best checkpoint is tracked whenever there is a validation set, so the checkpoint limit never
        # deletes it (the Trainer's rotation keeps best_model_checkpoint); the Chat tab offers it first.
        load_best_model_at_end=early,
        metric_for_best_model=(cfg.early_stopping.metric if early else "eval_loss") if has_eval else None,
        greater_is_better=False if has_eval else None,
        report_to=report_to or "none", disable_tqdm=True, dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        # The model arrives with checkpointing already set up by the method (methods.load_trainable_model).
        gradient_checkpointing=False,
        # The dataset is already tokenized with our labels; TRL must not tokenize or truncate it again.
        dataset_kwargs={"skip_prepare_dataset": True}, packing=False, remove_unused_columns=False,
        **speed,
    )


def _installed(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def make_collator(data_cfg, model, tokenizer):
    """The SFT batch builder: padded rows, or packed rows kept apart (refused where the model cannot)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not data_cfg.packing:
        return SftCollator(pad_id)
    from backend.data.packing import PackedCollator
    from backend.training.packing_check import flattens_batches, require_isolated_packing

    require_isolated_packing(model)  # before any step: a model that cross-attends is refused
    return PackedCollator(pad_id, flatten=flattens_batches(model))


def build_trainer(cfg, run_dir: Path, model, tokenizer, train_ds, val_ds, faults: dict[str, int]):
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    from backend.training.callbacks import DiskSpaceCallback, EventsCallback, FaultCallback, GuardedCollator, \
        HeartbeatCallback, StopRequestCallback, install_save_fault
    from backend.methods import create_optimizer, method_callbacks

    args = training_args(cfg, run_dir, has_eval=val_ds is not None)
    callbacks = []
    early = None
    if args.load_best_model_at_end:
        early = EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping.patience,
                                      early_stopping_threshold=cfg.early_stopping.threshold)
        callbacks.append(early)
    elif cfg.early_stopping.patience is not None:
        note("Early stopping is off: there is no validation set to watch.")
    events = EventsCallback(run_dir, early)
    stop = StopRequestCallback(run_dir)
    callbacks += [events, stop]
    if faults:
        callbacks.append(FaultCallback(faults))
    callbacks += method_callbacks(model, cfg, run_dir)  # AdaLoRA's ranks, unfreezing, Fish Mask
    # Last: it sees every callback's decision to save (a stop request saves too) before the save begins.
    callbacks += [HeartbeatCallback(run_dir), DiskSpaceCallback(run_dir, model)]
    if is_alignment(cfg.objective):
        from backend.objectives.trainers import build_alignment_trainer

        trainer = build_alignment_trainer(cfg, args, model, tokenizer, train_ds, val_ds, callbacks,
                                          create_optimizer(model, cfg))
        install_save_fault(trainer, faults)
        return trainer, events, stop
    collator = make_collator(cfg.data, model, tokenizer)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        data_collator=GuardedCollator(collator, faults), callbacks=callbacks,
        optimizers=(create_optimizer(model, cfg), None),
    )
    install_save_fault(trainer, faults)
    return trainer, events, stop


# The Trainer writes its arguments as a pickle next to the weights; the final folder stays pickle-free
# (pickles belong to checkpoints/ only, which the same run reads back).
PICKLED_EXTRAS = ("training_args.bin",)


def save_adapter(trainer, run_dir: Path) -> Path:
    """Write the final (best, with early stopping) adapter next to the old one, then swap, so a
    full disk leaves the previous adapter intact and no half-written adapter.partial behind."""
    from backend.core.io import check_free_space
    from backend.training.callbacks import adapter_bytes_needed

    final = rundir.adapter_dir(run_dir)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    check_free_space(run_dir, adapter_bytes_needed(trainer.model), "the final adapter (then resume the run)")
    from backend.methods import save_trained
    try:
        save_trained(trainer, str(tmp))  # bottleneck adapters write their own format
        for name in PICKLED_EXTRAS:
            (tmp / name).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def finished_checkpoint(checkpoint: Path):
    """The checkpoint's TrainerState when it is at (or past) the run's last step, else None."""
    from transformers import TrainerState

    try:
        state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    except (OSError, ValueError, TypeError):
        return None
    if state.max_steps and state.global_step >= state.max_steps:
        return state
    return None


def _oom_sentence(cfg) -> str:
    suggestions: list[str] = []
    try:
        from backend.estimator import estimate
        est = estimate(cfg)
        suggestions = list(est.suggestions or [])
        if not suggestions and est.total_bytes:
            # The estimate thought it fit; ask what would help on a card just too small for this run.
            suggestions = list(estimate(cfg, gpu_memory_gb=est.total_bytes * 0.9 / 2**30).suggestions or [])
        suggestions = [str(s).rstrip(".") for s in suggestions]
    except Exception as e:  # noqa: BLE001 - advice is best effort; the OOM itself is the news
        note(f"The memory estimate could not be computed: {e}")
    tips = suggestions or GENERIC_OOM_ADVICE
    return "The GPU ran out of memory during training. To fit: " + "; ".join(tips) + "."


def _classify(exc: BaseException, cfg, run_dir: Path) -> tuple[str, str]:
    """(final state, sentence) for an exception that ended training."""
    import torch
    from backend.training.callbacks import CollateError

    ckpt = rundir.last_checkpoint(run_dir)
    kept = f" The last good checkpoint ({ckpt.name}) is kept." if ckpt else ""
    if isinstance(exc, Terminated):
        return "stopped", "The run was terminated before it could stop on its own." + kept
    oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
    if oom:
        return "out_of_memory", (_oom_sentence(cfg) if cfg is not None else "The GPU ran out of memory.") + kept
    if is_disk_full(exc):
        return "failed", (f"The disk is full: saving to {run_dir} failed. Free some space (old checkpoints "
                          "and runs can go), then resume the run." + kept)
    if isinstance(exc, CollateError):
        return "failed", (f"The data could not be batched ({exc}). Check the dataset in the Dataset tab." + kept)
    if isinstance(exc, (UserError, ConfigError, ModelError, FileNotFoundError)):
        return "failed", str(exc) + kept
    return "failed", f"Training failed with {type(exc).__name__}: {exc}. The full traceback is in train.log." + kept


def _on_sigterm(signum, frame):
    raise Terminated()


def run(run_dir: Path, resume: bool = False) -> int:
    """Train the run in `run_dir`; returns the process exit code (0 completed or stopped, 1 otherwise)."""
    run_dir = Path(run_dir).resolve()
    main = is_main_process()

    cfg = None
    faults = {}
    try:
        cfg = load_config(run_dir / rundir.CONFIG_FILE)
    except Exception as exc:  # noqa: BLE001 - an unreadable config is still a final state with a sentence
        cfg_error = exc
    else:
        cfg_error = None
    if main:
        write_meta(run_dir, cfg.train.seed if cfg else None)
        fields: dict[str, Any] = {"state": "running", "trainer_pid": os.getpid()}
        if rundir.read_raw_status(run_dir).get("pid") is None:  # started by hand, not by the runner
            fields.update(pid=os.getpid(), pgid=os.getpgid(0), pid_start=rundir.process_start_time(os.getpid()),
                          started=rundir.now_iso())
        rundir.write_status(run_dir, **fields)
        (run_dir / rundir.HEARTBEAT_FILE).unlink(missing_ok=True)  # an earlier leg's beat says nothing now
        if resume:
            rundir.append_event(run_dir, {"type": ev.RESUME, "checkpoint": str(rundir.last_checkpoint(run_dir))})
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    try:
        if cfg_error is not None:
            raise cfg_error
        from backend.training.callbacks import parse_faults
        faults = parse_faults(os.environ.get("FTSTUDIO_FAULT"))
        return _train(run_dir, cfg, resume, faults, main, started)
    except BaseException as exc:  # noqa: BLE001 - every ending is written down, then reported
        if isinstance(exc, KeyboardInterrupt):
            exc = Terminated()
        with contextlib.suppress(OSError):  # stdout is train.log, on the disk that may be full
            traceback.print_exc()
        state, sentence = _classify(exc, cfg, run_dir)
        if main:
            # The status first: it is what every reader goes by, and on a full disk it has the run's
            # reserved space; the event line is best effort.
            rundir.write_status(run_dir, state=state, error=sentence, ended=rundir.now_iso(),
                                last_checkpoint=str(rundir.last_checkpoint(run_dir) or "") or None)
            with contextlib.suppress(OSError):
                rundir.append_event(run_dir, {"type": ev.ERROR, "state": state, "message": sentence})
        with contextlib.suppress(OSError):
            note(sentence)
        return 0 if state == "stopped" else 1


def _train(run_dir: Path, cfg, resume: bool, faults: dict[str, int], main: bool, started: float) -> int:
    import torch

    cfg = effective_config(cfg)
    from backend.training.kernels import choices_for_run, note_choices
    note_choices(choices_for_run(cfg))  # refuses a switch set "on" that this machine cannot run
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tb")
    if "wandb" in cfg.report_to and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # never wait at a login prompt
    if "mlflow" in cfg.report_to:
        # Without a server configured, MLflow writes into the run directory instead of asking for one.
        os.environ.setdefault("MLFLOW_TRACKING_URI", (run_dir / "mlruns").resolve().as_uri())
    torch.manual_seed(cfg.train.seed)
    note(f"Loading {cfg.model} for {cfg.method.name} ({cfg.train.precision}).")
    # With data.add_special_tokens, each added token is one id (the model's rows are grown to match); the
    # trainer saves this tokenizer beside the adapter.
    tokenizer = training_tokenizer(cfg)
    from backend.objectives.trainers import load_objective_model
    model = load_objective_model(cfg)  # load_trainable_model, or a scorer for the reward objective
    # WORKSPACE/runs/<id> -> WORKSPACE/cache/datasets
    train_ds, val_ds = build_datasets(cfg, tokenizer, Path(run_dir).resolve().parent.parent / "cache" / "datasets",
                                      progress=encode_progress(run_dir if main else None))
    if main:
        rundir.write_status(run_dir, preparing=None)
    if main:  # the model card names the data's size
        rundir.write_status(run_dir, train_rows=len(train_ds), validation_rows=len(val_ds) if val_ds is not None else 0)
    trainer, events, stop = build_trainer(cfg, run_dir, model, tokenizer, train_ds, val_ds, faults)
    checkpoint = rundir.last_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        note("No complete checkpoint found: training from the start.")
    finished = finished_checkpoint(checkpoint) if checkpoint else None
    if finished is not None:
        # Every step was trained and checkpointed; only the final save was cut short (a kill, a full disk).
        # Training again from here would take one step more than max_steps: load it and save instead.
        note(f"{checkpoint.name} already holds the last step ({finished.global_step}); saving its adapter.")
        best = finished.best_model_checkpoint
        keep_best = trainer.args.load_best_model_at_end and best and Path(best).is_dir()
        trainer._load_from_checkpoint(str(best if keep_best else checkpoint))
        trainer.state = finished
        events.best, events.best_step = finished.best_metric, getattr(finished, "best_global_step", None)
    else:
        note("Training" + (f" from {checkpoint.name}." if checkpoint else "."))
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if catalog.OBJECTIVES[cfg.objective].online:
        drop_reference_adapter(trainer.model)
    if settle_schedule_free(trainer):
        note("Schedule-free optimizer: the saved weights are its averaged ones (the point it evaluates at).")
    adapter = save_adapter(trainer, run_dir) if main else None
    if not main:
        return 0
    state = "stopped" if stop.stopped else "completed"
    best = events.best
    if stop.stopped:
        sentence = f"Stopped on request at step {trainer.state.global_step}; the checkpoint and adapter are saved."
    elif events.early_stopped:
        sentence = (f"Early stopping at step {trainer.state.global_step}: the validation loss stopped improving; "
                    f"the best checkpoint (step {events.best_step}) is the saved adapter.")
    else:
        sentence = None
    rundir.append_event(run_dir, {"type": ev.END, "state": state, "step": trainer.state.global_step,
                                "best_val_loss": best, "best_step": events.best_step,
                                "adapter": str(adapter), "seconds": time.monotonic() - started})
    rundir.write_status(run_dir, state=state, ended=rundir.now_iso(), step=trainer.state.global_step,
                      best_val_loss=best, best_step=events.best_step, adapter=str(adapter),
                      best_checkpoint=trainer.state.best_model_checkpoint, note=sentence,
                      early_stopped=events.early_stopped or None)
    note(f"Run {state}. Adapter saved to {adapter}.")
    _write_card(run_dir, adapter)
    return 0


def settle_schedule_free(trainer) -> bool:
    """Switch a schedule-free optimizer to its evaluation point before the final save.

    Schedule-free AdamW trains at one point and evaluates at another (its running average); the Trainer
    switches it to evaluation only inside an evaluation, so a run that ends on a training step would save the
    training point. A best checkpoint loaded at the end was saved right after its evaluation (the averaged
    weights already), so it is left alone. True when the weights were switched."""
    opt = getattr(trainer, "optimizer", None)
    inner = getattr(opt, "optimizer", opt)  # accelerate wraps the optimizer
    if inner is None or not callable(getattr(inner, "eval", None)):
        return False
    if not any(group.get("train_mode") for group in inner.param_groups):
        return False
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        return False
    inner.eval()
    return True


def _write_card(run_dir: Path, adapter: Path) -> None:
    """The hub-format README.md beside the saved adapter; a card that cannot be written costs the run nothing."""
    try:
        write_card(adapter, run_dir, kind="adapter")
    except Exception as e:  # noqa: BLE001 - the adapter is saved; the card is a description of it
        note(f"The model card could not be written ({type(e).__name__}: {e}).")


def notify_end(run_dir: Path, wait_s: float = 10.0) -> None:
    """POST the final state to cfg.notify.webhook, if set. The final state is already written; the POST
    runs in a daemon thread joined for at most `wait_s`, so a hanging hook cannot keep the process alive."""
    import threading

    try:
        url = load_config(run_dir / rundir.CONFIG_FILE).notify.webhook
    except Exception:  # noqa: BLE001 - no readable config, no webhook to call
        return
    if not url:
        return
    status = rundir.read_status(run_dir)
    started, ended = rundir.parse_iso(status.get("started")), rundir.parse_iso(status.get("ended"))
    if started is not None and ended is not None:
        status = {**status, "duration_s": round(ended - started, 1)}
    outcome: list[str] = []

    def post() -> None:
        ok, sentence = post_webhook(url, run_end_payload(run_dir.name, status), timeout=wait_s / 2)
        outcome.append(("Webhook delivered: " if ok else "Webhook not delivered: ") + sentence)

    thread = threading.Thread(target=post, daemon=True, name="webhook")
    thread.start()
    thread.join(wait_s)
    note(outcome[0] if outcome else f"Webhook not delivered: {url} did not answer within {wait_s:.0f} s; "
                                    "the run itself is unaffected.")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.training.run", description="Train one run directory.")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    quiet_known_noise()  # before the libraries that print the noise are imported
    code = run(Path(args.run_dir), resume=args.resume)
    if is_main_process():
        notify_end(Path(args.run_dir).resolve())
    return code


if __name__ == "__main__":
    sys.exit(main())
