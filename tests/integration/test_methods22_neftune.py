"""NEFTune (issue 22) through the training subprocess's code path: with `train.neftune_noise_alpha` the input
embeddings are noisy in every training forward pass and exact in evaluation; without it they are exact."""
from __future__ import annotations

import math

import pytest
import torch

from backend.core.config import RunConfig
from backend.runs import rundir
from tests.samples import small_copy

pytestmark = pytest.mark.timeout(600)


class EmbeddingProbe:
    """A TrainerCallback that, once training starts (after the Trainer has hooked NEFTune), watches what the
    embedding layer hands to the model: (training mode?, largest difference from the exact lookup)."""

    def __init__(self):
        from transformers import TrainerCallback

        probe = self
        self.seen: list[tuple[bool, float, int]] = []

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                emb = model.get_input_embeddings()

                def hook(module, inputs, output):
                    exact = torch.nn.functional.embedding(inputs[0], module.weight)
                    probe.seen.append((module.training, (output - exact).abs().max().item(),
                                       output.shape[1] * output.shape[2]))

                probe.handle = emb.register_forward_hook(hook)

            def on_train_end(self, args, state, control, **kw):
                probe.handle.remove()

        self.callback = Callback()


def train_with_probe(tmp_path, tiny_model_dir, monkeypatch, alpha, objective="sft", data="instructions.jsonl"):
    import backend.methods
    from backend.training.run import run

    probe = EmbeddingProbe()
    monkeypatch.setattr(backend.methods, "method_callbacks", lambda model, cfg, run_dir: [probe.callback])
    cfg = RunConfig.model_validate({
        "model": str(tiny_model_dir), "objective": objective, "early_stopping": {"patience": None},
        "method": {"name": "lora", "r": 4, "dropout": 0.0},
        "data": {"path": str(small_copy(tmp_path, data, n=6)), "validation_split": 0.34, "max_length": 96},
        "train": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "gradient_checkpointing": False, "eval_steps": 1, "warmup_ratio": 0.0,
                  "neftune_noise_alpha": alpha}})
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    assert run(run_dir) == 0, rundir.read_status(run_dir).get("error")
    return probe.seen


@pytest.mark.parametrize("objective,data", [("sft", "instructions.jsonl"), ("dpo", "preference.jsonl")])
def test_neftune_noises_training_embeddings_and_never_evaluation(tiny_model_dir, tmp_path, monkeypatch,
                                                                 objective, data):
    alpha = 5.0
    seen = train_with_probe(tmp_path, tiny_model_dir, monkeypatch, alpha, objective, data)
    train = [(d, n) for training, d, n in seen if training]
    evals = [d for training, d, _ in seen if not training]
    assert train and evals
    # Every training pass is noisy, within NEFTune's bound alpha / sqrt(length x hidden).
    assert all(0 < d <= alpha / math.sqrt(n) + 1e-6 for d, n in train)
    assert all(d == 0 for d in evals)


def test_without_neftune_training_embeddings_are_exact(tiny_model_dir, tmp_path, monkeypatch):
    seen = train_with_probe(tmp_path, tiny_model_dir, monkeypatch, None)
    assert any(training for training, _, _ in seen)
    assert all(d == 0 for _, d, _ in seen)


def test_neftune_is_refused_for_objectives_that_sample_their_own_answers(tiny_model_dir):
    from backend.objectives.validate import validate_objective

    cfg = RunConfig.model_validate({"model": str(tiny_model_dir), "objective": "grpo",
                                    "alignment": {"reward_reference": True},
                                    "train": {"neftune_noise_alpha": 5.0}})
    assert "train.neftune_noise_alpha" in validate_objective(cfg)
