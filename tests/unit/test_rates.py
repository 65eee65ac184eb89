"""The time to train, foretold from the speed an earlier run of the same model and method measured."""
import json
from pathlib import Path

from backend.runs.rates import measured_rate, run_rate
from studio.tabs.method_view import data_plan_text


def _run(ws: Path, name: str, model: str, method: str, device: str, rates: list, state: str = "stopped") -> Path:
    d = ws / "runs" / name
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"state": state, "model": model, "method": method}))
    (d / "meta.json").write_text(json.dumps({"devices": [{"type": device}]}))
    lines = [json.dumps({"type": "train", "step": i + 1, "tokens_per_s": r}) for i, r in enumerate(rates)]
    (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    return d


def test_the_rate_is_the_median_after_the_warm_up_interval(tmp_path):
    d = _run(tmp_path, "r1", "m", "lora", "cpu", [5.0, 100.0, 120.0, 110.0, 90.0])
    assert run_rate(d) == (105.0, 4)  # the 5.0 of the first interval is left out
    assert run_rate(_run(tmp_path, "r2", "m", "lora", "cpu", [5.0, 100.0, 120.0])) is None  # too few points


def test_only_a_run_of_the_same_model_method_and_device_with_enough_rates_counts(tmp_path):
    _run(tmp_path, "2026-01-01-a", "m", "lora", "cpu", [1, 10, 10, 10])
    _run(tmp_path, "2026-01-02-b", "m", "full", "cpu", [1, 99, 99, 99])       # other method
    _run(tmp_path, "2026-01-03-c", "m", "lora", "cuda", [1, 999, 999, 999])   # other device
    _run(tmp_path, "2026-01-04-d", "other", "lora", "cpu", [1, 7, 7, 7])      # other model
    _run(tmp_path, "2026-01-05-e", "m", "lora", "cpu", [1, 55])                # too few rates
    rate = measured_rate(tmp_path, "m", "lora", "cpu")
    assert (rate.tokens_per_s, rate.run_id) == (10.0, "2026-01-01-a")
    assert measured_rate(tmp_path, "m", "lora", "cuda").tokens_per_s == 999.0
    assert measured_rate(tmp_path, "m", "dora", "cpu") is None
    # The newest matching run wins.
    _run(tmp_path, "2026-01-06-f", "m", "lora", "cpu", [1, 20, 20, 20])
    assert measured_rate(tmp_path, "m", "lora", "cpu").run_id == "2026-01-06-f"


PLAN = {"rows": 1000, "real_tokens_per_epoch": 120_000, "efficiency": 0.93, "epochs": 2.0,
        "tokens_to_train": 240_000, "slots_to_train": 258_065}


def test_the_method_tab_says_the_time_to_train_only_with_a_measured_rate():
    text = data_plan_text(PLAN, {"tokens_per_s": 400.0, "run_id": "r1", "device": "cpu"})
    assert "240,000 tokens to train" in text and "93%" in text
    assert "400 tokens/s" in text and "r1" in text and "**10 min**" in text  # 240,000 / 400 = 600 s
    without = data_plan_text(PLAN, None)
    assert "240,000 tokens to train" in without and "tokens/s" not in without
    assert "once one run of this model and method has trained" in without
    assert data_plan_text(None, None) == ""
