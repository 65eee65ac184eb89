"""The one speed-kernel policy: which fast kernels a run uses on a machine, each with its reason.

Four switches in the RunConfig's `train` section (each "auto" by default):

- `liger_kernel`: Liger's Triton kernels through TRL (`use_liger_kernel`): RMSNorm, RoPE and SwiGLU.
  In TRL 1.x the SFT/DPO/KTO/GRPO trainers compute the loss through their own chunked LM head and
  switch Liger's fused linear cross-entropy off, so the studio asks for it off everywhere
  (`LIGER_CONFIG`) and the estimator counts TRL's head, not Liger's.
- `attention`: "sdpa", "flash_attention_2", "eager", or a hub kernel repo ("owner/name", loaded
  by the `kernels` package); "auto" picks FlashAttention-2 where it runs, else transformers' default.
- `fused_adamw`: torch's fused AdamW kernel (`optim="adamw_torch_fused"`) on CUDA.
- `torch_compile`: opt-in; "auto" leaves it off.

"auto" turns a switch on only where it is available and known to be correct, and says why not
otherwise; "on" asks for it, and where it cannot run that is a problem sentence (validation shows
it at its field, the trainer refuses) rather than a silent fallback. The Method tab, the checks,
the trainer, the loader and the estimator all call `select_kernels`, so they cannot disagree.

Pure: the machine (CUDA? capability? which packages import?) is an argument; `this_machine()`
probes the real one without importing the kernel packages (importlib.util.find_spec).
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from typing import Any, Optional

from backend.core import catalog

TOGGLES = ("auto", "on", "off")
ATTENTIONS = ("auto", "sdpa", "flash_attention_2", "eager")
SWITCHES = ("liger_kernel", "attention", "fused_adamw", "torch_compile")
# A hub kernel for attention, as transformers' attn_implementation takes it ("kernels-community/flash-attn2").
HUB_KERNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(:[A-Za-z0-9_.-]+)?$")
# The packages the switches need; `pip install .[fast]` brings liger-kernel, `.[hub-kernels]` kernels (flash-attn
# is a source build against the installed torch and CUDA, so it is installed by hand; see the README).
PACKAGES = ("liger_kernel", "flash_attn", "kernels", "triton")
INSTALL = {"liger_kernel": "pip install liger-kernel (or .[fast])",
           "kernels": "pip install 'kernels>=0.18.2,<0.19' (or .[hub-kernels]), the versions transformers takes",
           "flash_attn": "pip install flash-attn --no-build-isolation"}
# Liger's layer kernels only: its fused linear cross-entropy would replace the forward TRL patches with
# its own chunked LM head (TRL refuses it for SFT/DPO/KTO/GRPO; ORPO and the reward model keep it off too,
# so every objective's loss is computed the way the estimator counts it).
LIGER_CONFIG = {"fused_linear_cross_entropy": False, "cross_entropy": False}
# The bottleneck adapters wrap the blocks' modules themselves; Liger's patched forwards would bypass them.
LIGER_UNSAFE_METHODS = frozenset({catalog.METHOD.adapter_houlsby, catalog.METHOD.adapter_pfeiffer})
# Methods that build their own optimizer (per-parameter learning rates); the Trainer's `optim` is unused.
# tests/unit/test_kernels.py checks this against the method registry.
OWN_OPTIMIZER_METHODS = frozenset({catalog.METHOD.loraplus, catalog.METHOD.lora_fa})
# FlashAttention-2 needs an Ampere (8.0) or newer GPU.
FLASH_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class KernelMachine:
    """What the hardware and the installed packages offer for the speed switches."""
    cuda: bool
    capability: Optional[tuple[int, int]] = None  # of the first GPU
    packages: frozenset[str] = frozenset()       # importable names among PACKAGES


@dataclass(frozen=True)
class KernelChoice:
    switch: str            # one of SWITCHES
    on: bool
    reason: str            # a sentence: why it is on, or why it is off
    value: str = ""        # attention: the implementation used; fused_adamw: the Trainer's optim name
    problem: bool = False  # asked for ("on", or a named attention) but this machine or run cannot have it

    def to_json(self) -> dict[str, Any]:
        return {"switch": self.switch, "on": self.on, "reason": self.reason, "value": self.value,
                "problem": self.problem}


# transformers 5.x uses the hub `kernels` package only inside this version window (its KERNELS_MIN/MAX_VERSION).
KERNELS_VERSIONS = ((0, 18, 2), (0, 19, 0))


def _usable(package: str) -> bool:
    if importlib.util.find_spec(package) is None:
        return False
    if package != "kernels":
        return True
    try:
        parts = tuple(int(x) for x in re.findall(r"\d+", importlib.metadata.version("kernels"))[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    low, high = KERNELS_VERSIONS
    return low <= parts < high


@functools.lru_cache(maxsize=1)
def installed_packages() -> frozenset[str]:
    """The kernel packages usable here, found without importing them (or torch)."""
    return frozenset(p for p in PACKAGES if _usable(p))


@functools.lru_cache(maxsize=1)
def this_machine() -> KernelMachine:
    import torch

    if not torch.cuda.is_available():
        return KernelMachine(cuda=False, packages=installed_packages())
    return KernelMachine(cuda=True, capability=tuple(torch.cuda.get_device_capability(0)),
                         packages=installed_packages())


def planned_machine(device: str = "cuda") -> KernelMachine:
    """The estimator's machine: the card a run is planned for (a CUDA card of Ampere class for
    device="cuda", as backend.core.precision assumes a GPU that has the precision) with the packages
    installed here. Never imports torch, so a cached estimate stays import-free."""
    if device != "cuda":
        return KernelMachine(cuda=False, packages=installed_packages())
    return KernelMachine(cuda=True, capability=FLASH_MIN_CAPABILITY, packages=installed_packages())


def _t(cfg: Any, name: str, default: str = "auto") -> str:
    return str(getattr(cfg.train, name, default) or default)


def _liger(cfg: Any, m: KernelMachine) -> KernelChoice:
    want = _t(cfg, "liger_kernel")
    if want == "off":
        return KernelChoice("liger_kernel", False, "Off, as set.")
    why = None
    if not m.cuda:
        why = "Liger's kernels are Triton code for CUDA GPUs, and this machine has none."
    elif "liger_kernel" not in m.packages:
        why = f"liger-kernel is not installed ({INSTALL['liger_kernel']})."
    elif "triton" not in m.packages:
        why = "Triton is not installed (it comes with torch's CUDA wheels); Liger's kernels need it."
    elif cfg.method.name in LIGER_UNSAFE_METHODS:
        why = (f"The {cfg.method.name} method wraps the blocks' modules itself; Liger's patched forwards would "
               "bypass its adapters.")
    if why:
        return KernelChoice("liger_kernel", False, why, problem=want == "on")
    return KernelChoice("liger_kernel", True, (
        "On: Liger's RMSNorm, RoPE and SwiGLU kernels (less activation memory, faster); the loss stays TRL's "
        "chunked LM head, so its fused cross-entropy is not used."))


def _flash_blocker(cfg: Any, m: KernelMachine) -> Optional[str]:
    """Why FlashAttention-2 cannot train this run on `m`, or None."""
    if not m.cuda:
        return "FlashAttention-2 needs a CUDA GPU, and this machine has none."
    if m.capability is not None and tuple(m.capability) < FLASH_MIN_CAPABILITY:
        return (f"FlashAttention-2 needs an Ampere (compute capability 8.0) or newer GPU; this one is "
                f"{m.capability[0]}.{m.capability[1]}.")
    if "flash_attn" not in m.packages:
        return f"flash-attn is not installed ({INSTALL['flash_attn']}; it compiles against your torch and CUDA)."
    if cfg.train.precision == "fp32":
        return "FlashAttention-2 runs in bf16 or fp16 only, and the precision is fp32."
    return None


def _attention(cfg: Any, m: KernelMachine) -> KernelChoice:
    want = _t(cfg, "attention")
    method = catalog.METHODS[cfg.method.name]
    if cfg.method.name == catalog.METHOD.longlora:
        why = "LongLoRA trains with its own shifted sparse attention (S²-Attn), which replaces the model's."
        return KernelChoice("attention", False, why, value="s2_attention", problem=want != "auto")
    if want == "auto":
        blocker = _flash_blocker(cfg, m)
        if blocker is None and method.family == "prompt":
            blocker = ("Prompt and prefix methods lengthen the attention with virtual tokens, which the studio has "
                       "not checked against FlashAttention-2's varlen path.")
        if blocker is None:
            return KernelChoice("attention", True, (
                "On: FlashAttention-2 (no attention mask or score matrix in memory; packed batches go "
                "padding-free)."), value="flash_attention_2")
        return KernelChoice("attention", False, blocker + " Using transformers' default, sdpa (eager where a "
                                                          "model has no sdpa).", value="")
    if want == "flash_attention_2":
        blocker = _flash_blocker(cfg, m)
        if blocker:
            return KernelChoice("attention", False, blocker, value="", problem=True)
        return KernelChoice("attention", True, "On: FlashAttention-2, as set.", value=want)
    if want in ("sdpa", "eager"):
        return KernelChoice("attention", want == "sdpa", f"{want}, as set.", value=want)
    # A hub kernel repo (owner/name).
    if not m.cuda:
        return KernelChoice("attention", False, f"The hub attention kernel {want} needs a CUDA GPU, and this "
                                                "machine has none.", problem=True)
    if "kernels" not in m.packages:
        return KernelChoice("attention", False, f"The hub attention kernel {want} needs the kernels package "
                                                f"({INSTALL['kernels']}).", problem=True)
    return KernelChoice("attention", True, (f"On: the hub kernel {want} (downloaded from the model hub on first "
                                            "use, then cached)."), value=want)


def _fused_adamw(cfg: Any, m: KernelMachine) -> KernelChoice:
    want = _t(cfg, "fused_adamw")
    if want == "off":
        return KernelChoice("fused_adamw", False, "Off, as set.")
    why = None
    if cfg.train.optimizer != catalog.OPTIMIZER.adamw_torch:
        why = f"Fused AdamW replaces adamw_torch only; the optimizer is {cfg.train.optimizer}."
    elif cfg.method.name in OWN_OPTIMIZER_METHODS:
        why = f"The {cfg.method.name} method builds its own optimizer (learning rates per parameter group)."
    elif not m.cuda:
        why = "Fused AdamW is used on CUDA only; on a CPU the plain AdamW loop runs."
    if why:
        return KernelChoice("fused_adamw", False, why, problem=want == "on")
    return KernelChoice("fused_adamw", True, ("On: torch's fused AdamW kernel (one launch per step, no "
                                             "temporary state copies)."), value="adamw_torch_fused")


def _compile(cfg: Any, m: KernelMachine) -> KernelChoice:
    want = _t(cfg, "torch_compile")
    if want != "on":
        return KernelChoice("torch_compile", False, (
            "Off: torch.compile is opt-in (the first steps wait minutes for compilation, and every new batch shape "
            "compiles again)." if want == "auto" else "Off, as set."))
    if catalog.METHODS[cfg.method.name].quantized:
        return KernelChoice("torch_compile", False, ("torch.compile does not trace bitsandbytes' 4-bit layers; "
                                                     "turn it off for QLoRA."), problem=True)
    return KernelChoice("torch_compile", True, "On, as set: the first steps are slow while torch.compile compiles.")


def select_kernels(cfg: Any, machine: Optional[KernelMachine] = None) -> list[KernelChoice]:
    """Each speed switch for `cfg` on `machine` (default: this one): on or off, with the reason."""
    m = machine or this_machine()
    return [_liger(cfg, m), _attention(cfg, m), _fused_adamw(cfg, m), _compile(cfg, m)]


def by_switch(choices: list[KernelChoice]) -> dict[str, KernelChoice]:
    return {c.switch: c for c in choices}


def kernel_problems(cfg: Any, machine: Optional[KernelMachine] = None) -> dict[str, str]:
    """Dotted field -> sentence for each switch asked for that cannot run (validation and the trainer)."""
    return {f"train.{c.switch}": c.reason for c in select_kernels(cfg, machine) if c.problem}


def attention_name(value: str) -> Optional[str]:
    """The attention setting's problem, or None: one of ATTENTIONS or a hub kernel repo owner/name."""
    if value in ATTENTIONS or HUB_KERNEL.match(value or ""):
        return None
    return (f"choose one of {', '.join(ATTENTIONS)}, or a hub attention kernel as owner/name "
            "(e.g. kernels-community/flash-attn2)")


def load_kwargs(cfg: Any, machine: Optional[KernelMachine] = None) -> dict[str, Any]:
    """from_pretrained's `attn_implementation` for cfg: only when an implementation was chosen (flash, a
    hub kernel) or named; otherwise nothing, so transformers keeps its own default (sdpa, or eager for a
    model without sdpa) instead of failing on a model that lacks the one named."""
    att = by_switch(select_kernels(cfg, machine))["attention"]
    if att.problem or not att.value or att.value == "s2_attention":
        return {}
    return {"attn_implementation": att.value}
