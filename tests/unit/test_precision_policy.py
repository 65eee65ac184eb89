"""One precision policy (backend.core.precision): the loader, the estimator, validation and the trainer agree.

The load dtype is checked where each reads it: the loader's `load_dtype`, the closed form's weights
term and the precise trace's parameter bytes (full fine-tuning: every base weight, no adapters).
Availability is checked against explicit machines, so the test means the same on a CPU and a GPU.
"""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from backend.core import precision as P
from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.estimator import estimate
from backend.estimator.precise import precise_estimate
from backend.core.precision import available_precisions
from backend.methods import load_dtype, validate_for_model
from backend.methods import validation
from backend.training import run as trainer

CPU = P.Machine(cuda=False, bf16=False)
OLD_GPU = P.Machine(cuda=True, bf16=False)   # e.g. a V100 / T4: no native bf16
NEW_GPU = P.Machine(cuda=True, bf16=True)


def tiny() -> LlamaConfig:
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=500, max_position_embeddings=256)


def cfg(method="full", precision="bf16", pure_bf16=False, **m) -> RunConfig:
    return RunConfig.model_validate({"model": "owner/name", "method": {"name": method, **m},
                                     "data": {"max_length": 32},
                                     "train": {"precision": precision, "batch_size": 1, "pure_bf16": pure_bf16,
                                               "gradient_checkpointing": False}})


@pytest.mark.parametrize("precision,pure,expected", [
    ("fp32", False, torch.float32), ("bf16", False, torch.float32), ("fp16", False, torch.float32),
    ("bf16", True, torch.bfloat16),
])
def test_full_fine_tuning_loads_the_same_dtype_in_loader_closed_form_and_trace(precision, pure, expected):
    c, mc = cfg("full", precision, pure_bf16=pure), tiny()
    assert load_dtype(c) == expected
    size = torch.empty((), dtype=expected).element_size()
    closed = estimate(c, gpus=[], model_config=mc)
    assert closed.terms_bytes["weights"] == closed.total_params * size
    traced = precise_estimate(c, model_config=mc)
    assert traced["peak_breakdown_bytes"]["parameters"] == closed.total_params * size


@pytest.mark.parametrize("method,precision,pure,compute,load,base,trainable", [
    ("lora", "fp32", False, "bf16", "fp32", "fp32", "fp32"),
    ("lora", "bf16", False, "bf16", "bf16", "bf16", "bf16"),
    ("lora", "bf16", True, "bf16", "bf16", "bf16", "bf16"),     # adapters stay fp32 either way (PEFT)
    ("lora", "fp16", False, "bf16", "fp16", "fp16", "fp16"),    # frozen base: no fp32 master weights needed
    ("full", "fp16", False, "bf16", "fp32", "fp16", "fp32"),    # trainable base: fp32 master weights
    ("full", "bf16", False, "bf16", "fp32", "bf16", "fp32"),    # mixed precision by default
    ("full", "bf16", True, "bf16", "bf16", "bf16", "bf16"),     # pure bf16 on request
    ("full", "fp16", True, "bf16", "fp32", "fp16", "fp32"),     # no pure fp16 (the GradScaler refuses it)
    ("last_layers", "bf16", False, "bf16", "fp32", "bf16", "fp32"),
    ("bitfit", "bf16", False, "bf16", "fp32", "bf16", "fp32"),
    ("adapter_houlsby", "fp16", False, "bf16", "fp16", "fp16", "fp16"),  # its adapters are fp32 already
    ("qlora", "bf16", False, "fp16", "fp16", "fp32", "fp32"),   # 4-bit: compute dtype; kbit prep upcasts the rest
    ("qlora", "fp32", False, "bf16", "bf16", "fp32", "fp32"),
])
def test_loader_and_estimator_read_one_plan(method, precision, pure, compute, load, base, trainable):
    c = cfg(method, precision, pure_bf16=pure, compute_dtype=compute)
    plan = P.plan_for(c)  # the estimator's and the loader's plan
    assert (plan.load, plan.base, plan.trainable) == (load, base, trainable)
    assert load_dtype(c) == P.torch_dtype(load)
    assert plan.compute == (compute if method == "qlora" else precision)
    assert plan.autocast == (None if precision == "fp32" else precision)


def test_available_precisions_per_machine():
    assert P.available_precisions(CPU) == ["fp32", "bf16"]
    assert P.available_precisions(OLD_GPU) == ["fp32", "fp16"]
    assert P.available_precisions(NEW_GPU) == ["fp32", "fp16", "bf16"]
    assert available_precisions() == P.available_precisions(P.this_machine())


@pytest.mark.parametrize("machine,precision,why", [
    (CPU, "fp16", "fp16 mixed precision needs a CUDA GPU"),
    (OLD_GPU, "bf16", "bf16 needs an Ampere"),
])
def test_an_unavailable_precision_is_refused_by_validation_and_the_trainer(monkeypatch, machine, precision, why):
    monkeypatch.setattr(validation, "this_machine", lambda: machine)
    monkeypatch.setattr(P, "this_machine", lambda: machine)
    c = cfg("lora", precision, compute_dtype="fp32")
    sentence = validate_for_model(c, tiny())["train.precision"]
    assert why in sentence and ", ".join(P.available_precisions(machine)) in sentence
    with pytest.raises(UserError) as refused:
        trainer.effective_config(c)
    assert str(refused.value) == sentence


def test_an_unavailable_4bit_compute_dtype_is_refused(monkeypatch):
    monkeypatch.setattr(validation, "this_machine", lambda: CPU)
    errors = validate_for_model(cfg("qlora", "fp32", compute_dtype="fp16"), tiny())
    assert "as the 4-bit compute dtype" in errors["method.compute_dtype"]
    assert "train.precision" not in errors


@pytest.mark.parametrize("machine,precision,runs", [
    (CPU, "bf16", "fp32"), (CPU, "fp32", "fp32"), (NEW_GPU, "bf16", "bf16"), (OLD_GPU, "fp16", "fp16"),
])
def test_an_accepted_precision_passes_validation_and_trains_as_the_plan_says(monkeypatch, machine, precision, runs):
    monkeypatch.setattr(validation, "this_machine", lambda: machine)
    monkeypatch.setattr(P, "this_machine", lambda: machine)
    c = cfg("lora", precision, compute_dtype="fp32")
    assert "train.precision" not in validate_for_model(c, tiny())
    plan = P.precision_plan(precision, machine=machine)
    assert plan.available and plan.precision == runs
    assert (plan.note is not None) == (runs != precision)
    effective = trainer.effective_config(c)
    assert effective.train.precision == runs
    # The loader, given what the trainer runs, loads what the plan for this machine says.
    assert load_dtype(effective) == P.torch_dtype(P.precision_plan(precision, machine=machine).load)
