"""Mixed precision for methods that train base weights, and pure bf16 on request, through the studio's
own trainer (load_trainable_model + TRL's SFTTrainer with training_args) on the tiny model.

The CPU runs bf16 autocast here on purpose: these tests check the dtypes the plan gives the tensors
(backend.core.precision), which the estimator counts, not the speed. The studio itself trains a CPU
run in fp32 (effective_config); the tests build the trainer from the config as written, as a GPU would.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.core.config import RunConfig
from backend.estimator import estimate


def _cfg(model_dir: Path, method: str, pure: bool, lr: float = 1e-3, **method_fields) -> RunConfig:
    return RunConfig.model_validate({
        "model": str(model_dir), "method": {"name": method, **method_fields},
        "data": {"path": "unused.jsonl", "validation_split": 0.0, "max_length": 16},
        "train": {"precision": "bf16", "pure_bf16": pure, "max_steps": 2, "batch_size": 2,
                  "gradient_accumulation": 1, "learning_rate": lr, "scheduler": "constant", "warmup_ratio": 0.0,
                  "weight_decay": 0.0, "max_grad_norm": 0.0, "gradient_checkpointing": False,
                  "optimizer": "adamw_torch", "logging_steps": 1, "eval_steps": 10_000},
        "early_stopping": {"patience": None}, "report_to": [],
    })


def _train(cfg: RunConfig, tmp: Path, steps: int):
    """(model, trainer, {param name: grad dtype seen at the first optimizer step})."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from backend.core.models import load_tokenizer
    from backend.data.templates import SftCollator
    from backend.methods import create_optimizer, load_trainable_model
    from backend.training.run import training_args

    torch.manual_seed(0)
    model = load_trainable_model(cfg)
    tok = load_tokenizer(cfg.model)
    rows = torch.randint(10, 1000, (2 * steps, 16), generator=torch.Generator().manual_seed(0)).tolist()
    ds = Dataset.from_dict({"input_ids": rows, "labels": rows, "attention_mask": [[1] * 16] * len(rows)})
    grads: dict[str, torch.dtype] = {}

    class SeeGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if not grads:
                grads.update({n: p.grad.dtype for n, p in model.named_parameters() if p.grad is not None})

    args = training_args(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})}),
                         tmp, has_eval=False)
    args.save_strategy = "no"
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         data_collator=SftCollator(tok.pad_token_id), callbacks=[SeeGradients()],
                         optimizers=(create_optimizer(model, cfg), None))
    return model, trainer, grads


def _block_matrices(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters()
            if ".layers." in n and p.dim() == 2 and p.requires_grad}


@pytest.mark.parametrize("method,pure,trainable,frozen", [
    ("full", False, torch.float32, None),
    ("full", True, torch.bfloat16, None),
    ("last_layers", False, torch.float32, torch.bfloat16),
    ("last_layers", True, torch.bfloat16, torch.bfloat16),
])
def test_weights_gradients_and_adam_states_have_the_dtypes_the_estimator_counts(
        tiny_model_dir, tmp_path, method, pure, trainable, frozen):
    cfg = _cfg(tiny_model_dir, method, pure, num_layers=1)
    model, trainer, grads = _train(cfg, tmp_path, steps=2)
    trainer.train()
    params = {n: p for n, p in model.named_parameters()}
    assert {p.dtype for p in params.values() if p.requires_grad} == {trainable}
    if frozen is not None:
        assert {p.dtype for p in params.values() if not p.requires_grad} == {frozen}
    assert grads and set(grads.values()) == {trainable}
    states = [t for s in trainer.optimizer.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert states and {t.dtype for t in states} == {trainable}

    # The estimator's assumptions for the same config: dtypes per term and the exact byte counts.
    est = estimate(cfg, gpus=[])
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    assert est.dtypes["weights"][0]["dtype"] == name[trainable]
    assert est.dtypes["gradients"][0]["dtype"] == name[trainable]
    assert est.dtypes["optimizer"][0]["dtype"] == name[trainable]
    unique = {p.data_ptr(): p for p in params.values()}.values()  # tied embeddings once
    assert est.terms_bytes["weights"] == sum(p.numel() * p.element_size() for p in unique)
    assert est.terms_bytes["optimizer"] == sum(t.numel() * t.element_size() for t in states)
    assert est.terms_bytes["gradients"] == sum(p.numel() * p.element_size() for p in unique if p.requires_grad)


@pytest.mark.parametrize("pure", [False, True])
def test_a_1e6_update_changes_fp32_master_weights_but_is_lost_in_pure_bf16(tiny_model_dir, tmp_path, pure):
    # AdamW's first step moves every weight with a gradient by about lr = 1e-6; bf16's resolution near
    # a weight of typical size (~0.02) is ~1e-4, so in pure bf16 the update rounds away.
    cfg = _cfg(tiny_model_dir, "full", pure, lr=1e-6)
    model, trainer, _ = _train(cfg, tmp_path, steps=1)
    before = _block_matrices(model)
    trainer.train()
    after = _block_matrices(model)
    changed = sum(int((after[n] != before[n]).sum()) for n in before) / sum(t.numel() for t in before.values())
    if pure:
        assert changed < 0.02, f"{changed:.1%} of the bf16 weights moved"
    else:
        assert changed > 0.9, f"only {changed:.1%} of the fp32 master weights moved"
