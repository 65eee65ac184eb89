"""The evaluation verdict states its evidence and refuses to judge on too few rows."""
from backend.inference.verdict import MIN_ROWS, difference_interval, verdict


def test_two_rows_get_no_verdict_however_large_the_loss_difference():
    outcome, sentence = verdict({"rows": 2, "row_differences": [-1.5, -1.2]})
    assert outcome is None
    assert "No verdict: 2 row(s)" in sentence and f"at least {MIN_ROWS}" in sentence


def test_a_clear_improvement_names_rows_metric_and_interval():
    diffs = [-0.5 + 0.01 * (i % 5) for i in range(40)]
    outcome, sentence = verdict({"rows": 40, "row_differences": diffs})
    assert outcome == "better"
    assert "on 40 rows" in sentence and "validation loss" in sentence and "95% interval" in sentence
    assert "not whether an answer is right" in sentence


def test_an_interval_across_zero_is_no_clear_difference():
    diffs = [(-1) ** i * 0.3 for i in range(30)]
    assert verdict({"rows": 30, "row_differences": diffs})[0] == "no clear difference"
    mean, low, high = difference_interval(diffs)
    assert low < 0 < high


def test_an_old_report_without_per_row_losses_gets_no_verdict():
    outcome, sentence = verdict({"rows": 50})
    assert outcome is None and "per-row losses" in sentence
