"""What the per-method training tests share: a few optimizer steps on a fixed batch, and a copy of
the parameters to compare against."""
from __future__ import annotations

import torch

from backend.methods import create_optimizer


def train_steps(model, cfg, steps: int = 2) -> None:
    opt = create_optimizer(model, cfg) or torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    # Two steps: zero-initialized factors (LoRA's B, AdaLoRA's E) give their partners a gradient only
    # from the second step on.
    for step in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        if hasattr(getattr(model, "base_model", None), "update_and_allocate"):
            model.base_model.update_and_allocate(step)
        opt.zero_grad()


def snapshot(model) -> dict[str, torch.Tensor]:
    # bitsandbytes repacks 4-bit storage into a CPU kernel layout on first use, so those bytes are not
    # comparable; the base model's logits (adapter off) check them instead.
    return {n: p.detach().float().clone() for n, p in model.named_parameters()
            if type(p).__name__ != "Params4bit"}
