"""The speed switches applied to a training run: the Trainer arguments they set and the train.log lines.

Which switch is on, and why, is decided once in backend.core.kernels (`select_kernels`); the loader
takes its attention (`core.kernels.load_kwargs`). This module turns the same choices into what TRL's
Configs take (the alignment objectives inherit them through objectives.trainers._common_args):

- Liger: `use_liger_kernel=True` with `liger_kernel_config` keeping the fused cross-entropy off
  (TRL's chunked LM head computes the loss);
- fused AdamW: `optim="adamw_torch_fused"`;
- torch.compile: `torch_compile=True`.
"""
from __future__ import annotations

from typing import Any, Optional

from backend.core import kernels
from backend.core.errors import UserError
from backend.core.log import note


def choices_for_run(cfg: Any, machine: Optional[kernels.KernelMachine] = None) -> list[kernels.KernelChoice]:
    """The run's kernel choices on this machine; a switch asked for ("on") that cannot run is refused."""
    choices = kernels.select_kernels(cfg, machine)
    problems = [c.reason for c in choices if c.problem]
    if problems:
        raise UserError("A speed switch cannot be used: " + " ".join(problems) +
                        " Set it to auto (or off) in the Method tab's speed switches.")
    return choices


def trainer_kwargs(choices: list[kernels.KernelChoice]) -> dict[str, Any]:
    """TrainingArguments fields for the choices (nothing for a switch that is off)."""
    on = {c.switch: c for c in choices if c.on}
    out: dict[str, Any] = {}
    if "liger_kernel" in on:
        out["use_liger_kernel"] = True
        out["liger_kernel_config"] = dict(kernels.LIGER_CONFIG)
    if "fused_adamw" in on:
        out["optim"] = on["fused_adamw"].value
    if "torch_compile" in on:
        out["torch_compile"] = True
    return out


def note_choices(choices: list[kernels.KernelChoice]) -> None:
    """One train.log line per switch: on or off, and why."""
    names = {"liger_kernel": "Liger kernels", "attention": "Attention", "fused_adamw": "Fused AdamW",
             "torch_compile": "torch.compile"}
    for c in choices:
        note(f"Speed: {names[c.switch]}: {c.reason}")
