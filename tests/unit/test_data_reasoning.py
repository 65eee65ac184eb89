"""Reasoning traces: `reasoning_content` and <think> blocks kept and graded, kept and masked, or stripped
(data.reasoning), through the tokenizer's own template on the tiny model."""
import json

import pytest

from backend.core.config import DataConfig
from backend.data.records import load_rows
from backend.data.templates import IGNORE, encode_row, get_tokenizer, render_text


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return get_tokenizer(str(tiny_model_dir))


@pytest.fixture()
def rows(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"messages": [
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "reasoning_content": "Six sevens: 7+7+7+7+7+7 makes forty-two.",
         "content": "The answer is 42."}]}) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "<think>Peru is in South America; its capital is Lima.</think>\nLima."}]})
        + "\n")
    return load_rows(str(p)).rows


def graded(tok, row, cfg):
    enc = encode_row(tok, row, cfg)
    return tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE])


def test_reasoning_content_is_folded_into_a_think_block(rows):
    reply = rows[0]["messages"][1]["content"]
    assert reply.startswith("<think>\nSix sevens") and reply.endswith("</think>\n\nThe answer is 42.")


@pytest.mark.parametrize("which", [0, 1])
def test_keep_grades_the_trace_and_the_answer(tok, rows, which):
    g = graded(tok, rows[which], DataConfig(reasoning="keep"))
    assert "<think>" in g and ("forty-two" in g or "Lima" in g.split("</think>")[0])
    assert ("42." in g) if which == 0 else g.rstrip().split("</think>")[-1].strip().startswith("Lima.")


@pytest.mark.parametrize("which", [0, 1])
def test_keep_ungraded_reads_the_trace_but_masks_it(tok, rows, which):
    cfg = DataConfig(reasoning="keep_ungraded")
    text = render_text(tok, rows[which], cfg)
    g = graded(tok, rows[which], cfg)
    assert "<think>" in text and "</think>" in text, "the model still reads the trace"
    assert "think" not in g and "forty-two" not in g and "South America" not in g
    assert ("The answer is 42." in g) if which == 0 else ("Lima." in g)


@pytest.mark.parametrize("which", [0, 1])
def test_strip_removes_the_trace(tok, rows, which):
    cfg = DataConfig(reasoning="strip")
    text = render_text(tok, rows[which], cfg)
    assert "<think>" not in text and "forty-two" not in text and "South America" not in text
    assert ("The answer is 42." in graded(tok, rows[which], cfg)) if which == 0 else \
        ("Lima." in graded(tok, rows[which], cfg))
