"""What GRPO/RLOO add to a training step's memory: models that score or anchor the policy, and the
sampling phase.

- Sequences are prompt + answer: data.max_length (the longest prompt kept) plus max_completion_length.
- The loss needs log-probabilities of the answer tokens only (the trainers ask the model for
  `logits_to_keep` positions), so the logits term covers answer tokens, not the prompt.
- A reward model is a second set of frozen weights; sized as the policy's base model (the studio's
  reward runs are trained from the same family), which the formula says.
- A KL penalty (kl_coef > 0) needs reference log-probabilities: with PEFT the trainers copy the
  adapter as a frozen "ref" adapter, otherwise a frozen copy of the whole model is loaded.
- Sampling is its own phase (no autograd): the key/value cache of the whole generation batch
  (batch x accumulation answers) at full length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.core.catalog import OBJECTIVES
from backend.estimator import terms as T


@dataclass
class OnlineTerms:
    extra_weights: int
    weights_text: str
    generation: int
    generation_text: str


def is_online(cfg: Any) -> bool:
    return OBJECTIVES[cfg.objective].online


def sequence_length(cfg: Any) -> int:
    return cfg.data.max_length + cfg.alignment.max_completion_length


def logits_positions(cfg: Any) -> int:
    return cfg.alignment.max_completion_length + 1


def online_terms(cfg: Any, shape: Any, compute: str, base: str, uses_peft: bool) -> OnlineTerms:
    a = cfg.alignment
    parts: list[str] = []
    extra = 0
    if a.reward_model:
        rm = int(shape.total_params * T.dtype_bytes(compute))
        extra += rm
        parts.append(f"reward model {T.fmt_count(shape.total_params)} params x {T.dtype_bytes(compute):g} B "
                     f"(sized as the base model) = {T.fmt_bytes(rm)}")
    if a.kl_coef > 0:
        if uses_peft:
            ref = int(shape.adapter_trainable * shape.adapter_bytes_per_param)
            parts.append(f"frozen reference adapter copy {T.fmt_bytes(ref)}")
        else:
            ref = int(shape.total_params * T.dtype_bytes(base))
            parts.append(f"frozen reference model {T.fmt_bytes(ref)}")
        extra += ref
    answers = cfg.train.batch_size * cfg.train.gradient_accumulation
    seq = sequence_length(cfg)
    kv = int(2 * shape.layers * answers * seq * shape.kv_heads * shape.head_dim * T.dtype_bytes(compute))
    gen_text = (f"sampling: KV cache 2 x {shape.layers} layers x {answers} answers x {seq} tokens x "
                f"{shape.kv_heads} KV heads x {shape.head_dim} x {T.dtype_bytes(compute):g} B = {T.fmt_bytes(kv)}")
    return OnlineTerms(extra, " + ".join(parts), kv, gen_text)
