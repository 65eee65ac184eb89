"""The estimator's data plan: packing efficiency (real tokens / slots) sizes the packed batch and the ETA."""
from backend.core.config import RunConfig
from backend.data.packing import efficiency, plan_bins
from backend.estimator.lengths import DataLengths, eta_seconds


def _cfg(**data):
    return RunConfig.model_validate({"model": "x", "data": {"max_length": 100, **data},
                                     "train": {"batch_size": 2, "epochs": 2}})


LENGTHS = [90, 60, 40, 30, 20, 10, 10, 5]


def test_the_plan_counts_real_tokens_slots_and_efficiency_like_the_packer():
    dl = DataLengths.of(LENGTHS, total_rows=80)  # a 10 % sample of the file
    packed = dl.plan(_cfg(packing=True))
    bins = plan_bins(LENGTHS, 100)
    assert packed["efficiency"] == efficiency(LENGTHS, 100, bins) == round(sum(LENGTHS) / (100 * len(bins)), 4)
    assert packed["real_tokens_per_epoch"] == sum(LENGTHS) * 10
    assert packed["tokens_to_train"] == 2 * sum(LENGTHS) * 10
    assert packed["slots_to_train"] == round(packed["tokens_to_train"] / packed["efficiency"])
    padded = dl.plan(_cfg(packing=False))
    # Unpacked, each batch of two pads to its longer row: (90+90) + (40+40) + (20+20) + (10+10) slots.
    assert padded["efficiency"] == round(sum(LENGTHS) / 320, 4)
    assert padded["efficiency"] < packed["efficiency"]
    assert dl.plan(_cfg(packing=True), padding_free=True)["efficiency"] == 1.0


def test_eta_is_tokens_left_over_the_measured_rate():
    assert eta_seconds(10_000, 500.0) == 20.0
    assert eta_seconds(10_000, 500.0, tokens_seen=4_000) == 12.0
    assert eta_seconds(10_000, None) is None
    # A rate of slots (padding included) trains fewer real tokens per second.
    assert eta_seconds(10_000, 500.0, efficiency=0.5, slot_rate=True) == 40.0


def test_a_step_budget_trains_steps_x_sequences_x_tokens_per_sequence():
    dl = DataLengths.of(LENGTHS, total_rows=8)
    cfg = RunConfig.model_validate({"model": "x", "data": {"max_length": 100, "packing": True},
                                    "train": {"batch_size": 2, "gradient_accumulation": 3, "max_steps": 5}})
    plan = dl.plan(cfg)
    assert plan["tokens_to_train"] == round(5 * 2 * 3 * 100 * plan["efficiency"])


def test_the_estimate_carries_the_data_plan_and_packing_shortens_its_batch(tiny_model_dir, workspace):
    from backend.estimator import estimate

    dl = DataLengths.of(LENGTHS * 4)
    base = {"model": str(tiny_model_dir), "data": {"max_length": 256}, "train": {"batch_size": 4}}
    packed = estimate(RunConfig.model_validate({**base, "data": {"max_length": 256, "packing": True}}), gpus=[],
                      lengths=dl)
    plain = estimate(RunConfig.model_validate(base), gpus=[], lengths=dl)
    assert packed.to_json()["data"]["efficiency"] == dl.efficiency(256, True)
    assert plain.data["efficiency"] == dl.efficiency(256, False, 4)
    assert estimate(RunConfig.model_validate(base), gpus=[]).data == {}  # no lengths measured: no plan
