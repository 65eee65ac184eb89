"""The path a new user clicks, from a sample dataset to a chat with the fine-tuned model.

One test walks the whole flow (each step needs the one before); it saves a screenshot
of every tab with real data in it, which the README uses.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import choose_lora_on, field, open_tab, pick_option, plot_points, save_screenshot, set_value

pytestmark = pytest.mark.e2e

SAMPLE = "instructions.jsonl"
# README screenshots are taken on the bundled model, whose replies read as language; the test
# itself uses the tiny random model, which trains in seconds.
DOCS_RUN = os.environ.get("FTSTUDIO_UPDATE_SCREENSHOTS") == "1"
SLOW = 4 if DOCS_RUN else 1
TRAIN_TIMEOUT_MS = 150_000 * SLOW
MERGE_TIMEOUT_MS = 120_000 * SLOW
CHAT_TIMEOUT_MS = 120_000 * SLOW


@dataclass(frozen=True)
class FlowModel:
    ref: str              # what the user types in the Method tab
    info: str             # what inspecting it shows
    steps: int
    temperature: float    # the tiny model is random: greedy decoding repeats a newline, so it samples
    max_new_tokens: int


@pytest.fixture()
def flow_model(request) -> FlowModel:
    if DOCS_RUN:
        from backend.core.models import DEFAULT_MODEL

        request.getfixturevalue("bundled_dir")
        return FlowModel(DEFAULT_MODEL, "30 layers", steps=30, temperature=0, max_new_tokens=40)
    tiny = request.getfixturevalue("tiny_model_dir")
    return FlowModel(str(tiny), "2 layers, hidden size 64", steps=4, temperature=1, max_new_tokens=12)


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


def watch_reply_lengths(page, elem_id: str) -> None:
    """Record every length the last bot message passes through, to tell streaming from one update."""
    page.evaluate(
        """id => { window.__replyLengths = [];
        new MutationObserver(() => {
            const bots = document.querySelectorAll('#' + id + ' [data-testid=bot]');
            if (bots.length) window.__replyLengths.push(bots[bots.length - 1].innerText.length);
        }).observe(document.getElementById(id), {subtree: true, childList: true, characterData: true}); }""",
        elem_id)


def test_new_user_flow_dataset_to_chat(studio_page, studio_server, flow_model):
    page, model = studio_page, flow_model

    choose_sample_dataset(page)
    save_screenshot(page, "dataset")

    choose_lora_on(page, model.ref, model.steps, model_info=model.info)
    save_screenshot(page, "method")

    panel = open_tab(page, "Train")
    # The Train tab shows the configuration the other tabs built.
    summary = field(page, "train-config")
    expect(summary).to_contain_text(SAMPLE)
    expect(summary).to_contain_text(model.ref)
    expect(summary).to_contain_text(f"{model.steps} steps")
    field(page, "train-start").click()
    state = field(page, "train-state")
    expect(state).to_contain_text(re.compile("starting|training|completed"), timeout=120_000)
    # The loss chart fills in while the run goes, then the run completes.
    page.wait_for_function(
        "() => { const p = document.querySelector('#train-loss-plot .js-plotly-plot');"
        " return p && p.data && p.data.some(t => (t.y || []).length > 0); }", timeout=TRAIN_TIMEOUT_MS)
    expect(state).to_contain_text("completed", timeout=TRAIN_TIMEOUT_MS)
    expect(state).to_contain_text("Adapter saved")
    assert plot_points(page, "train-loss-plot") >= model.steps
    expect(field(page, "runs-table")).to_contain_text("completed", timeout=120_000)
    expect(field(page, "train-progress-bar")).to_contain_text(f"step {model.steps} / {model.steps}")
    save_screenshot(page, "train")

    open_tab(page, "Merge")
    field(page, "merge-refresh").click()
    pick_option(page, "merge-run", "completed")
    expect(field(page, "merge-info")).to_contain_text("Base model")
    field(page, "merge-button").click()
    # Progress lines stream first; the result is the green sentence naming the folder.
    expect(field(page, "merge-status").locator(".ft-ok")).to_contain_text("Merged model saved to",
                                                                          timeout=MERGE_TIMEOUT_MS)
    merged = studio_server.workspace / "merged"
    assert any((d / "config.json").exists() for d in merged.iterdir())
    save_screenshot(page, "merge")

    open_tab(page, "Chat")
    field(page, "chat-refresh").click()
    pick_option(page, "chat-model", "^run: ")
    field(page, "chat-load").click()
    expect(field(page, "chat-status")).to_contain_text("Loaded adapter", timeout=CHAT_TIMEOUT_MS)
    page.get_by_text("Generation settings", exact=True).click()
    set_value(page, "chat-max-new-tokens", model.max_new_tokens)
    set_value(page, "chat-temperature", model.temperature)
    set_value(page, "chat-seed", 1)
    set_value(page, "chat-compare", True)
    expect(field(page, "chat-base")).to_be_visible()
    watch_reply_lengths(page, "chat-adapter")
    set_value(page, "chat-input", "What is 13 plus 47?")
    field(page, "chat-send").click()
    expect(field(page, "chat-status")).to_contain_text("Ready", timeout=CHAT_TIMEOUT_MS)
    expect(field(page, "chat-adapter").locator("[data-testid=user]").last).to_contain_text("13 plus 47")
    adapter_reply = field(page, "chat-adapter").locator("[data-testid=bot]").last
    base_reply = field(page, "chat-base").locator("[data-testid=bot]").last
    expect(adapter_reply).to_have_text(re.compile(r"\w"))
    expect(base_reply).to_have_text(re.compile(r"\w"))
    # Streamed: the reply grew in several steps rather than arriving whole.
    lengths = page.evaluate("() => window.__replyLengths")
    assert len(set(lengths)) >= 3, f"the reply did not stream (lengths seen: {lengths})"
    save_screenshot(page, "chat")
