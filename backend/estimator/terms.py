"""The closed-form memory terms, in bytes. Pure arithmetic, each term testable alone.

Written by hand because no library predicts training memory term by term (accelerate's
estimator ignores activations, batch and sequence). The numbers follow the textbook
formulas (16 B per parameter for mixed-precision AdamW, NF4 block scales, ...) and what the installed libraries actually allocate (torch AdamW, bitsandbytes,
PEFT, transformers' Llama-style blocks); every constant a GPU measurement should tune lives
in the CALIBRATION block below.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

from backend.core.catalog import OPTIMIZER, OPTIMIZERS

# --------------------------------------------------------------------------------------------
# CALIBRATION. The only numbers the GPU benchmark (bench/gpu_memory_matrix.py, on a CUDA machine)
# is expected to change.
# --------------------------------------------------------------------------------------------
# CUDA context + cuBLAS/cuDNN handles: resident on the card, invisible to
# torch.cuda.max_memory_allocated. Typical for torch 2.x on Ampere/Hopper: 0.4-0.7 GiB.
CUDA_CONTEXT_BYTES = 600 * 2**20
# The caching allocator reserves more than it hands out (block rounding, fragmentation).
ALLOCATOR_RESERVE_FRACTION = 0.10
# Multiplier on the per-layer activation formula, per attention implementation. 1.0 means the
# formula as derived below (saved tensors of a Llama-style block); measurement scales it.
ACTIVATION_FACTOR = {"sdpa": 1.0, "flash_attention_2": 1.0, "flash_attention_3": 1.0, "eager": 1.0}
# Causal-LM loss: the compute-dtype logits, their fp32 upcast, log_softmax's saved fp32 output
# and the fp32 gradients in backward. Bytes per logit element on top of the compute dtype.
LOGITS_FP32_COPIES = 3
# torch AdamW (foreach) allocates about one state-sized temporary list during step()
# (sqrt(v) / bias correction); bitsandbytes' fused kernels allocate next to nothing.
OPTIMIZER_STEP_TEMP_FACTOR = {name: 0.0 for name in OPTIMIZERS} | {OPTIMIZER.adamw_torch: 1.0, OPTIMIZER.adafactor: 0.5}
# --------------------------------------------------------------------------------------------

GB = 10**9
GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "float32": 4, "tf32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
               "int8": 1, "fp8": 1, "nf4": 0.5, "fp4": 0.5, "int4": 0.5}

NF4_BLOCK = 64            # bitsandbytes Params4bit default blocksize
NF4_NESTED_BLOCK = 256    # double quantization: one fp32 scale per 256 absmax values
NF4_CODE_TABLE = 256 * 4  # the fp32 code book kept per double-quantized tensor
BNB_8BIT_BLOCK = 256      # bitsandbytes 8-bit optimizer state blocksize
BNB_MIN_8BIT_SIZE = 4096  # tensors with fewer elements keep 32-bit optimizer states
GALORE_RANK = 128         # transformers' default GaLore/APOLLO projection rank (optim_args rank=...)
# States per element, as multiples of the parameter's bytes, of the optimizers that keep full-size states.
FULL_STATES = {OPTIMIZER.adamw_torch: 2, OPTIMIZER.lion: 1, OPTIMIZER.schedule_free_adamw: 2}


def dtype_bytes(dtype: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}") from None


def nf4_bytes(params: int, double_quant: bool = True, tensors: int = 1) -> int:
    """bitsandbytes 4-bit storage: 0.5 B per weight + block scales.

    Without double quantization: one fp32 absmax per 64 weights. With it: the absmax values are
    stored as 8-bit (1 B per 64 weights) plus one fp32 scale per 256 of them and a small fp32
    code table per tensor.
    """
    codes = math.ceil(params / 2)
    blocks = math.ceil(params / NF4_BLOCK)
    if not double_quant:
        return codes + 4 * blocks
    nested = math.ceil(blocks / NF4_NESTED_BLOCK)
    return codes + blocks + 4 * nested + tensors * (NF4_CODE_TABLE + 4)


def weight_bytes(params: int, dtype: str = "bf16", double_quant: bool = True) -> int:
    """Parameters x bytes per parameter; nf4/fp4 include their block scales."""
    if dtype in ("nf4", "fp4"):
        return nf4_bytes(params, double_quant)
    return int(params * dtype_bytes(dtype))


def gradient_bytes(trainable: int, dtype: str = "bf16") -> int:
    """One gradient per trainable parameter, in the parameter's dtype."""
    return int(trainable * dtype_bytes(dtype))


def optimizer_state_breakdown(trainable: int, optimizer: str = OPTIMIZER.adamw_torch, state_dtype: str = "fp32",
                              master_copy: bool = False) -> dict[str, int]:
    """Per-state bytes for `trainable` parameters held as large tensors.

    torch AdamW keeps m and v in the parameter dtype (pass state_dtype accordingly); the usual
    textbook convention is fp32 m and v. `master_copy` adds the fp32 weights that mixed precision
    schemes such as DeepSpeed ZeRO keep next to 16-bit parameters.
    """
    out: dict[str, int] = {}
    info = OPTIMIZERS.get(optimizer)
    if optimizer in (OPTIMIZER.adamw_torch, "adam", "adamw", OPTIMIZER.schedule_free_adamw):
        b = dtype_bytes(state_dtype)
        out = {"m": int(trainable * b), "v": int(trainable * b)}
    elif optimizer in (OPTIMIZER.lion, OPTIMIZER.muon):
        out = {"m": int(trainable * dtype_bytes(state_dtype))}  # one momentum (Muon: for its matrices)
    elif optimizer in (OPTIMIZER.galore_adamw, OPTIMIZER.apollo_adamw):
        side = math.isqrt(max(trainable, 1))  # a square matrix: see projected_bytes
        out = {"projected m + v": projected_bytes((side, side), dtype_bytes(state_dtype),
                                                  capped=optimizer == OPTIMIZER.galore_adamw)}
    elif info and info.eight_bit:
        per_state = trainable + 4 * math.ceil(trainable / BNB_8BIT_BLOCK)
        out = {"m": per_state, "v": per_state}
    elif info and info.paged:
        out = {"m": 4 * trainable, "v": 4 * trainable}
    elif optimizer == OPTIMIZER.sgd:
        out = {}  # transformers' SGD has no momentum unless optim_args set one
    elif optimizer == OPTIMIZER.adafactor:
        # Without shapes assume the factored worst case of a square matrix; see adafactor_bytes.
        side = math.isqrt(max(trainable, 1))
        out = {"v_row_col": int(2 * side * dtype_bytes(state_dtype))}
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if master_copy:
        out["master"] = 4 * trainable
    return out


def optimizer_bytes(trainable: int, optimizer: str = OPTIMIZER.adamw_torch, state_dtype: str = "fp32",
                    master_copy: bool = False) -> int:
    return sum(optimizer_state_breakdown(trainable, optimizer, state_dtype, master_copy).values())


def optimizer_tensor_bytes(numel: int, shape: tuple[int, ...], param_bytes: float, optimizer: str) -> int:
    """Optimizer state bytes for one trainable tensor (exact per library rules)."""
    info = OPTIMIZERS.get(optimizer)
    if optimizer in FULL_STATES:
        return int(FULL_STATES[optimizer] * numel * param_bytes)
    if optimizer == OPTIMIZER.muon:
        # torch's Muon keeps one momentum buffer per matrix; the studio gives the rest (1-D tensors, and the
        # embeddings and head, which the estimator's caller routes to AdamW) to AdamW's m + v.
        return int((1 if len(shape) == 2 else 2) * numel * param_bytes)
    if optimizer in (OPTIMIZER.galore_adamw, OPTIMIZER.apollo_adamw):
        if len(shape) != 2:
            return int(2 * numel * param_bytes)
        return projected_bytes(shape, param_bytes, capped=optimizer == OPTIMIZER.galore_adamw)
    if info and info.eight_bit:
        if numel < BNB_MIN_8BIT_SIZE:
            return 8 * numel  # bitsandbytes keeps small tensors' states in fp32
        return 2 * (numel + 4 * math.ceil(numel / BNB_8BIT_BLOCK))
    if info and info.paged:
        return 8 * numel
    if optimizer == OPTIMIZER.sgd:
        return 0
    if optimizer == OPTIMIZER.adafactor:
        return adafactor_bytes(shape, param_bytes)
    raise ValueError(f"unknown optimizer {optimizer!r}")


def projected_bytes(shape: tuple[int, ...], param_bytes: float, rank: int = GALORE_RANK,
                    capped: bool = True) -> int:
    """GaLore/APOLLO on an m x n matrix: AdamW's m and v on the rank-r projected gradient (r x max(m, n))
    plus the projection matrix (min(m, n) x r). GaLore's projection comes from an SVD, so its rank is capped
    at the smaller side; APOLLO's is a random matrix of the full rank whatever the shape (capped=False:
    measured on galore-torch 1.0 and apollo-torch 1.0.3)."""
    rows, cols = shape
    r = min(rank, rows, cols) if capped else rank
    return int((2 * r * max(rows, cols) + r * min(rows, cols)) * param_bytes)


def adafactor_bytes(shape: tuple[int, ...], param_bytes: float) -> int:
    """transformers' Adafactor without beta1: factored row + column second moments for matrices."""
    if len(shape) >= 2:
        rows = math.prod(shape[:-1])
        cols = math.prod(shape[:-2]) * shape[-1]
        return int((rows + cols) * param_bytes)
    return int(math.prod(shape) * param_bytes)


def lora_params(d_in: int, d_out: int, r: int) -> int:
    """A is r x d_in, B is d_out x r."""
    return r * (d_in + d_out)


def dora_params(d_in: int, d_out: int, r: int) -> int:
    """LoRA plus one magnitude per output feature."""
    return lora_params(d_in, d_out, r) + d_out


def prefix_params(num_virtual_tokens: int, hidden: int, layers: int) -> int:
    """Prefix tuning without the reparameterization MLP: a key and a value prefix per layer."""
    return 2 * num_virtual_tokens * hidden * layers


def prompt_params(num_virtual_tokens: int, hidden: int) -> int:
    return num_virtual_tokens * hidden


def is_flash(attn_implementation: str) -> bool:
    """FlashAttention (2, 3, or a hub kernel of it): varlen kernels, no 4-D mask, GQA keys not repeated."""
    return "flash" in (attn_implementation or "")


def rmsnorm_saved_bytes(hidden: int, compute_bytes: float, weight_trainable: bool, liger: bool = False) -> float:
    """Bytes one RMSNorm saves per token for backward.

    transformers' RMSNorm upcasts to fp32 and keeps that copy (4h); with a trainable weight it also keeps
    the normalized compute-dtype tensor (c*h). Liger's RMSNorm kernel keeps its compute-dtype input and one
    fp32 reciprocal RMS per row (c*h + 4), trainable weight or not (its gradient comes from the same two).
    """
    if liger:
        return compute_bytes * hidden + 4
    return (4 + (compute_bytes if weight_trainable else 0)) * hidden


def mlp_saved_bytes(intermediate: int, compute_bytes: float, down_trainable: bool, liger: bool = False) -> float:
    """Bytes the gated MLP saves per token: gate, act(gate) and up (3*c*I), and when down_proj trains its
    input, their product (c*I). Liger's SwiGLU keeps gate and up only and recomputes the SiLU in backward
    (2*c*I)."""
    kept = 2 if liger else 3
    return (kept + (1 if down_trainable else 0)) * compute_bytes * intermediate


def attention_saved_bytes(hidden: int, kv_dim: int, heads: int, kv_len: int, compute_bytes: float,
                          o_trainable: bool, attn_implementation: str = "sdpa") -> float:
    """Bytes attention saves per token: q, k, v and its output (o_proj's contiguous input too when it
    trains). eager adds the fp32 softmax and its compute-dtype copy (heads x kv_len, the score matrix);
    FlashAttention keeps no score matrix, only one fp32 log-sum-exp per head (`kv_dim` is then the
    key/value heads' width: it reads grouped keys without repeating them)."""
    c = compute_bytes
    qkvo = c * ((3 if o_trainable else 2) * hidden + 2 * kv_dim)
    if attn_implementation == "eager":
        return qkvo + (4 + c) * heads * kv_len
    if is_flash(attn_implementation):
        return qkvo + 4 * heads
    return qkvo


def layer_activation_bytes_per_token(
    hidden: int, intermediate: int, kv_dim: int, heads: int, kv_len: int, compute_bytes: float, *,
    base_trainable: bool, adapter_in_features: float = 0.0, adapter_dropout: bool = False,
    attn_implementation: str = "sdpa", liger: bool = False,
) -> float:
    """Bytes autograd saves per token in one Llama-style decoder block (RMSNorm, attention, gated MLP).

    Derived from what each op saves for backward:
      - RMSNorm upcasts to fp32 and keeps that copy (4h); with a trainable weight it also keeps
        the normalized compute-dtype tensor (c*h).
      - attention (memory-efficient kernels) keeps q, k, v and its output; a trainable o_proj also
        keeps its own (contiguous) input.
      - the gated MLP keeps gate, act(gate) and up; a trainable down_proj also keeps their product.
      - each adapted linear keeps its (autocast) input for lora_A, plus a 1-byte dropout mask.
      - eager attention also keeps the fp32 softmax and its compute-dtype copy (heads x kv_len).
      - `liger`: Liger's RMSNorm and SwiGLU kernels (rmsnorm_saved_bytes, mlp_saved_bytes); its RoPE
        kernel rotates q and k without keeping more than the formula already counts.
    """
    c = compute_bytes
    norms = 2 * rmsnorm_saved_bytes(hidden, c, base_trainable, liger)
    attn = attention_saved_bytes(hidden, kv_dim, heads, kv_len, c, base_trainable, attn_implementation)
    mlp = mlp_saved_bytes(intermediate, c, base_trainable, liger)
    adapters = adapter_in_features * (c + (1 if adapter_dropout else 0))
    factor = ACTIVATION_FACTOR.get(attn_implementation, 1.0)
    return factor * (norms + attn + mlp + adapters)


# What OFT/BOFT add to a block's saved tensors, counted with torch's saved-tensor hooks on PEFT 0.21's layers
# (tests/unit/test_estimator_orthogonal.py holds the counts to these formulas). Both build their rotation from
# batches of b x b blocks (in x b values per adapted linear) each forward: OFT's Neumann series keeps four (the
# skew matrix, its square and cube, the rotation), the exact Cayley transform (OFT's option, BOFT always) three
# (the LU factors, the skew matrix, the solution).
NEUMANN_SAVED_BLOCK_BATCHES = 4
CAYLEY_SAVED_BLOCK_BATCHES = 3
# BOFT then makes the rotation one in x in matrix and keeps the identity it multiplies and that matrix; in 16
# bits also the permutation buffer's cast copy.
BOFT_SAVED_SQUARES = 2


def orthogonal_saved_bytes(kind: str, adapted: list[tuple[int, int]], block: int, compute_bytes: float,
                           neumann: bool = True) -> tuple[float, float]:
    """(bytes per token, bytes per step) that one block's OFT or BOFT adapters save for backward.

    `adapted` is the (in, out) features of the block's adapted linears. Per token both keep each adapted
    linear's input for the rotation's gradient; BOFT also keeps the base layer's output, which its learned
    per-output scale multiplies. Per step (independent of the batch) they keep their block batches, and BOFT
    its in x in matrices."""
    c = compute_bytes
    batches = NEUMANN_SAVED_BLOCK_BATCHES if kind == "oft" and neumann else CAYLEY_SAVED_BLOCK_BATCHES
    blocks = sum(batches * i * block * c for i, _ in adapted)
    if kind == "boft":
        squares = BOFT_SAVED_SQUARES + (1 if c < 4 else 0)
        return sum(i + o for i, o in adapted) * c, blocks + sum(squares * i * i * c for i, _ in adapted)
    return sum(i for i, _ in adapted) * c, blocks


def boft_buffer_bytes(in_features: list[int]) -> int:
    """PEFT's BOFT keeps an fp32 in x in permutation matrix (the identity with one butterfly factor) as a buffer of
    every adapted linear, for the whole run."""
    return sum(4 * i * i for i in in_features)


def checkpointed_activation_bytes(layers_recorded: int, tokens: int, hidden: int, compute_bytes: float,
                                  one_layer_bytes: float) -> int:
    """Gradient checkpointing keeps each block's input and recomputes one block at a time."""
    return int(layers_recorded * tokens * hidden * compute_bytes + one_layer_bytes)


def logits_bytes(batch: int, seq: int, vocab: int, dtype: str = "bf16") -> int:
    """The causal-LM loss holds the logits several times: compute dtype + fp32 copies (~10-16 B each)."""
    per = dtype_bytes(dtype) + 4 * LOGITS_FP32_COPIES
    return int(batch * seq * vocab * per)


# TRL's chunked head on a device without Triton (the CPU) folds each [tokens, vocab chunk] logits tile
# with torch ops instead of in place. At the peak of its backward fold (_backward_tile, log-prob
# gradient only) these tile-sized tensors are alive at once: y, z, log_p, p and grad (fp32, 5 x 4 B),
# the is_target mask (1 B), (is_target.float() - p) and its product with the incoming gradient
# (2 x 4 B; the mask's fp32 copy is freed by then): 29 B per tile element. Measured on the CPU
# (bench/memory_truth.py). On CUDA the Triton kernel allocates none of them.
HEAD_FALLBACK_TILE_BYTES = 5 * 4 + 1 + 2 * 4


def fused_head_bytes(batch: int, seq: int, vocab: int, hidden: int, compute_bytes: float,
                     head_trainable: bool, head_param_bytes: float, device: str = "cuda") -> int:
    """Peak bytes of TRL's chunked log-prob head (what SFTTrainer trains with) beyond the activations.

    Backward is its peak: one [min(N, 4096), 32768] logits tile in the compute dtype, the fp32
    gradient of the hidden states (N x H), and when the head trains its fp32 gradient accumulator
    plus, for a 16-bit head, the cast to the parameter dtype (V x H). N = batch x (seq - 1) scored positions. The
    closed form's `logits` term assumes the full [N, V] logits and their fp32 copies instead.
    """
    tokens = batch * max(seq - 1, 1)
    elements = min(tokens, 4096) * min(vocab, 32768)
    tile = elements * (compute_bytes + (HEAD_FALLBACK_TILE_BYTES if device != "cuda" else 0))
    # An fp32 head (fp32 master weights) takes the fp32 accumulator as its gradient: no second copy.
    cast = head_param_bytes if head_param_bytes < 4 else 0
    head = vocab * hidden * (4 + cast) if head_trainable else 0
    return int(tile + tokens * hidden * 4 + head)


def overhead_bytes(allocated: int, cuda_context: bool = True) -> int:
    """What the card needs beyond torch's tensors: allocator reserve plus the CUDA context."""
    reserve = int(allocated * ALLOCATOR_RESERVE_FRACTION)
    return reserve + (CUDA_CONTEXT_BYTES if cuda_context else 0)


SHARDED = {
    "ddp": (),
    "zero1": ("optimizer",),
    "zero2": ("optimizer", "gradients"),
    "zero3": ("optimizer", "gradients", "weights"),
    "fsdp": ("optimizer", "gradients", "weights"),
}


def shard(term_bytes: int, term: str, strategy: str, world_size: int) -> int:
    """ZeRO-1 shards optimizer states, ZeRO-2 also gradients, ZeRO-3/FSDP also weights."""
    if world_size <= 1 or term not in SHARDED.get(strategy, ()):
        return int(term_bytes)
    return int(math.ceil(term_bytes / world_size))


def peak_bytes(weights: int, gradients: int, optimizer: int, activations: int, logits: int = 0,
               step_temporaries: int = 0, gradients_during_backward: bool = False) -> int:
    """Weights + optimizer states + the larger of (gradients + step temporaries) and activations.

    With gradient accumulation the previous micro-batches' gradients are alive during the next
    backward, so they add to the activation phase too.
    """
    backward = activations + logits + (gradients if gradients_during_backward else 0)
    step = gradients + step_temporaries
    return int(weights + optimizer + max(backward, step))


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    # Binary units throughout (GiB as cards are sold and nvidia-smi counts), the same unit the
    # Method tab's headline uses: mixing GB and GiB made a smaller need read as a larger one.
    n = float(n)
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if abs(n) >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{int(n)} B"


def fmt_count(n: float) -> str:
    return f"{int(n):,}"


def total(values: Iterable[int]) -> int:
    return int(sum(values))
