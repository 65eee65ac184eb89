"""A file the studio cannot fully read says what is wrong and where, and the app stays usable."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import field, open_tab

pytestmark = pytest.mark.e2e


def upload(page, path) -> None:
    field(page, "dataset-file").locator("input[type=file]").set_input_files(str(path))


def test_upload_with_a_broken_line_names_the_line_and_keeps_the_good_rows(studio_page, tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "Say hi.", "output": "hi"}\n'
                   '{"instruction": "Say bye.", "output": "bye"}\n'
                   '{"instruction": "oops"\n')
    open_tab(studio_page, "Dataset")
    upload(studio_page, bad)
    status = field(studio_page, "dataset-status")
    expect(status).to_contain_text("broken.jsonl", timeout=60_000)
    expect(status).to_contain_text("2 rows")
    expect(status).to_contain_text("1 bad row(s) skipped")
    expect(field(studio_page, "dataset-errors")).to_contain_text("line 3: is not valid JSON")


def test_upload_with_no_usable_row_says_so_without_a_traceback(studio_page, tmp_path):
    bad = tmp_path / "garbage.jsonl"
    bad.write_text("this is not json\nnor is this\n")
    open_tab(studio_page, "Dataset")
    upload(studio_page, bad)
    status = field(studio_page, "dataset-status")
    expect(status).to_contain_text("No usable rows", timeout=60_000)
    expect(status).to_contain_text("line 1")
    expect(status.locator(".ft-error")).to_be_visible()
    expect(studio_page.locator("body")).not_to_contain_text("Traceback")
    # The studio is still up: another tab opens.
    open_tab(studio_page, "Method")
