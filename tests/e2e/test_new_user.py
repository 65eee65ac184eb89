"""A new user's own data through the studio (issue 24): one studio start, several checks per page.

- a Dolly file is read with its context as the input, and the columns it leaves out are named;
- one current dataset: an upload clears the sample picker and the upload box, the same content is
  stored once;
- a preset sets the method and hyperparameters and never replaces the user's dataset, and the Train
  tab names the same dataset;
- a problem that needs no model (objective vs data) is marked at its field before the start;
- the card-size field is blank, not 0;
- a reload brings the choices back.
"""
from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import field, goto_studio, open_tab, pick_option, set_labelled, tab_button, wait_settled

pytestmark = pytest.mark.e2e


def upload(page, path) -> None:
    field(page, "dataset-file").locator("input[type=file]").set_input_files(str(path))


def dolly_file(tmp_path):
    rows = [{"instruction": "Summarize this paragraph.", "context": f"Paragraph {i}: Bern is the federal city.",
             "response": "Bern hosts the government.", "category": "summarization"} for i in range(6)]
    path = tmp_path / "dolly.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def capitals_file(tmp_path):
    path = tmp_path / "capitals.csv"
    path.write_text("Question,Answer\n" + "".join(f"Capital of country {i}?,City {i}\n" for i in range(8)))
    return path


def test_a_new_users_own_data_stays_chosen_through_presets_checks_and_a_reload(studio_page, studio_server, tmp_path):
    page = studio_page
    uploads = studio_server.workspace / "uploads"
    status = field(page, "dataset-status")

    # Dolly: context becomes the input; category is named as unused.
    open_tab(page, "Dataset")
    upload(page, dolly_file(tmp_path))
    expect(status).to_contain_text("Current dataset: dolly.jsonl (uploaded file)")
    expect(status).to_contain_text("read as dolly")
    expect(status).to_contain_text("Columns not used for training: category")
    expect(field(page, "rendered-text")).to_contain_text("Paragraph 0: Bern is the federal city.")
    # One current dataset: the sample picker and the upload box are cleared.
    expect(field(page, "dataset-sample").locator("input[role=combobox]")).to_have_value("")
    expect(field(page, "dataset-file")).not_to_contain_text("dolly.jsonl")
    wait_settled(page)
    # The same content dropped again is stored once.
    upload(page, dolly_file(tmp_path))
    wait_settled(page)
    expect(status).to_contain_text("dolly.jsonl")
    assert len([p for p in uploads.iterdir() if "dolly" in p.name]) == 1

    # The user's CSV, then a preset: the dataset stays the CSV everywhere.
    upload(page, capitals_file(tmp_path))
    expect(status).to_contain_text("Current dataset: capitals.csv (uploaded file)")
    wait_settled(page)
    panel = open_tab(page, "Method")
    pick_option(page, "method-preset", "Quick try on CPU")
    field(page, "method-apply-preset").click()
    expect(panel).to_contain_text("Your dataset is unchanged")
    wait_settled(page)
    # Blank means "the GPUs found"; it must not show 0.
    expect(field(page, "method-card-gb").locator("input, textarea").first).to_have_value("")
    train = open_tab(page, "Train")
    expect(train).to_contain_text("capitals.csv")
    expect(train).not_to_contain_text("instructions.jsonl")
    open_tab(page, "Dataset")
    expect(status).to_contain_text("capitals.csv")

    # An objective the data cannot train is marked at its field, with no model load and no start.
    panel = open_tab(page, "Method")
    set_labelled(panel, "Objective", "dpo")
    expect(field(page, "method-err-objective")).to_contain_text("prompt/chosen/rejected pairs", timeout=60_000)
    # Not open_tab: it waits for every pending event, and the estimate of each change queues behind
    # the others on a loaded machine; the summary is written without waiting for them.
    tab_button(page, "Train").click()
    expect(page.locator("#tab-train")).to_contain_text("Fix before starting", timeout=90_000)
    tab_button(page, "Method").click()
    set_labelled(panel, "Objective", "sft")
    expect(field(page, "method-err-objective")).to_be_hidden(timeout=90_000)
    set_labelled(panel, "Max steps", 7)
    wait_settled(page, timeout_ms=240_000)

    # A reload brings every choice back: the CSV, the preset's hyperparameters, the edited field.
    page.reload()
    goto_studio(page, studio_server.url)
    expect(status).to_contain_text("capitals.csv", timeout=90_000)
    tab_button(page, "Method").click()
    panel = page.locator("#tab-method")
    expect(panel.get_by_label(re.compile("^Max steps")).first).to_have_value("7", timeout=60_000)
    expect(panel.get_by_label(re.compile("^Learning rate")).first).to_have_value("0.001")
    tab_button(page, "Train").click()
    expect(page.locator("#tab-train")).to_contain_text("capitals.csv")
