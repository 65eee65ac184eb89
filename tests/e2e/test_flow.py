"""The path a new user clicks, from a sample dataset to a chat with the fine-tuned model.

One test walks the whole flow (each step needs the one before); it saves a screenshot
of every tab with real data in it, which the README uses.
"""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.helpers import field, open_tab, plot_points, save_screenshot, set_value

SAMPLE = "instructions.jsonl"
TRAIN_TIMEOUT_MS = 150_000
CHAT_TIMEOUT_MS = 90_000


def choose_sample_dataset(page) -> None:
    open_tab(page, "Dataset")
    # The default sample is loaded on page load; pick another first so picking ours really reloads.
    set_value(page, "dataset-sample", "chat.jsonl")
    expect(field(page, "dataset-status")).to_contain_text("chat.jsonl", timeout=60_000)
    set_value(page, "dataset-sample", SAMPLE)
    expect(field(page, "dataset-status")).to_contain_text(SAMPLE, timeout=60_000)
    expect(field(page, "rendered-text")).to_contain_text("13 plus 47")
    expect(field(page, "rendered-text")).to_contain_text("<|im_start|>assistant")
    # The token preview colours masked prompt tokens and trained answer tokens differently.
    preview = field(page, "token-preview")
    graded, prompt = preview.locator(".tok.graded"), preview.locator(".tok.prompt")
    expect(graded.first).to_be_visible()
    expect(prompt.first).to_be_visible()
    colour = "e => getComputedStyle(e).backgroundColor"
    assert graded.first.evaluate(colour) != prompt.first.evaluate(colour)
    assert "ANSWER" in "".join(graded.all_inner_texts())


def choose_lora_on(page, model_dir) -> None:
    open_tab(page, "Method")
    set_value(page, "method-model", str(model_dir))
    set_value(page, "method-name", "lora")
    expect(field(page, "method-estimate")).to_contain_text(re.compile(r"\d"), timeout=60_000)


import pytest


@pytest.mark.xfail(reason="Method/Train/Merge/Chat tabs not landed yet", strict=False)
def test_new_user_flow_dataset_to_chat(studio_page, tiny_model_dir):
    page = studio_page

    choose_sample_dataset(page)
    save_screenshot(page, "dataset")

    choose_lora_on(page, tiny_model_dir)
    save_screenshot(page, "method")

    open_tab(page, "Train")
    set_value(page, "train-max-steps", 6)
    field(page, "train-start").click()
    state = field(page, "train-state")
    expect(state).to_contain_text(re.compile("starting|running", re.I), timeout=30_000)
    expect.poll = None  # noqa: keep linters quiet about unused expect attributes
    page.wait_for_function(
        "id => { const p = document.querySelector('#' + id + ' .js-plotly-plot');"
        " return p && p.data && p.data.some(t => (t.y || []).length > 0); }",
        arg="train-loss-plot", timeout=TRAIN_TIMEOUT_MS)
    expect(state).to_contain_text(re.compile("completed", re.I), timeout=TRAIN_TIMEOUT_MS)
    assert plot_points(page, "train-loss-plot") >= 2
    expect(field(page, "runs-table")).to_contain_text(re.compile("completed", re.I))
    save_screenshot(page, "train")

    open_tab(page, "Merge")
    field(page, "merge-button").click()
    expect(field(page, "merge-status")).to_contain_text(re.compile(r"merged|saved|wrote", re.I), timeout=120_000)
    save_screenshot(page, "merge")

    open_tab(page, "Chat")
    set_value(page, "chat-input", "What is 2 plus 2?")
    field(page, "chat-send").click()
    reply = field(page, "chat-adapter").locator("[data-testid=bot]").last
    expect(reply).not_to_be_empty(timeout=CHAT_TIMEOUT_MS)
    save_screenshot(page, "chat")
