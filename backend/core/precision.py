"""The one precision policy: what a RunConfig's precision means for the weights, the matmuls and this machine.

`precision_plan` decides, from train.precision (and, for a quantized method, its compute dtype)
and a machine, the dtype the base weights load in, the autocast dtype, and whether the machine
can train it. The loader (backend.methods.load_dtype), the estimator (closed form and precise
trace), the Method tab's validation and the trainer all ask it, so they cannot disagree.

The rules:
- fp32 loads fp32 and does not autocast; bf16 / fp16 autocast the matmuls to that dtype.
- Mixed precision for a method that trains base weights (the catalog's `trains_base`: full,
  last_layers, gradual_unfreezing, feature_extraction, bitfit, fish_mask): the base loads in fp32,
  the trainable parameters stay fp32 (master weights, so gradients and AdamW states are fp32 too)
  and the frozen ones are cast to the compute dtype (`cast_for_training` in backend.methods.loading).
  Autocast then casts the fp32 weights to 16 bit on every forward and keeps those copies for backward.
  Pure bf16 training would lose every update smaller than bf16's resolution around a weight
  (about 1/256 of it).
- `pure_bf16` (train.pure_bf16, bf16 only) is the explicit exception: everything loads and trains in
  bf16, gradients and AdamW states included (6 B per trainable parameter less with AdamW).
- fp16 has no pure variant: the GradScaler refuses to unscale fp16 gradients.
- Every other method loads the base in the compute dtype; its added parameters are fp32 (PEFT and
  the studio's bottleneck adapters keep them so).
- A 4-bit method loads in its compute dtype, the matmuls run in it, and
  prepare_model_for_kbit_training upcasts every weight that stays unquantized to fp32.
- A CUDA GPU trains fp32 and fp16, and bf16 when it has native bf16 (Ampere or newer).
- A CPU-only machine accepts fp32 and bf16 (a config written for a GPU runs unchanged) and
  trains both in fp32; fp16 mixed precision needs CUDA's GradScaler, so a CPU refuses it.
- A precision the machine cannot train is refused with a sentence (validation and trainer alike).

`machine=None` means "as configured, on a GPU that has it": the estimator's view, which is about
the card the run is for, not this machine. Top-level imports: stdlib and the catalog (torch lazily).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from backend.core import catalog

PRECISIONS = ("fp32", "fp16", "bf16")
NAMES = {"fp32": "fp32", "bf16": "bf16 (bfloat16)", "fp16": "fp16 (float16)"}


@dataclass(frozen=True)
class Machine:
    """What the hardware offers for precision: a CUDA GPU or not, and native bf16 on it."""
    cuda: bool
    bf16: bool


@functools.lru_cache(maxsize=1)
def this_machine() -> Machine:
    import torch

    cuda = torch.cuda.is_available()
    return Machine(cuda=cuda, bf16=bool(cuda and torch.cuda.is_bf16_supported()))


def available_precisions(machine: Optional[Machine] = None) -> list[str]:
    """Precisions `machine` (default: this one) accepts, in the order the Method tab lists them."""
    m = machine or this_machine()
    if m.cuda:
        return ["fp32", "fp16"] + (["bf16"] if m.bf16 else [])
    return ["fp32", "bf16"]


def _trains_as(precision: str, machine: Machine) -> str:
    """The precision an accepted `precision` actually trains in on `machine`."""
    return precision if machine.cuda else "fp32"


def precision_problem(precision: str, what: str, machine: Optional[Machine] = None) -> Optional[str]:
    """None when `machine` accepts `precision`, else the sentence refusing it (`what`: "training", ...)."""
    m = machine or this_machine()
    avail = available_precisions(m)
    if precision in avail:
        return None
    hw = "this GPU" if m.cuda else "a CPU-only machine"
    why = ("bf16 needs an Ampere (RTX 30xx / A100) or newer GPU" if precision == "bf16"
           else "fp16 mixed precision needs a CUDA GPU")
    return (f"{NAMES[precision]} {what} is not available on {hw}: {why}. "
            f"Choose one of: {', '.join(avail)}.")


@dataclass(frozen=True)
class PrecisionPlan:
    requested: str              # train.precision as configured
    precision: str              # what training runs in (on a CPU-only machine fp32 for an accepted bf16)
    load: str                   # dtype the base weights are loaded in (from_pretrained's dtype)
    base: str                   # dtype the frozen unquantized base weights are in while training
    compute: str                # dtype of activations and matmuls
    autocast: Optional[str]     # torch.autocast dtype (None: no mixed precision)
    quantized: bool
    fp32_master_weights: bool   # mixed precision over fp32 trainable base weights (autocast makes 16-bit copies)
    trainable: str = "fp32"     # dtype of the trainable base weights, and so of their gradients and AdamW states
    pure_bf16: bool = False     # train.pure_bf16 in effect: trainable base weights, gradients and states in bf16
    problems: dict[str, str] = field(default_factory=dict)  # config field -> sentence; empty when available
    note: Optional[str] = None  # a sentence when `precision` differs from `requested`

    @property
    def available(self) -> bool:
        return not self.problems


def precision_plan(precision: str, *, quantized: bool = False, uses_peft: bool = True, trains_base: bool = False,
                   pure_bf16: bool = False, compute_dtype: str = "bf16",
                   machine: Optional[Machine] = None) -> PrecisionPlan:
    """The whole precision decision for one run; see the module docstring for the rules.

    quantized / uses_peft / trains_base: the method's catalog flags; pure_bf16: train.pure_bf16
    (read only when the run trains in bf16); compute_dtype:
    the 4-bit compute dtype (method.compute_dtype), read only when quantized. machine None plans
    the run as configured (no availability check, no CPU substitution).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    problems: dict[str, str] = {}
    note = None
    runs = precision
    if machine is not None:
        problem = precision_problem(precision, "training", machine)
        if problem:
            problems["train.precision"] = problem
        if quantized:
            problem = precision_problem(compute_dtype, "as the 4-bit compute dtype", machine)
            if problem:
                problems["method.compute_dtype"] = problem
        if not problems:
            runs = _trains_as(precision, machine)
            if runs != precision:
                note = f"No GPU found: training in {runs} on the CPU instead of {precision}."
    autocast = runs if runs in ("bf16", "fp16") else None
    if quantized:
        # prepare_model_for_kbit_training upcasts every non-4-bit parameter (embeddings, head, norms) to fp32.
        return PrecisionPlan(requested=precision, precision=runs, load=compute_dtype, base="fp32",
                             compute=compute_dtype, autocast=autocast, quantized=True, fp32_master_weights=False,
                             problems=problems, note=note)
    pure = pure_bf16 and runs == "bf16" and trains_base
    master = autocast is not None and trains_base and not pure
    load = "fp32" if master else runs
    return PrecisionPlan(requested=precision, precision=runs, load=load, base=runs, compute=runs, autocast=autocast,
                         quantized=False, fp32_master_weights=master, trainable="fp32" if master else runs,
                         pure_bf16=pure, problems=problems, note=note)


def plan_for(cfg: Any, machine: Optional[Machine] = None) -> PrecisionPlan:
    """precision_plan for a RunConfig, with its method's flags from the catalog.

    machine None: as configured (the loader and the estimator); a Machine: also whether it can train
    it (validation and the trainer pass this_machine())."""
    method = catalog.METHODS[cfg.method.name]
    return precision_plan(cfg.train.precision, quantized=method.quantized, uses_peft=method.uses_peft,
                          trains_base=method.trains_base, pure_bf16=getattr(cfg.train, "pure_bf16", False),
                          compute_dtype=cfg.method.compute_dtype, machine=machine)


def torch_dtype(name: str) -> Any:
    """torch.float32 / bfloat16 / float16 for "fp32" / "bf16" / "fp16"."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
