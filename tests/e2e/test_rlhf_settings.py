"""GRPO in the Method tab, in a real browser: choosing it explains it, asks for a reward at the
reward field, and a reward pattern clears that sentence; the estimate counts the sampling phase."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import field, open_tab, set_value, wait_settled

pytestmark = pytest.mark.e2e


def test_grpo_asks_for_a_reward_and_accepts_a_pattern(studio_page):
    page = studio_page
    open_tab(page, "Method")
    set_value(page, "method-col-objective", "grpo")
    expect(field(page, "method-objective-help")).to_contain_text("GRPO", timeout=60_000)
    wait_settled(page)
    # Choosing an alignment objective opens the section that holds its settings.
    expect(field(page, "method-col-alignment-reward_pattern")).to_be_visible(timeout=60_000)
    error = field(page, "method-err-alignment-reward_model")
    expect(error).to_contain_text("needs at least one reward", timeout=60_000)
    set_value(page, "method-col-alignment-reward_pattern", r"^ANSWER: .+ \| WHY: ")
    expect(error).to_be_hidden(timeout=60_000)
    wait_settled(page)
    expect(field(page, "method-estimate-details")).to_contain_text("KV cache", timeout=60_000)
    # Answers per update (batch 4 x accumulation 4) must be a multiple of the answers per prompt.
    set_value(page, "method-col-alignment-num_generations", 3)
    expect(field(page, "method-err-alignment-num_generations")).to_contain_text("multiple of 3", timeout=60_000)
