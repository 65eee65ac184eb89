"""The VRAM estimator: exact parameter counts from a meta skeleton, closed-form bytes per term.

Public API: `estimate(cfg, ...) -> Estimate`, and the pure term functions re-exported from
`backend.estimator.terms` (the tests reproduce published worked figures with them,
e.g. 7B full fine-tuning in bf16 with AdamW: 14 + 14 + 56 GB before activations).
"""
from backend.estimator.core import TERMS, Estimate, estimate
from backend.estimator.lengths import DataLengths, eta_seconds, lengths_from
from backend.estimator.skeleton import ModelShape, cached_shape, shape_of
from backend.estimator.terms import (
    ACTIVATION_FACTOR, ALLOCATOR_RESERVE_FRACTION, CUDA_CONTEXT_BYTES, adafactor_bytes, checkpointed_activation_bytes,
    dora_params, gradient_bytes, layer_activation_bytes_per_token, logits_bytes, lora_params, nf4_bytes,
    optimizer_bytes, optimizer_state_breakdown, optimizer_tensor_bytes, overhead_bytes, peak_bytes, prefix_params,
    prompt_params, shard, weight_bytes,
)

__all__ = [
    "TERMS", "Estimate", "estimate", "DataLengths", "eta_seconds", "lengths_from", "ModelShape", "cached_shape", "shape_of",
    "ACTIVATION_FACTOR", "ALLOCATOR_RESERVE_FRACTION", "CUDA_CONTEXT_BYTES", "adafactor_bytes",
    "checkpointed_activation_bytes", "dora_params", "gradient_bytes", "layer_activation_bytes_per_token",
    "logits_bytes", "lora_params", "nf4_bytes", "optimizer_bytes", "optimizer_state_breakdown",
    "optimizer_tensor_bytes", "overhead_bytes", "peak_bytes", "prefix_params", "prompt_params", "shard",
    "weight_bytes",
]
