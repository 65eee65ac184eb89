"""The Dataset tab's health counts and its one-click "Drop duplicates", in the browser."""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import field, open_tab

pytestmark = pytest.mark.e2e


def test_health_shows_the_duplicates_and_drop_duplicates_loads_a_copy(studio_page, tmp_path):
    rows = [{"instruction": f"Give fact number {i} about the sea.", "output": f"Sea fact {i}."} for i in range(6)]
    rows.append({"instruction": "give FACT number 2 about the sea.", "output": "Sea fact 2."})
    path = tmp_path / "sea.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    open_tab(studio_page, "Dataset")
    field(studio_page, "dataset-file").locator("input[type=file]").set_input_files(str(path))
    status = field(studio_page, "dataset-status")
    expect(status).to_contain_text("7 rows", timeout=90_000)
    health = field(studio_page, "dataset-health")
    expect(health).to_contain_text("duplicates 1 ·", timeout=90_000)
    expect(health).to_contain_text("repeat an earlier row")
    field(studio_page, "dataset-drop-duplicates").click()
    expect(status).to_contain_text("Dropped 1 duplicate", timeout=90_000)
    expect(status).to_contain_text("6 rows")
    expect(health).to_contain_text("No problems found", timeout=90_000)
    assert len(path.read_text().splitlines()) == 7, "the original file is kept as it was"
