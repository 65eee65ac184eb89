"""The evaluation verdict: what the numbers support, with its evidence, or no verdict at all.

Loss says how likely the reference answers are under each model, not whether an answer is right,
and a handful of rows says little. So the verdict names the rows, the metric and the uncertainty
(a 95 % interval of the paired per-row loss difference), and refuses to judge below MIN_ROWS rows.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Optional

MIN_ROWS = 20   # below this many rows a loss difference is not evidence either way
Z95 = 1.96      # normal approximation of the paired mean's 95 % interval


def difference_interval(diffs: list[float]) -> Optional[tuple[float, float, float]]:
    """(mean, low, high) of the paired differences; None with fewer than two."""
    if len(diffs) < 2:
        return None
    mean = statistics.fmean(diffs)
    half = Z95 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def verdict(report: dict[str, Any]) -> tuple[Optional[str], str]:
    """(outcome or None, the sentence): "better", "worse", "no clear difference", or None (no verdict)."""
    rows = int(report.get("rows") or 0)
    diffs = [float(d) for d in report.get("row_differences") or [] if isinstance(d, (int, float))]
    metric = "validation loss (mean cross-entropy of the graded tokens; lower is better)"
    if rows < MIN_ROWS:
        return None, (f"No verdict: {rows} row(s) were evaluated and at least {MIN_ROWS} are needed before a loss "
                      f"difference means anything. Give a validation set of {MIN_ROWS}+ rows (or a data file), "
                      "and read the sample answers below.")
    ci = difference_interval(diffs)
    if ci is None:
        return None, (f"No verdict: this report has no per-row losses (an older version wrote it); press Evaluate "
                      "again for the interval.")
    mean, low, high = ci
    evidence = (f"on {rows} rows, {metric}: adapter minus base {mean:+.4f} (95% interval {low:+.4f} to "
                f"{high:+.4f}, {len(diffs)} paired rows)")
    if high < 0:
        outcome, words = "better", "the adapter fits the references **better** than the base model"
    elif low > 0:
        outcome, words = "worse", "the adapter fits the references **worse** than the base model"
    else:
        outcome, words = "no clear difference", "**no clear difference** between the adapter and the base model"
    return outcome, (f"{words[0].upper()}{words[1:]} {evidence}. Loss measures how likely the reference answers "
                     "are, not whether an answer is right: check the sample answers too.")
