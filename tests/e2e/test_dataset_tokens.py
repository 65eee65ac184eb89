"""A template whose markers the model's tokenizer lacks says so in the Dataset tab, and ticking the box
makes each marker one token in the preview (the run's tokenizer gets them as special tokens)."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import field, open_tab, pick_option

pytestmark = pytest.mark.e2e

MARKER = "<|start_header_id|>"


def test_missing_template_markers_are_named_and_ticking_the_box_makes_each_one_token(studio_page):
    page = studio_page
    open_tab(page, "Dataset")
    expect(field(page, "dataset-status")).to_contain_text("rows", timeout=60_000)  # the default sample
    table = field(page, "token-preview")  # one span per token
    notice = field(page, "dataset-new-tokens")
    expect(notice).to_be_hidden()  # the bundled model's own template: nothing missing
    pick_option(page, "dataset-template", r"^Llama-3")
    expect(notice).to_contain_text(MARKER, timeout=60_000)
    expect(notice).to_contain_text("lacks")
    expect(field(page, "rendered-text")).to_contain_text(MARKER)
    # Before: the marker is read as several ordinary pieces, so no token of the preview is the whole marker.
    expect(table.get_by_text(MARKER, exact=True)).to_have_count(0)
    field(page, "dataset-add-tokens").locator("input[type=checkbox]").check()
    expect(notice).to_contain_text("are added to the tokenizer for this run", timeout=60_000)
    expect(table.get_by_text(MARKER, exact=True).first).to_be_visible(timeout=60_000)
    # Back to the model's own template: the tick follows the template, and the notice goes.
    pick_option(page, "dataset-template", re.escape("The model's own template"))
    expect(notice).to_be_hidden(timeout=60_000)
