"""The estimator's GRPO/RLOO terms: answer-only logits, a reward model's weights, the reference copy
a KL penalty needs, and the sampling phase's key/value cache."""
from __future__ import annotations

from backend.core.config import RunConfig
from backend.estimator import estimate


def est(objective: str = "grpo", method: str = "lora", **alignment):
    cfg = RunConfig.model_validate({"objective": objective, "method": {"name": method},
                                    "alignment": {"reward_reference": True, **alignment},
                                    "data": {"max_length": 256}, "train": {"precision": "bf16"}})
    return estimate(cfg, gpu_memory_gb=24)


def test_logits_cover_only_the_sampled_answer():
    short, long = est(max_completion_length=32), est(max_completion_length=256)
    assert long.terms_bytes["logits"] / short.terms_bytes["logits"] == (256 + 1) / (32 + 1)
    assert "answer" in short.formulas["logits"]


def test_a_reward_model_adds_a_second_set_of_weights():
    plain, scored = est(), est(reward_model="/somewhere/reward-run")
    added = scored.terms_bytes["weights"] - plain.terms_bytes["weights"]
    assert added == plain.total_params * 2 or abs(added - plain.total_params * 2) / added < 0.02
    assert "reward model" in scored.formulas["weights"]


def test_a_kl_penalty_costs_an_adapter_copy_with_peft_and_a_model_copy_without():
    assert est(kl_coef=0.04).terms_bytes["weights"] - est().terms_bytes["weights"] < 10 * 2**20
    full = est(method="full", kl_coef=0.04).terms_bytes["weights"] - est(method="full").terms_bytes["weights"]
    assert full > 200 * 2**20


def test_sampling_is_a_phase_of_its_own_growing_with_answers_in_flight():
    one, many = est(), est(max_completion_length=2048)
    assert "generation" in one.phases and many.phases["generation"] > 4 * one.phases["generation"]
    assert "generation" not in est(objective="sft").phases


def test_dpo_without_an_adapter_counts_a_frozen_reference_model_and_with_lora_does_not():
    def weights(objective, method):
        cfg = RunConfig.model_validate({"objective": objective, "method": {"name": method},
                                        "train": {"precision": "bf16"}})
        return estimate(cfg, gpu_memory_gb=24)

    full_sft, full_dpo = weights("sft", "full"), weights("dpo", "full")
    # TRL loads the reference in the policy's dtype: fp32 under mixed precision's master weights.
    assert full_dpo.terms_bytes["weights"] - full_sft.terms_bytes["weights"] == full_sft.total_params * 4
    assert "frozen reference model" in full_dpo.formulas["weights"]
    assert weights("kto", "lora").terms_bytes["weights"] == weights("sft", "lora").terms_bytes["weights"]
    assert weights("orpo", "full").terms_bytes["weights"] == full_sft.terms_bytes["weights"]


def test_a_grpo_run_that_does_not_fit_is_told_to_shorten_answers_or_drop_the_kl_reference():
    cfg = RunConfig.model_validate({"objective": "grpo", "method": {"name": "full"},
                                    "alignment": {"reward_reference": True, "max_completion_length": 4096,
                                                  "kl_coef": 0.05},
                                    "data": {"max_length": 1024}, "train": {"precision": "bf16"}})
    tips = " ".join(estimate(cfg, gpu_memory_gb=2).suggestions)
    assert "Shorten sampled answers from 4096 to 2048 tokens" in tips
    assert "KL penalty to 0" in tips
