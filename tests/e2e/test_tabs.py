"""The studio loads in a real browser with its five tabs, and each tab opens."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import TABS, open_tab, tab_button

pytestmark = pytest.mark.e2e


def test_page_shows_the_five_tabs_in_flow_order(studio_page):
    titles = [t.strip() for t in studio_page.get_by_role("tab").all_inner_texts()]
    assert titles[:5] == list(TABS)
    expect(studio_page).to_have_title("Fine-Tune Studio")


def test_clicking_each_tab_shows_its_panel_and_hides_the_others(studio_page):
    for title in TABS:
        panel = open_tab(studio_page, title)
        expect(panel).to_be_visible()
        for other in TABS:
            if other != title:
                expect(studio_page.locator(f"#tab-{other.lower()}")).to_be_hidden()
                expect(tab_button(studio_page, other)).to_have_attribute("aria-selected", "false")


UNLABELLED_JS = """panel => [...panel.querySelectorAll('input, textarea, select')]
    .filter(e => e.offsetParent !== null && e.type !== 'file' && e.type !== 'hidden')
    .filter(e => !(e.getAttribute('aria-label') || e.getAttribute('aria-labelledby') || e.closest('label')
                   || e.placeholder || (e.id && document.querySelector(`label[for="${e.id}"]`))))
    .map(e => (e.closest('[id]') || {}).id || e.outerHTML.slice(0, 80))"""


def test_every_tab_has_labelled_controls_and_no_placeholder_text(studio_page):
    for title in TABS:
        panel = open_tab(studio_page, title)
        text = panel.inner_text()
        for bad in ("TODO", "Traceback", "Not implemented"):
            assert bad not in text, f"the {title} tab shows '{bad}'"
        assert panel.locator("input, textarea").count() > 0
        assert panel.evaluate(UNLABELLED_JS) == [], f"unlabelled controls on the {title} tab"
