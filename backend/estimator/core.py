"""estimate(cfg) -> Estimate: the terms for one RunConfig on the GPUs at hand (or hypothetical ones).

Three layers, kept apart: the exact skeleton (skeleton.py), the arithmetic here (terms.py does
the per-term formulas), and rendering elsewhere (the Method tab's plot, the CLI's JSON).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from backend.core import kernels as K
from backend.core.catalog import METHOD, METHODS, OBJECTIVES, OPTIMIZER, OPTIMIZERS
from backend.core.errors import UserError
from backend.core.gpu import GpuInfo, hypothetical_gpus, list_gpus
from backend.core.precision import PrecisionPlan, plan_for
from backend.estimator import online, terms as T
from backend.estimator.lengths import DataLengths
from backend.estimator.plan import method_flags, model_config_of
from backend.estimator.skeleton import ModelShape, cached_shape, targeted_linears

# Objectives whose TRL trainer uses the fused (chunked) LM head; the others materialize full logits.
TERMS = ("weights", "gradients", "optimizer", "activations", "logits", "overhead")


@dataclass
class Estimate:
    terms_bytes: dict[str, int]
    formulas: dict[str, str]
    total_bytes: int               # what the card must have free: tensors + allocator reserve + CUDA context
    allocated_bytes: int           # tensor peak, what torch.cuda.max_memory_allocated measures
    trainable_params: int
    total_params: int
    gpus: list[dict[str, Any]] = field(default_factory=list)
    fits: Optional[bool] = None
    headroom_bytes: Optional[int] = None
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, int] = field(default_factory=dict)   # forward_backward / optimizer_step peaks
    dtypes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # term -> per-dtype parts (unsharded)
    per_gpu: list[dict[str, Any]] = field(default_factory=list)
    # With measured data lengths: real tokens and slots to train, packing efficiency (lengths.DataLengths.plan);
    # lengths.eta_seconds(data["tokens_to_train"], tokens_per_s) is the time it takes at a measured rate.
    data: dict[str, Any] = field(default_factory=dict)
    kernels: list[dict[str, Any]] = field(default_factory=list)  # the speed switches counted: on/off and why

    def to_json(self) -> dict[str, Any]:
        return {
            "terms_bytes": dict(self.terms_bytes), "total_bytes": self.total_bytes,
            "trainable_params": self.trainable_params, "total_params": self.total_params,
            "gpus": list(self.gpus), "fits": self.fits, "suggestions": list(self.suggestions),
            "allocated_bytes": self.allocated_bytes, "headroom_bytes": self.headroom_bytes,
            "formulas": dict(self.formulas), "notes": list(self.notes), "phases": dict(self.phases),
            "per_gpu": list(self.per_gpu), "dtypes": {k: list(v) for k, v in self.dtypes.items()},
            "data": dict(self.data),
            "kernels": list(self.kernels),
        }


# ---------------------------------------------------------------------------------- arithmetic

Part = dict[str, Any]  # one row of the per-dtype breakdown: what, params, dtype, bytes_per_param, bytes


def _part(what: str, params: int, dtype: str, nbytes: int) -> Part:
    return {"what": what, "params": int(params), "dtype": dtype,
            "bytes_per_param": round(nbytes / params, 4) if params else 0.0, "bytes": int(nbytes)}


def _weights(shape: ModelShape, plan: PrecisionPlan, double_quant: bool) -> tuple[int, str, list[Part]]:
    b, tb = T.dtype_bytes(plan.base), T.dtype_bytes(plan.trainable)
    adapters = int((shape.adapter_trainable + shape.adapter_frozen) * shape.adapter_bytes_per_param)
    parts: list[Part] = []
    if plan.quantized:
        q = T.nf4_bytes(shape.base_quantizable, double_quant)
        other = int((shape.base_other + shape.base_trainable) * b)
        scales = "8-bit absmax per 64 + fp32 per 256 blocks" if double_quant else "fp32 absmax per 64"
        text = (f"{T.fmt_count(shape.base_quantizable)} linear weights x 4-bit (0.5 B + {scales}) = {T.fmt_bytes(q)}"
                f" + {T.fmt_count(shape.base_other + shape.base_trainable)} other x 4 B (fp32 after "
                f"prepare_model_for_kbit_training) = {T.fmt_bytes(other)}")
        parts += [_part("4-bit linear weights", shape.base_quantizable, "nf4", q),
                  _part("other base weights", shape.base_other + shape.base_trainable, plan.base, other)]
        total = q + other
    else:
        frozen = shape.base_quantizable + shape.base_other
        frozen_b, trained_b = int(frozen * b), int(shape.base_trainable * tb)
        total = frozen_b + trained_b
        pieces = []
        if shape.base_trainable:
            kind = "fp32 master weights" if plan.fp32_master_weights else plan.trainable
            pieces.append(f"{T.fmt_count(shape.base_trainable)} trainable base x {tb:g} B ({kind})")
            parts.append(_part("trainable base weights" + (" (fp32 master copy)" if plan.fp32_master_weights else ""),
                               shape.base_trainable, plan.trainable, trained_b))
        if frozen or not shape.base_trainable:
            pieces.append(f"{T.fmt_count(frozen)} frozen base x {b:g} B ({plan.base})")
            parts.append(_part("frozen base weights", frozen, plan.base, frozen_b))
        text = " + ".join(pieces) + f" = {T.fmt_bytes(total)}"
    if adapters:
        text += (f" + {T.fmt_count(shape.adapter_trainable + shape.adapter_frozen)} adapter params x "
                 f"{shape.adapter_bytes_per_param:g} B = {T.fmt_bytes(adapters)}")
        parts.append(_part("adapter weights", shape.adapter_trainable + shape.adapter_frozen,
                           _dtype_name(shape.adapter_bytes_per_param), adapters))
    return total + adapters, text, parts


def _dtype_name(nbytes: float) -> str:
    return {4: "fp32", 2: "bf16/fp16", 1: "int8"}.get(int(nbytes), f"{nbytes:g} B")


def _gradients(shape: ModelShape, plan: PrecisionPlan) -> tuple[int, str, list[Part]]:
    """Gradients are in their parameter's dtype: fp32 for master weights and adapters."""
    b = T.dtype_bytes(plan.trainable)
    base = int(shape.base_trainable * b)
    adapters = int(shape.adapter_trainable * shape.adapter_bytes_per_param)
    texts, parts = [], []
    if shape.base_trainable:
        texts.append(f"{T.fmt_count(shape.base_trainable)} trainable base x {b:g} B ({plan.trainable})")
        parts.append(_part("base gradients", shape.base_trainable, plan.trainable, base))
    if shape.adapter_trainable:
        texts.append(f"{T.fmt_count(shape.adapter_trainable)} trainable adapter x {shape.adapter_bytes_per_param:g} B")
        parts.append(_part("adapter gradients", shape.adapter_trainable,
                           _dtype_name(shape.adapter_bytes_per_param), adapters))
    return base + adapters, (" + ".join(texts) or "nothing trains") + f" = {T.fmt_bytes(base + adapters)}", parts


def _optimizer(shape: ModelShape, plan: PrecisionPlan, optimizer: str,
               strategy: str, device: str = "cuda") -> tuple[int, str, int, list[Part]]:
    """(state bytes, formula, step temporaries, per-dtype parts). torch's AdamW keeps m and v in the
    parameter's dtype, so mixed precision's fp32 master weights give fp32 states (8 B per parameter)
    and pure bf16 gives bf16 states (4 B)."""
    base_b = T.dtype_bytes(plan.trainable)
    zero_master = strategy in ("zero1", "zero2", "zero3") and optimizer == OPTIMIZER.adamw_torch
    total = master = 0
    eight_bit = OPTIMIZERS[optimizer].eight_bit
    projected = optimizer in (OPTIMIZER.galore_adamw, OPTIMIZER.apollo_adamw)
    for shp, is_base, count in shape.trainable_shapes:
        numel = math.prod(shp)
        pb = base_b if is_base else shape.adapter_bytes_per_param
        if (eight_bit or projected) and is_base and tuple(shp) == (shape.vocab, shape.hidden):
            # The input embedding (a tied head with it) keeps plain AdamW m + v; an untied head of the same
            # shape is an nn.Linear and gets the optimizer's own states. transformers' Trainer registers every
            # nn.Embedding with bitsandbytes for 32-bit states (8-bit embedding states are unstable), and
            # projects only nn.Linear weights for GaLore/APOLLO ("all-linear").
            total += (T.optimizer_tensor_bytes(numel, shp, 4 if eight_bit else pb, OPTIMIZER.adamw_torch)
                      + (count - 1) * T.optimizer_tensor_bytes(numel, shp, pb, optimizer))
            continue
        if optimizer == OPTIMIZER.muon and shape.vocab in tuple(shp):
            # The studio's Muon leaves the embeddings and the head to AdamW (m + v).
            total += count * T.optimizer_tensor_bytes(numel, shp, pb, OPTIMIZER.adamw_torch)
            continue
        if zero_master and pb < 4:
            # DeepSpeed keeps fp32 master weights and fp32 Adam states for 16-bit parameters.
            total += count * T.optimizer_tensor_bytes(numel, shp, 4, optimizer)
            master += count * 4 * numel
        else:
            total += count * T.optimizer_tensor_bytes(numel, shp, pb, optimizer)
    temps = int(T.OPTIMIZER_STEP_TEMP_FACTOR.get(optimizer, 0.0) * total / 2)
    if device != "cuda" and optimizer == OPTIMIZER.adamw_torch:
        # torch's AdamW takes the foreach path only on CUDA; on a CPU it loops tensor by tensor, so its
        # one temporary (the denominator) is the size of the largest trainable tensor.
        temps = int(max((math.prod(shp) * (base_b if is_base else shape.adapter_bytes_per_param)
                         for shp, is_base, _ in shape.trainable_shapes), default=0))
    rule = OPTIMIZERS[optimizer].states
    n = shape.trainable_params
    per = total / n if n else 0.0
    info = OPTIMIZERS[optimizer]
    state_dtype = ("int8 + fp32 scales" if info.eight_bit else "fp32" if info.paged or not shape.base_trainable
                   else plan.trainable)
    text = f"{T.fmt_count(n)} trainable, {rule} = {T.fmt_bytes(total)} ({per:.3g} B/param)"
    if plan.fp32_master_weights and shape.base_trainable and not master:
        text += f"; {per + 4:.3g} B/param with the fp32 master weights (counted under weights)"
    elif plan.pure_bf16 and shape.base_trainable:
        text += "; pure bf16: no fp32 master weights"
    parts = [_part("optimizer states", n, state_dtype, total)] if total else []
    if master:
        text += f" + fp32 master copy {T.fmt_bytes(master)} (DeepSpeed)"
        parts.append(_part("fp32 master copy (DeepSpeed)", n, "fp32", master))
    return total + master, text, temps, parts


def _activations(cfg: Any, shape: ModelShape, plan: PrecisionPlan, device: str = "cuda",
                 lengths: Optional[DataLengths] = None, liger: bool = False) -> tuple[int, str, int, str]:
    """(activation bytes, formula, logits bytes, formula). `device` picks the attention kernel's
    saved tensors (terms.attention_saved_bytes_per_token): the estimate is for a CUDA card unless told.
    `lengths` (the dataset's measured token lengths) sizes the batch by the data."""
    c = T.dtype_bytes(plan.compute)
    batch, seq = cfg.train.batch_size, cfg.data.max_length
    seq_words = f"max length {seq}, no data lengths measured"
    if online.is_online(cfg):
        seq = online.sequence_length(cfg)  # prompt + sampled answer
        seq_words = "prompt + sampled answer"
    elif lengths is not None:
        seq, seq_words = lengths.sequence(cfg.data.max_length, cfg.data.packing)
    vt = shape.virtual_tokens
    hidden_seq = seq if shape.virtual_tokens_in_kv_only else seq + vt
    kv_len = seq + vt
    tokens = batch * hidden_seq
    flash = T.is_flash(shape.attn_implementation)
    # GQA keys are repeated to full heads when a padding mask is used; FlashAttention reads them grouped.
    kv_dim = (shape.kv_heads if flash else shape.heads) * shape.head_dim
    common = dict(hidden=shape.hidden, intermediate=shape.intermediate, kv_dim=kv_dim, heads=shape.heads,
                  kv_len=kv_len, compute_bytes=c, attn_implementation=shape.attn_implementation, liger=liger)
    dropout = cfg.method.dropout > 0 and METHODS[cfg.method.name].lora_family
    # Under autocast each adapter casts its own input (fp32 for PEFT, then back to the compute dtype),
    # and dropout gives each its own copy; only in plain fp32 without dropout do siblings share one.
    shared = c >= 4 and not dropout
    adapter_in = (shape.adapter_distinct_in_features_per_layer if shared else shape.adapter_in_features_per_layer)
    per_full = T.layer_activation_bytes_per_token(base_trainable=True, adapter_in_features=adapter_in,
                                                  adapter_dropout=dropout, **common)
    per_frozen = T.layer_activation_bytes_per_token(base_trainable=False, adapter_in_features=adapter_in,
                                                    adapter_dropout=dropout, **common)
    orth_token, orth_step = _orthogonal_per_layer(cfg, shape, c)
    per_full += orth_token
    per_frozen += orth_token
    recorded = range(shape.lowest_grad_layer, shape.layers)
    n_full = sum(1 for i in recorded if i in set(shape.trained_layers))
    n_frozen = len(recorded) - n_full
    # The final norm's saved tensors (fp32 input and output; Liger: its input and the fp32 rstd).
    head = T.rmsnorm_saved_bytes(shape.hidden, c, True, liger) if len(recorded) else 0
    mask = 0 if flash else batch * hidden_seq * kv_len  # one shared boolean 4-D mask; flash's varlen path has none
    if cfg.train.gradient_checkpointing and len(recorded):
        one = max(per_full if n_full else 0, per_frozen if n_frozen else 0) * tokens
        acts = T.checkpointed_activation_bytes(len(recorded), tokens, shape.hidden, c, one)
        how = (f"checkpointing: {len(recorded)} block inputs x {T.fmt_count(tokens)} tokens x {shape.hidden} x {c:g} B"
               f" + one block recomputed {T.fmt_bytes(one)}")
    else:
        acts = int(tokens * (n_full * per_full + n_frozen * per_frozen))
        how = (f"{T.fmt_count(tokens)} tokens x ({n_full} trained blocks x {T.fmt_bytes(per_full)}"
               f" + {n_frozen} frozen blocks x {T.fmt_bytes(per_frozen)} per token)")
    acts += int(tokens * head) + mask
    extras = []
    if orth_step and len(recorded):
        # Rebuilt each forward; with checkpointing only the recomputed block holds its rotation at a time.
        blocks = 1 if cfg.train.gradient_checkpointing else len(recorded)
        rot = int(orth_step * blocks)
        acts += rot
        extras.append(f"{METHODS[cfg.method.name].title.split(' (')[0]} rotations built in the forward pass "
                      f"{blocks} x {T.fmt_bytes(orth_step)} = {T.fmt_bytes(rot)}")
    if plan.quantized:
        buf = int(shape.largest_linear * c)
        acts += buf
        extras.append(f"4-bit dequantization buffer {T.fmt_bytes(buf)}")
    if plan.fp32_master_weights:
        # Autocast casts each fp32 trainable weight to the compute dtype and keeps the copy for backward.
        # Only matmul weights go through autocast's cast: not norms (1-D), nor the embedding lookup,
        # nor TRL's chunked head, which casts one tile of the head at a time.
        cast = sum(math.prod(dims) * n for dims, is_base, n in shape.trainable_shapes
                   if is_base and len(dims) == 2 and tuple(dims) != (shape.vocab, shape.hidden))
        cache = int(cast * c)
        acts += cache
        extras.append(f"{plan.compute} autocast copies of the fp32 weights {T.fmt_bytes(cache)}")
    if cfg.distributed.strategy in ("zero3", "fsdp") and _world(cfg) > 1:
        gathered = int(2 * shape.largest_layer_params * T.dtype_bytes(plan.base))
        acts += gathered
        extras.append(f"two gathered blocks {T.fmt_bytes(gathered)}")
    text = how + (" + " + " + ".join(extras) if extras else "") + f" = {T.fmt_bytes(acts)}"
    if liger:
        text += (f"; Liger kernels: RMSNorm keeps its input + fp32 rstd ({c:g}·h + 4 B instead of 4·h fp32), "
                 f"SwiGLU keeps gate and up (2·{c:g}·I, SiLU recomputed)")
    if flash:
        text += (f"; {shape.attn_implementation}: no 4-D mask, no score matrix, keys/values at "
                 f"{shape.kv_heads} KV heads, fp32 log-sum-exp per head")
    # Say where the sequence length comes from: the data's real lengths, or max length as a worst case.
    text += f"; {batch} x {seq} tokens per batch, {seq} being {seq_words}"
    if vt:
        text += f" (sequence lengthened by {vt} virtual tokens)"

    logit_seq = seq if shape.virtual_tokens_in_kv_only else seq + vt
    if online.is_online(cfg):
        positions = online.logits_positions(cfg)
        logits = T.logits_bytes(batch, positions, shape.vocab, plan.compute)
        per = T.dtype_bytes(plan.compute) + 4 * T.LOGITS_FP32_COPIES
        ltext = (f"{batch} answers x {positions} answer tokens x {T.fmt_count(shape.vocab)} vocab x {per:g} B "
                 f"(GRPO/RLOO keep logits of the answer only) = {T.fmt_bytes(logits)}")
    elif OBJECTIVES[cfg.objective].fused_head:
        # TRL's SFT/DPO/KTO trainers score tokens through a chunked LM head and never hold the full
        # batch x sequence x vocabulary logits; what remains is one logits tile, the fp32 gradient of the
        # hidden states and, when the head trains, its fp32 gradient accumulator.
        head_trains = any(is_base and tuple(dims) == (shape.vocab, shape.hidden)
                          for dims, is_base, _ in shape.trainable_shapes)
        logits = T.fused_head_bytes(batch, logit_seq, shape.vocab, shape.hidden, c, head_trains,
                                    T.dtype_bytes(plan.trainable), device)
        ltext = (f"chunked LM head (TRL): one logits tile of min({batch} x {logit_seq - 1}, 4096) tokens x "
                 f"min({T.fmt_count(shape.vocab)}, 32768) vocab"
                 + (" (+ the CPU fallback's fp32 temporaries)" if device != "cuda" else "")
                 + " + fp32 hidden-state gradient"
                 + (" + fp32 head gradient" if head_trains else "") + f" = {T.fmt_bytes(logits)}"
                 + ("; Liger's fused cross-entropy stays off: TRL's chunked head computes the loss" if liger else ""))
    else:
        logits = T.logits_bytes(batch, logit_seq, shape.vocab, plan.compute)
        per = T.dtype_bytes(plan.compute) + 4 * T.LOGITS_FP32_COPIES
        ltext = (f"{batch} x {logit_seq} tokens x {T.fmt_count(shape.vocab)} vocab x {per:g} B "
                 f"({plan.compute} logits + fp32 copies for the loss) = {T.fmt_bytes(logits)}")
    return acts, text, logits, ltext


def _orthogonal_per_layer(cfg: Any, shape: ModelShape, compute_bytes: float) -> tuple[float, float]:
    """OFT/BOFT's saved bytes per token and per step, for the average block (terms.orthogonal_saved_bytes)."""
    if not METHODS[cfg.method.name].orthogonal:
        return 0.0, 0.0
    layers = max(shape.layers, 1)
    adapted = [(i, o) for _, i, o, _ in targeted_linears(shape, cfg.method.target_modules)]
    kind = "boft" if cfg.method.name == METHOD.boft else "oft"
    per_token, per_step = T.orthogonal_saved_bytes(kind, adapted, cfg.method.oft_block_size, compute_bytes,
                                                   neumann=cfg.method.oft_cayley_neumann)
    return per_token / layers, per_step / layers


def _boft_buffers(cfg: Any, shape: ModelShape) -> int:
    if cfg.method.name != METHOD.boft:
        return 0
    return T.boft_buffer_bytes([i for _, i, _, _ in targeted_linears(shape, cfg.method.target_modules)])


def _world(cfg: Any) -> int:
    return cfg.distributed.gpus * cfg.distributed.nodes


def _compute(cfg: Any, shape: ModelShape, device: str = "cuda", lengths: Optional[DataLengths] = None,
             kernel_machine: Optional[K.KernelMachine] = None) -> Estimate:
    uses_peft, quantized = method_flags(cfg.method.name)
    # The speed switches as the planned machine would set them (backend.core.kernels): flash attention and
    # Liger change the activations, fused AdamW the step's temporaries; torch.compile changes no term.
    speed = K.by_switch(K.select_kernels(cfg, kernel_machine or K.planned_machine(device)))
    attention = speed["attention"]
    if attention.value and attention.value != "s2_attention" and not attention.problem:
        shape = dataclasses.replace(shape, attn_implementation=attention.value)
    plan = plan_for(cfg)  # the loader's dtypes, as configured
    strategy, world = cfg.distributed.strategy, _world(cfg)
    if strategy.startswith("zero") and plan.fp32_master_weights:
        # DeepSpeed casts the module to the compute dtype and keeps its own fp32 master copy and fp32
        # states in the optimizer (counted there: 12 B per parameter), so the model holds 16-bit weights.
        plan = dataclasses.replace(plan, trainable=plan.compute, fp32_master_weights=False)
    weights, wf, wparts = _weights(shape, plan, cfg.method.double_quant)
    buffers = _boft_buffers(cfg, shape)
    if buffers:
        weights += buffers
        wf += f" + BOFT's fp32 in x in permutation buffer per adapted layer {T.fmt_bytes(buffers)}"
        wparts.append(_part("BOFT permutation buffers", buffers // 4, "fp32", buffers))
    grads, gf, gparts = _gradients(shape, plan)
    opt, of, temps, oparts = _optimizer(shape, plan, cfg.train.optimizer, strategy, device)
    acts, af, logits, lf = _activations(cfg, shape, plan, device, lengths, liger=speed["liger_kernel"].on)
    if shape.token_rows:
        # PEFT's trainable token rows are written into a copy of the whole matrix on every forward. The head's copy
        # is kept for backward, TRL's chunked head accumulates that copy's gradient in fp32 and casts it to the
        # weight's dtype before the rows are picked out (matches the traced step, estimator.precise, to 1%).
        base_b = T.dtype_bytes(plan.base)
        per_row = base_b + 4 + (base_b if base_b != 4 else 0)
        extra = int(shape.vocab * shape.hidden * per_row)
        acts += extra
        af += f" + added-token rows: {shape.vocab} x {shape.hidden} x {per_row:g} B = {T.fmt_bytes(extra)}"
    if speed["fused_adamw"].on and temps:
        # The fused kernel updates each parameter in place: no foreach list of temporaries.
        of += f"; fused AdamW: no step temporaries (instead of {T.fmt_bytes(temps)})"
        temps = 0

    sharded = {"weights": T.shard(weights, "weights", strategy, world),
               "gradients": T.shard(grads, "gradients", strategy, world),
               "optimizer": T.shard(opt, "optimizer", strategy, world)}
    temps = T.shard(temps, "optimizer", strategy, world)
    notes: list[str] = []
    wf, gf, of = (f + (f" / {world} GPUs ({strategy}) = {T.fmt_bytes(sharded[k])}" if sharded[k] != v else "")
                  for f, k, v in ((wf, "weights", weights), (gf, "gradients", grads), (of, "optimizer", opt)))
    if strategy == "ddp" and world > 1 and grads:
        # DDP's all-reduce buckets are a second copy of the gradients (gradient_as_bucket_view is off).
        sharded["gradients"] += grads
        gf += f" + DDP buckets {T.fmt_bytes(grads)}"

    objective = OBJECTIVES.get(cfg.objective)
    if objective is not None and objective.uses_reference and not uses_peft:
        # Without an adapter to switch off, TRL keeps a frozen copy of the starting model for the
        # reference log-probabilities (with PEFT the reference is the same model, adapter disabled).
        # TRL loads it in the policy's `model.dtype` (its embeddings' dtype): fp32 when the
        # embeddings train as fp32 master weights, else the frozen base dtype.
        ref_dtype = plan.trainable if shape.grad_through_all_layers else plan.base
        ref = int(shape.total_params * T.dtype_bytes(ref_dtype))
        sharded["weights"] += ref
        wf += f" + frozen reference model {T.fmt_count(shape.total_params)} params x {T.dtype_bytes(ref_dtype):g} B"
        wparts.append(_part("frozen reference model", shape.total_params, ref_dtype, ref))
    generation = 0
    if online.is_online(cfg):
        extra = online.online_terms(cfg, shape, plan.compute,
                                    plan.trainable if shape.grad_through_all_layers else plan.base, uses_peft)
        if extra.extra_weights:
            sharded["weights"] += extra.extra_weights
            wf += f" + {extra.weights_text}"
        generation = extra.generation
        notes.append("GRPO/RLOO sample answers before each update; the " + extra.generation_text +
                     " is a phase of its own, counted when it is larger than the training step's.")
    paged = sharded["optimizer"] if OPTIMIZERS[cfg.train.optimizer].paged else 0
    backward = acts + logits + (sharded["gradients"] if cfg.train.gradient_accumulation > 1 else 0)
    step = sharded["gradients"] + temps
    tied = [n for dims, is_base, n in shape.trainable_shapes if is_base and tuple(dims) == (shape.vocab, shape.hidden)]
    if tied == [1] and shape.grad_through_all_layers and world == 1:
        # A trained tied embedding ends backward with three vocabulary-sized fp32-or-parameter-dtype
        # tensors next to every other gradient: the head's gradient, the embedding lookup's dense
        # gradient and their sum (measured with MemTracker: bench/memory_truth.py).
        emb = shape.vocab * shape.hidden * T.dtype_bytes(plan.trainable)
        step = max(step, int(sharded["gradients"] + 2 * emb))
    allocated = sharded["weights"] + (sharded["optimizer"] - paged) + max(backward, step, generation)
    overhead = T.overhead_bytes(allocated)
    total = allocated + paged + overhead
    of_extra = f"; step temporaries {T.fmt_bytes(temps)}" if temps else ""
    formulas = {
        "weights": wf, "gradients": gf, "optimizer": of + of_extra, "activations": af, "logits": lf,
        "overhead": (f"allocator reserve {T.ALLOCATOR_RESERVE_FRACTION:.0%} of {T.fmt_bytes(allocated)} + CUDA "
                     f"context {T.fmt_bytes(T.CUDA_CONTEXT_BYTES)} = {T.fmt_bytes(overhead)}"),
    }
    phase = "forward/backward (activations + logits" + (" + accumulated gradients" if
                                                        cfg.train.gradient_accumulation > 1 else "") + ")"
    notes.append("Gradients and activations are not all held at once: the peak counts weights + optimizer "
                 f"states + the larger of the {phase} and the optimizer step (gradients + temporaries); "
                 f"here the {'forward/backward' if backward >= step else 'optimizer step'} phase is larger.")
    if speed["torch_compile"].on:
        notes.append("torch.compile is counted as changing no term: it fuses kernels for speed, and its "
                     "memory savings are not modelled.")
    if paged:
        notes.append("Paged optimizer states live in managed memory: torch does not count them as allocated, "
                     "and they can spill to CPU RAM under pressure (slower, but no out-of-memory error).")
    if shape.max_positions and cfg.data.max_length > int(shape.max_positions):
        notes.append(f"The sequence length {cfg.data.max_length} is above the model's maximum "
                     f"({shape.max_positions}).")
    return Estimate(
        terms_bytes={"weights": sharded["weights"], "gradients": sharded["gradients"],
                     "optimizer": sharded["optimizer"], "activations": acts, "logits": logits, "overhead": overhead},
        formulas=formulas, total_bytes=int(total), allocated_bytes=int(allocated),
        trainable_params=shape.trainable_params, total_params=shape.total_params, notes=notes,
        dtypes={"weights": wparts, "gradients": gparts, "optimizer": oparts},
        phases={"forward_backward": int(backward), "optimizer_step": int(step),
                **({"generation": int(generation)} if generation else {})},
        kernels=[c.to_json() for c in speed.values()],
    )


# ---------------------------------------------------------------------------------- GPUs and fit

def _judge(est: Estimate, gpus: list[GpuInfo], needed: int, hypothetical: bool, precision: str) -> None:
    est.gpus = [g.to_json() for g in gpus]
    if not gpus:
        est.notes.insert(0, "No GPU was found (no NVIDIA driver or device): the estimate is for reference; "
                            "pass --gpus N --gpu-memory GB to check a card you plan to use.")
        return
    chosen = sorted(gpus, key=lambda g: g.free_bytes, reverse=True)[:needed]
    est.per_gpu = [{"index": g.index, "name": g.name, "free_bytes": g.free_bytes, "total_bytes": g.total_bytes,
                    "needed_bytes": est.total_bytes, "headroom_bytes": g.free_bytes - est.total_bytes,
                    "fits": g.free_bytes >= est.total_bytes} for g in chosen]
    est.headroom_bytes = min(g["headroom_bytes"] for g in est.per_gpu)
    est.fits = all(g["fits"] for g in est.per_gpu) and len(gpus) >= needed
    if precision == "bf16" and any(g.bf16 is False for g in chosen):
        est.notes.append("This GPU has no native bf16 (it needs compute capability 8.0, Ampere or newer): "
                         "choose fp16 precision.")
    if len(gpus) < needed:
        est.notes.append(f"The run asks for {needed} GPUs per node but only {len(gpus)} "
                         f"{'were given' if hypothetical else 'were found'}.")


def _variants(cfg: Any, lengths: Optional[DataLengths] = None) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """(sentence start, {section: {field: value}}) for each single-GPU change that can save memory."""
    t, m, d = cfg.train, cfg.method, cfg.data
    out: list[tuple[str, dict[str, dict[str, Any]]]] = []
    if not t.gradient_checkpointing:
        out.append(("Enable gradient checkpointing", {"train": {"gradient_checkpointing": True}}))
    if t.batch_size > 1:
        acc = t.gradient_accumulation * t.batch_size
        out.append((f"Lower the batch size from {t.batch_size} to 1 and raise gradient accumulation from "
                    f"{t.gradient_accumulation} to {acc} (same effective batch)",
                    {"train": {"batch_size": 1, "gradient_accumulation": acc}}))
    if METHODS[m.name].qlora_switch:
        out.append(("Switch to QLoRA (4-bit base, LoRA adapters)", {"method": {"name": METHOD.qlora}}))
    if t.optimizer in (OPTIMIZER.adamw_torch, OPTIMIZER.paged_adamw_32bit):
        out.append(("Use the 8-bit AdamW optimizer", {"train": {"optimizer": OPTIMIZER.adamw_8bit}}))
    if t.precision == "fp32":
        out.append(("Train in bf16 (if the GPU supports it)", {"train": {"precision": "bf16"}}))
    if lengths is not None:
        # From the data: a max length that keeps 99 % of the rows whole, instead of a blind halving.
        target = lengths.suggested_max_length()
        if target < d.max_length:
            out.append((f"Set max length from {d.max_length} to {target} tokens (99% of the rows are at most "
                        f"{lengths.quantile()} tokens)", {"data": {"max_length": target}}))
    elif d.max_length > 256:
        out.append((f"Shorten sequences from {d.max_length} to {d.max_length // 2} tokens",
                    {"data": {"max_length": d.max_length // 2}}))
    if online.is_online(cfg):
        a = cfg.alignment
        if a.max_completion_length > 64:
            out.append((f"Shorten sampled answers from {a.max_completion_length} to {a.max_completion_length // 2} "
                        "tokens", {"alignment": {"max_completion_length": a.max_completion_length // 2}}))
        if a.kl_coef > 0:
            out.append(("Set the KL penalty to 0 (no reference model or adapter copy)", {"alignment": {"kl_coef": 0.0}}))
    return out


def _apply_changes(cfg: Any, changes: dict[str, dict[str, Any]]) -> Any:
    update = {section: getattr(cfg, section).model_copy(update=fields) for section, fields in changes.items()}
    return cfg.model_copy(update=update)


def _zero3(cfg: Any, model_config: Any, capacity: int,
           lengths: Optional[DataLengths] = None) -> Optional[tuple[int, Estimate]]:
    """The fewest GPUs (up to 64) with ZeRO-3 that fit; else 8 GPUs as an illustration."""
    best = None
    for world in (2, 4, 8, 16, 32, 64):
        if world <= _world(cfg):
            continue
        dist = cfg.distributed.model_copy(update={"strategy": "zero3", "gpus": world, "nodes": 1})
        other = _compute(cfg.model_copy(update={"distributed": dist}), cached_shape(model_config, cfg), lengths=lengths)
        if other.total_bytes <= capacity:
            return world, other
        if world == 8:
            best = (world, other)
    return best


def _suggest(cfg: Any, model_config: Any, est: Estimate, capacity: int,
             lengths: Optional[DataLengths] = None) -> list[str]:
    """Concrete changes ranked by how much they save, each with the saving and whether it then fits."""
    def sentence(text: str, other: Estimate) -> tuple[int, str]:
        # The saving is said against the headline figure, in the headline's unit (GiB), so a
        # suggestion never reads as needing more than the headline.
        saving = est.total_bytes - other.total_bytes
        verdict = "fits" if other.total_bytes <= capacity else "still too large"
        return saving, (f"{text}: saves {T.fmt_bytes(saving)} of the {T.fmt_bytes(est.total_bytes)} needed, "
                        f"leaving {T.fmt_bytes(other.total_bytes)} ({verdict}).")

    ranked: list[tuple[int, str]] = []
    variants = _variants(cfg, lengths)
    for text, changes in variants:
        try:
            variant = _apply_changes(cfg, changes)
            ranked.append(sentence(text, _compute(variant, cached_shape(model_config, variant), lengths=lengths)))
        except Exception:  # noqa: BLE001 - a suggestion that cannot be computed is just left out
            continue
    zero = _zero3(cfg, model_config, capacity, lengths)
    if zero is not None:
        ranked.append(sentence(f"Use {zero[0]} GPUs with ZeRO-3 (per GPU)", zero[1]))
    ranked = [r for r in ranked if r[0] > 0]
    ranked.sort(key=lambda x: -x[0])
    out = [s for _, s in ranked]
    if len(variants) > 1 and all("(fits)" not in s for s in out):
        merged: dict[str, dict[str, Any]] = {}
        for _, changes in variants:
            for section, fields in changes.items():
                merged.setdefault(section, {}).update(fields)
        try:
            combined = _apply_changes(cfg, merged)
            _, text = sentence("All of these single-GPU changes together",
                               _compute(combined, cached_shape(model_config, combined), lengths=lengths))
            out.append(text)
        except Exception:  # noqa: BLE001
            pass
    return out


def estimate(cfg: Any, gpus: Optional[list[GpuInfo]] = None, gpu_count: Optional[int] = None,
             gpu_memory_gb: Optional[float] = None, model_config: Any = None, device: str = "cuda",
             lengths: Optional[DataLengths] = None, kernel_machine: Optional[K.KernelMachine] = None) -> Estimate:
    """Memory needed to train `cfg`, term by term, and whether it fits.

    gpus None probes the machine (NVML); gpu_memory_gb (with gpu_count, default the config's GPU
    count) asks about a hypothetical card instead. model_config skips loading cfg.model's config.
    lengths (the dataset's measured token lengths) sizes the batch by the data instead of max length.
    kernel_machine: the machine the speed switches are judged for (default: a CUDA card with the kernel
    packages installed here, or this CPU for device="cpu").
    """
    if model_config is None:
        model_config = model_config_of(cfg, light=True)  # no transformers import when the skeleton is cached
    shape = cached_shape(model_config, cfg)
    est = _compute(cfg, shape, device, lengths, kernel_machine)
    if lengths is not None and not online.is_online(cfg):
        est.data = lengths.plan(cfg, padding_free=cfg.data.packing and "flash" in shape.attn_implementation)
    hypothetical = gpu_memory_gb is not None
    if hypothetical:
        if gpu_memory_gb <= 0:
            raise UserError(f"--gpu-memory must be a positive number of GB (got {gpu_memory_gb}).")
        gpus = hypothetical_gpus(gpu_count or cfg.distributed.gpus, gpu_memory_gb)
    elif gpus is None:
        gpus = list_gpus()
        if gpu_count is not None:
            gpus = gpus[:gpu_count]
    _judge(est, gpus, cfg.distributed.gpus, hypothetical, cfg.train.precision)
    if est.fits is False:
        capacity = min(g["free_bytes"] for g in est.per_gpu)
        est.suggestions = _suggest(cfg, model_config, est, capacity, lengths)
    return est
