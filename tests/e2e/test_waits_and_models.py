"""Issue 24 items 8 and 17 in the browser: a slow step says what it is doing, and the model picker offers
the models this machine already has and checks a hub id it does not.

A progress text can come and go faster than a poll sees it on an idle machine, so the page records
every text Gradio's progress overlay shows (a MutationObserver) and the test reads that record.
"""
from __future__ import annotations

import json
import shutil

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import REPO, field, goto_studio, open_tab, pick_option, set_value, wait_settled

pytestmark = pytest.mark.e2e

RECORD_PROGRESS = """() => {
  window.__progressTexts = [];
  const seen = () => document.querySelectorAll('[data-testid=status-tracker]').forEach(e => {
    const t = (e.textContent || '').trim();
    if (t && !window.__progressTexts.includes(t)) window.__progressTexts.push(t);
  });
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_applying_a_preset_says_what_it_is_doing(studio_page):
    page = studio_page
    panel = open_tab(page, "Method")
    page.evaluate(RECORD_PROGRESS)
    pick_option(page, "method-preset", "Quick try on CPU")
    field(page, "method-apply-preset").click()
    expect(panel).to_contain_text("Applied preset")
    page.wait_for_function("() => window.__progressTexts.some(t => t.includes('Applying the preset'))",
                           timeout=30_000)
    # The steps after it (the model's layers, the estimate) say theirs too.
    page.wait_for_function("() => window.__progressTexts.some(t => t.includes('Estimating the memory'))",
                           timeout=120_000)
    wait_settled(page)


def test_the_model_picker_offers_cached_models_and_checks_a_hub_id(studio_page, studio_server, tiny_model_dir):
    page = studio_page
    # One model in the workspace's model cache, one in the local hub cache (only config.json is read).
    in_workspace = REPO / ".test-cache" / "models" / "e2e-picker-model"
    shutil.rmtree(in_workspace, ignore_errors=True)
    shutil.copytree(tiny_model_dir, in_workspace)
    snapshot = studio_server.hub_cache / "models--e2e-org--cached-tiny" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text(json.dumps(json.loads((tiny_model_dir / "config.json").read_text())))
    try:
        goto_studio(page, studio_server.url)  # the picker's list is read per page load
        open_tab(page, "Method")
        combo = field(page, "method-model").locator("input[role=combobox]")
        combo.click()
        expect(page.get_by_role("option", name="e2e-picker-model (workspace cache)")).to_be_visible()
        expect(page.get_by_role("option", name="e2e-org/cached-tiny (hub cache)")).to_be_visible()
        # The hub is unreachable here (HF_HUB_OFFLINE): no download offers, and a hub id gets a sentence.
        expect(page.get_by_role("option", name="download from the hub")).to_have_count(0)
        combo.press("Escape")
        set_value(page, "method-model", "e2e-nobody/not-on-this-machine")
        combo.blur()
        expect(field(page, "method-err-model")).to_contain_text("the hub cannot be reached from here",
                                                                timeout=60_000)
        wait_settled(page)
    finally:
        shutil.rmtree(in_workspace, ignore_errors=True)
