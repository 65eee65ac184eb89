"""What each speed switch changes in the estimate, term by term (closed form, no GPU).

Each test compares an estimate with the switch and without it on the same model and checks that the
difference is exactly the formula's: Liger's RMSNorm and SwiGLU in the activations (the logits stay
TRL's chunked head), FlashAttention's missing mask and ungrouped keys, fused AdamW's missing step
temporaries, and torch.compile changing nothing.
"""
from __future__ import annotations

import pytest
from transformers import LlamaConfig

from backend.core.config import RunConfig
from backend.core.kernels import PACKAGES, KernelMachine
from backend.estimator import estimate
from backend.estimator import terms as T

H, I, LAYERS, HEADS, KV, VOCAB = 256, 704, 4, 8, 2, 1024
HEAD_DIM = H // HEADS
GPU = KernelMachine(cuda=True, capability=(9, 0), packages=frozenset(PACKAGES))
BATCH, SEQ = 2, 128


@pytest.fixture(scope="module")
def model_config():
    return LlamaConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=512,
                       tie_word_embeddings=False)


def est(model_config, **train):
    base = {"liger_kernel": "off", "attention": "sdpa", "fused_adamw": "off", "torch_compile": "off",
            "batch_size": BATCH, "gradient_checkpointing": False, "precision": "bf16"}
    cfg = RunConfig.model_validate({"model": "x", "method": {"name": "lora", "dropout": 0.0},
                                    "data": {"max_length": SEQ}, "train": {**base, **train}})
    return estimate(cfg, gpus=[], model_config=model_config, kernel_machine=GPU)


def test_liger_changes_the_activations_by_its_norm_and_swiglu_formula_and_nothing_else(model_config):
    plain, liger = est(model_config), est(model_config, liger_kernel="on")
    c, tokens = 2, BATCH * SEQ
    # Per block: two RMSNorms keep c*h + 4 instead of the fp32 copy 4*h; SwiGLU keeps 2*c*I instead of 3*c*I.
    per_block = 2 * (4 * H - (c * H + 4)) + c * I
    final_norm = (4 + c) * H - (c * H + 4)
    saved = tokens * (LAYERS * per_block + final_norm)
    assert plain.terms_bytes["activations"] - liger.terms_bytes["activations"] == saved
    for term in ("weights", "gradients", "optimizer", "logits"):
        assert plain.terms_bytes[term] == liger.terms_bytes[term], term
    assert "Liger" in liger.formulas["activations"] and "chunked head" in liger.formulas["logits"]
    assert "Liger" not in plain.formulas["activations"]


def test_flash_attention_has_no_mask_and_reads_grouped_keys(model_config):
    sdpa, flash = est(model_config), est(model_config, attention="flash_attention_2")
    c, tokens = 2, BATCH * SEQ
    per_block = c * 2 * (HEADS - KV) * HEAD_DIM - 4 * HEADS  # k and v at KV heads; + fp32 log-sum-exp per head
    mask = BATCH * SEQ * SEQ
    assert sdpa.terms_bytes["activations"] - flash.terms_bytes["activations"] == tokens * LAYERS * per_block + mask
    assert "no score matrix" in flash.formulas["activations"]


def test_eager_attention_pays_for_the_score_matrix_that_flash_does_not_have(model_config):
    eager, flash = est(model_config, attention="eager"), est(model_config, attention="flash_attention_2")
    scores = BATCH * SEQ * LAYERS * (4 + 2) * HEADS * SEQ
    assert eager.terms_bytes["activations"] - flash.terms_bytes["activations"] > scores


def test_fused_adamw_removes_the_step_temporaries(model_config):
    plain, fused = est(model_config), est(model_config, fused_adamw="on")
    temps = int(T.OPTIMIZER_STEP_TEMP_FACTOR["adamw_torch"] * plain.terms_bytes["optimizer"] / 2)
    assert temps > 0
    assert plain.phases["optimizer_step"] - fused.phases["optimizer_step"] == temps
    assert "fused AdamW" in fused.formulas["optimizer"]


def test_torch_compile_changes_no_term(model_config):
    plain, compiled = est(model_config), est(model_config, torch_compile="on")
    assert plain.terms_bytes == compiled.terms_bytes
    assert any("torch.compile" in n for n in compiled.notes)


def test_auto_counts_what_the_machine_would_pick_and_a_cpu_estimate_counts_none(model_config):
    cfg = RunConfig.model_validate({"model": "x", "method": {"name": "lora", "dropout": 0.0},
                                    "data": {"max_length": SEQ},
                                    "train": {"batch_size": BATCH, "gradient_checkpointing": False}})
    auto = estimate(cfg, gpus=[], model_config=model_config, kernel_machine=GPU)
    on = est(model_config, liger_kernel="on", attention="flash_attention_2", fused_adamw="on")
    assert auto.terms_bytes == on.terms_bytes
    assert {k["switch"]: k["on"] for k in auto.kernels} == {"liger_kernel": True, "attention": True,
                                                             "fused_adamw": True, "torch_compile": False}
    cpu = estimate(cfg, gpus=[], model_config=model_config, device="cpu")
    assert not any(k["on"] for k in cpu.kernels)
    assert cpu.to_json()["kernels"] == cpu.kernels
