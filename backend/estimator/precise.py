"""Precise mode: trace one real training step on fake tensors and read the tensor memory it needs.

The closed form (core.py) is arithmetic over a skeleton; this runs the actual code path training
runs -- the transformers model with the method applied, gradient checkpointing, autocast, TRL's
fused (chunked) LM head and loss, gradient clipping and the optimizer step -- under torch's
FakeTensorMode, so every tensor has a shape, dtype and storage size but no data. torch's own
MemTracker (a TorchDispatchMode) counts the live storages and keeps the peak. Nothing is
allocated for real, so a 7B model traces on a laptop CPU; it costs seconds per layer, which is
why this is an opt-in mode and not the live estimate.

Two steps are traced: the first creates the optimizer states lazily, the second is the steady
state (states exist while activations are alive), which is the peak training actually hits.

Limits, stated in the result's notes: bitsandbytes kernels cannot run on fake tensors, so 8-bit
optimizers are stood in by an optimizer that allocates exactly the state bitsandbytes allocates,
and QLoRA traces LoRA over a 16-bit base whose linear weights are then re-counted at 4-bit size.
CPU fake tensors are not rounded to the CUDA allocator's 512-byte blocks (negligible next to
activations), and the CUDA context and allocator reserve are outside any tensor: compare the
result with the closed form's `allocated_bytes`, which is what torch.cuda.max_memory_allocated
measures.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Optional

import torch
from torch import nn

from backend.core.catalog import OPTIMIZER, OPTIMIZERS
from backend.core.precision import plan_for, torch_dtype
from backend.estimator import terms as T
from backend.estimator.core import estimate
from backend.estimator.plan import method_flags, model_config_of
from backend.estimator.skeleton import cached_shape
from backend.estimator.terms import fused_head_bytes
from backend.methods import apply_method, cast_for_training

# Categories MemTracker attributes storages to, renamed to the estimator's vocabulary.
_CATEGORIES = {"Parameter": "parameters", "Buffer": "buffers", "Gradient": "gradients", "Activation": "activations",
               "Temp": "backward_temporaries", "Optstate": "optimizer", "Other": "inputs"}


class _BnbStateStandIn(torch.optim.Optimizer):
    """Allocates the state bitsandbytes' Optimizer2State.init_state allocates, and does nothing else.

    Its CUDA kernels cannot run on fake tensors; the memory is what matters here. Being a
    torch.optim.Optimizer, MemTracker's global step hooks classify the states as optimizer memory.
    """

    def __init__(self, params: Any, bits: int, min_8bit_size: int = T.BNB_MIN_8BIT_SIZE) -> None:
        super().__init__(params, {"lr": 0.0})
        self.bits, self.min_8bit_size = bits, min_8bit_size

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: ARG002 - the Optimizer signature
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p in self.state:
                    continue
                st = self.state[p]
                if self.bits == 32 or p.numel() < self.min_8bit_size:
                    st["state1"] = torch.zeros_like(p, dtype=torch.float32)
                    st["state2"] = torch.zeros_like(p, dtype=torch.float32)
                else:
                    blocks = math.ceil(p.numel() / T.BNB_8BIT_BLOCK)
                    st["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                    st["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                    st["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                    st["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)


def _optimizer(cfg: Any, params: list[nn.Parameter]) -> Optional[torch.optim.Optimizer]:
    name, lr, wd = cfg.train.optimizer, cfg.train.learning_rate, cfg.train.weight_decay
    if not params:
        return None
    if name == OPTIMIZER.adamw_torch:
        # On CUDA tensors torch picks the foreach implementation by default; fake CPU tensors would not.
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=True)
    if name == OPTIMIZER.sgd:
        return torch.optim.SGD(params, lr=lr, foreach=True)
    if name == OPTIMIZER.adafactor:
        from transformers.optimization import Adafactor
        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    if OPTIMIZERS[name].bitsandbytes:
        return _BnbStateStandIn(params, bits=8 if OPTIMIZERS[name].eight_bit else 32)
    if name == OPTIMIZER.lion:
        from backend.methods.optimizers import Lion
        return Lion(params, lr=lr, weight_decay=wd)
    if name in (OPTIMIZER.schedule_free_adamw, OPTIMIZER.muon, OPTIMIZER.galore_adamw, OPTIMIZER.apollo_adamw):
        # Traced with AdamW's two full states: an upper bound for these (the closed form counts their own).
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}")


def _enable_checkpointing(model: nn.Module) -> None:
    # The same call and arguments as backend.methods.loading.load_trainable_model.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _add_fused_head(model: nn.Module) -> bool:
    """TRL's SFTTrainer patches the base model with a chunked log-prob head; do exactly the same."""
    try:
        from trl.trainer.utils import add_fused_lm_head
    except ImportError:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    return True


def _tracker() -> Any:
    """torch's MemTracker, minus one limitation: it hooks every parameter's gradient, and a frozen
    parameter (the base under LoRA) refuses hooks. Frozen parameters are tracked without one."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class _Tracker(MemTracker):
        def _update_peak_stats(self, peak_state: Any) -> None:
            # Only the global peak is read here; MemTracker also refreshes every active module's
            # peak on every op, which makes a 30-layer model's trace quadratic in its module count.
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

        def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True):
            out = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            if not install_grad_hooks:
                return out
            for param in module.parameters():
                if not param.requires_grad or self._param_to_grad_hook_handles.get(param) is not None:
                    continue
                def track(grad: torch.Tensor) -> None:  # a hook must return None or a tensor
                    self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)
                self._param_to_grad_hook_handles[param] = (
                    param.register_hook(track), param.register_post_accumulate_grad_hook(lambda p: track(p.grad)))
            return out

    return _Tracker()


def _materialize(model: nn.Module) -> None:
    """Meta parameters -> fake CPU ones (call inside FakeTensorMode), keeping tied weights tied."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in model.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mod, name))
    # A module held by two parents (PEFT's trainable token rows, shared by the embedding and the tied head) would be
    # converted twice, and a fake tensor cannot be swapped a second time: each is converted under its first parent.
    shared, seen = [], {id(model)}
    for mod in list(model.modules()):
        for name, child in list(mod._modules.items()):
            if child is not None and id(child) in seen:
                shared.append((mod, name, child))
            elif child is not None:
                seen.add(id(child))
    for mod, name, _child in shared:
        del mod._modules[name]
    try:
        model.to_empty(device="cpu")
    finally:
        for mod, name, child in shared:
            mod._modules[name] = child
    for group in owners.values():
        first = getattr(*group[0])
        for mod, name in group[1:]:
            mod._parameters[name] = first


@contextlib.contextmanager
def _cuda_like_head_kernels():
    """Make TRL's chunked log-prob head allocate what its CUDA path allocates.

    On a GPU each logits tile is folded by a Triton kernel in place and the fp32 gradient GEMMs
    accumulate with out_dtype, allocating nothing; the CPU fallback does the same with torch ops
    that create several tile-sized temporaries, which would be traced as memory the GPU never uses.
    """
    try:
        from trl.kernels import chunked_logprob as kernels
    except ImportError:
        yield
        return
    names = ("_forward_tile", "_backward_tile", "_addmm_fp32")
    saved = {n: getattr(kernels, n, None) for n in names}
    try:
        for n in names:
            if saved[n] is not None:
                setattr(kernels, n, lambda *args, **kwargs: None)
        yield
    finally:
        for n, fn in saved.items():
            if fn is not None:
                setattr(kernels, n, fn)


def _snapshot(mt: Any, kind: str) -> dict[str, int]:
    snap = mt.get_tracker_snapshot(kind)
    out = {v: 0 for v in _CATEGORIES.values()}
    total = 0
    for dev_snap in snap.values():
        for key, value in dev_snap.items():
            name = getattr(key, "value", key)
            if name == "Total":
                total += int(value)
            elif name in _CATEGORIES:
                out[_CATEGORIES[name]] += int(value)
    out["total"] = total
    return out


def _quantized_weight_fix(model: nn.Module, compute_bytes: float, double_quant: bool) -> tuple[int, int]:
    """(bytes to subtract, bytes to add) turning the traced 16-bit frozen linears into NF4 storage."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    traced = nf4 = largest = 0
    for mod in model.modules():
        if isinstance(mod, nn.Linear) and mod is not head and not mod.weight.requires_grad:
            n = mod.weight.numel()
            traced += n * mod.weight.element_size()
            nf4 += T.nf4_bytes(n, double_quant)
            largest = max(largest, n)
    # bitsandbytes dequantizes one weight at a time to the compute dtype during forward and backward.
    return traced, nf4 + int(largest * compute_bytes)


def _meta_model(cfg: Any, model_config: Any, load: Any, quantized: bool) -> nn.Module:
    """The model as training builds it, on the meta device (PEFT cannot swap parameters of fake
    tensors in place); _materialize gives it fake CPU storage afterwards."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=load, trust_remote_code=cfg.trust_remote_code)
    if quantized:
        # prepare_model_for_kbit_training upcasts every parameter that stays unquantized to fp32.
        head = model.get_output_embeddings()
        for mod in model.modules():
            if not (isinstance(mod, nn.Linear) and mod is not head):
                for p in mod.parameters(recurse=False):
                    p.data = p.data.float()
    if cfg.train.gradient_checkpointing:
        _enable_checkpointing(model)
    model.config.use_cache = False
    return cast_for_training(apply_method(model, cfg), cfg)


def _step(mt: Any, first: bool, model: nn.Module, batch: tuple[Any, Any], opt: Any, cfg: Any,
          autocast: Optional[str], fused: bool, phases: dict[str, int]) -> None:
    """One training step; the first one records the peak after forward, backward and the update."""
    ids, mask = batch
    params = [p for p in model.parameters() if p.requires_grad]
    amp = torch.autocast("cpu", dtype=torch_dtype(autocast)) if autocast else contextlib.nullcontext()
    with amp:
        if fused:
            loss = model(input_ids=ids, attention_mask=mask, labels=ids, fused_lm_head=True).loss
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    if first:
        phases["forward"] = _snapshot(mt, "peak")["total"]
    loss.backward()
    del loss
    if first:
        phases["backward"] = _snapshot(mt, "peak")["total"]
    if params and cfg.train.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm, foreach=True)
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    if first:
        phases["optimizer_step"] = _snapshot(mt, "peak")["total"]


def _shift(phases: dict[str, int], peak: dict[str, int], kind: str, delta: int,
           only: Optional[tuple[str, ...]] = None) -> dict[str, int]:
    """Move `delta` bytes into (or out of) the peak's `kind` and the phases it shows in."""
    peak[kind] += delta
    peak["total"] += delta
    return {k: (v + delta if only is None or k in only else v) for k, v in phases.items()}


def precise_estimate(cfg: Any, batch: Optional[int] = None, seq: Optional[int] = None,
                     model_config: Any = None) -> dict[str, Any]:
    """Peak tensor bytes of one real training step of `cfg`, traced on fake tensors on the CPU.

    Returns {"phases_bytes": cumulative peaks after load / first forward / first backward / first
    optimizer step / the steady-state second step, "peak_bytes", "peak_breakdown_bytes" (what was
    live at the peak, by kind), "batch", "seq", "seconds", "notes"}. Raises UserError for methods
    the model cannot be built with.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    started = time.perf_counter()
    batch = int(batch or cfg.train.batch_size)
    seq = int(seq or cfg.data.max_length)
    if model_config is None:
        model_config = model_config_of(cfg)
    uses_peft, quantized = method_flags(cfg.method.name)
    plan = plan_for(cfg)  # the loader's dtypes (backend.core.precision)
    optimizer = OPTIMIZERS[cfg.train.optimizer]
    notes: list[str] = [f"traced on fake CPU tensors: batch {batch} x {seq} tokens, no padding"]
    model = _meta_model(cfg, model_config, torch_dtype(plan.load), quantized)

    phases: dict[str, int] = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        _materialize(model)
        model.train()
        fused = _add_fused_head(model)
        if not fused:
            notes.append("TRL's fused LM head is not installed: traced the plain logits + cross-entropy loss")
        opt = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        if optimizer.bitsandbytes:
            notes.append("bitsandbytes states allocated at their real sizes by a stand-in (its kernels need CUDA)")
        if optimizer.paged:
            notes.append("paged optimizer states live in managed memory, outside max_memory_allocated")
        vocab = int(model_config.get_text_config().vocab_size)
        inputs = (torch.randint(0, vocab, (batch, seq)), torch.ones(batch, seq, dtype=torch.long))

        mt = _tracker()
        mt.track_external(model, opt, *inputs)
        with mt, _cuda_like_head_kernels():
            now = _snapshot(mt, "current")
            phases["load"] = now["total"] - now["inputs"]
            _step(mt, True, model, inputs, opt, cfg, plan.autocast, fused, phases)
            mt.reset_mod_stats()
            _step(mt, False, model, inputs, opt, cfg, plan.autocast, fused, phases)
        peak = _snapshot(mt, "peak")
        phases["steady_state"] = peak["total"]

        if quantized:
            minus, plus = _quantized_weight_fix(model, T.dtype_bytes(plan.compute), cfg.method.double_quant)
            notes.append("QLoRA: traced LoRA over a 16-bit base, frozen linear weights re-counted at NF4 size "
                         "plus one dequantization buffer")
            phases = _shift(phases, peak, "parameters", plus - minus)
        if optimizer.paged:
            # The stand-in put the states on the device; move them out of the counted peak.
            states = sum(t.untyped_storage().nbytes() for s in opt.state.values() for t in s.values()
                         if isinstance(t, torch.Tensor))
            phases = _shift(phases, peak, "optimizer", -states, only=("optimizer_step", "steady_state"))
    total = peak.pop("total")
    return {
        "phases_bytes": phases, "peak_bytes": int(total), "peak_breakdown_bytes": peak,
        "batch": batch, "seq": seq, "seconds": round(time.perf_counter() - started, 2), "notes": notes,
    }


def compare(cfg: Any, batch: Optional[int] = None, seq: Optional[int] = None) -> dict[str, Any]:
    """The precise trace next to the closed form for the same config (same batch and length).

    Reports the closed form as it is and with its `logits` term replaced by `fused_head_bytes`,
    each as a relative error against the trace.
    """
    batch = int(batch or cfg.train.batch_size)
    seq = int(seq or cfg.data.max_length)
    same = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": batch}),
                                  "data": cfg.data.model_copy(update={"max_length": seq})})
    model_config = model_config_of(same)
    closed = estimate(same, gpus=[], model_config=model_config)
    precise = precise_estimate(same, model_config=model_config)
    shape = cached_shape(model_config, same)
    plan = plan_for(same)
    # The head trains when the base trains everywhere (full fine-tuning; tied embeddings included).
    head_trainable = shape.base_trainable > 0 and shape.lowest_grad_layer == 0 and shape.grad_through_all_layers
    fused = fused_head_bytes(batch, seq + (0 if shape.virtual_tokens_in_kv_only else shape.virtual_tokens),
                             shape.vocab, shape.hidden, T.dtype_bytes(plan.compute), head_trainable,
                             T.dtype_bytes(plan.trainable))
    with_fused = closed.allocated_bytes - closed.terms_bytes["logits"] + fused
    peak = precise["peak_bytes"]
    return {
        "closed_form_allocated_bytes": closed.allocated_bytes, "closed_form_terms_bytes": closed.terms_bytes,
        "closed_form_with_fused_head_bytes": with_fused, "fused_head_bytes": fused, "precise": precise,
        "closed_vs_precise_error": (closed.allocated_bytes - peak) / peak if peak else None,
        "fused_closed_vs_precise_error": (with_fused - peak) / peak if peak else None,
    }
