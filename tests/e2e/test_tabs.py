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
