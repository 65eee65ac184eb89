"""Tool-calling conversations (backend.data.tools): OpenAI and ShareGPT layouts normalize to one shape, render
through a tool-aware template with their tools, tool results are masked (-100) and tool calls graded; a
template without tool support is refused with a sentence."""
import json

import pytest
from transformers import AutoTokenizer

from backend.core.config import DataConfig
from backend.core.errors import UserError
from backend.data.records import load_rows
from backend.data.templates import IGNORE, encode_row, get_tokenizer, preview_row

# A ChatML template that writes tools, calls and results (written for this test, in the Hermes manner).
TOOL_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\nTools:\\n' }}{% for t in tools %}{{ t | tojson }}{{ '\\n' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and m['tool_calls'] is defined and m['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' + m['content'] }}{% for c in m['tool_calls'] %}"
    "{{ '<tool_call>' + c['function']['name'] + ' ' + (c['function']['arguments'] | tojson) + '</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% elif m['role'] == 'tool' %}{{ '<|im_start|>tool\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
OPENAI_ROW = {"tools": [WEATHER], "messages": [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "{\"temp_c\": -3, \"sky\": \"snowing\"}"},
    {"role": "assistant", "content": "It is -3 C and snowing in Oslo."}]}
SHAREGPT_ROW = {"tools": json.dumps([WEATHER["function"]]), "conversations": [
    {"from": "human", "value": "Weather in Oslo?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
    {"from": "observation", "value": "{\"temp_c\": -3, \"sky\": \"snowing\"}"},
    {"from": "gpt", "value": "It is -3 C and snowing in Oslo."}]}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return get_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def tool_tok(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    t.chat_template = TOOL_TEMPLATE
    return t


def load(tmp_path, row, name):
    p = tmp_path / name
    p.write_text(json.dumps(row) + "\n")
    return load_rows(str(p))


def test_openai_and_sharegpt_tool_rows_normalize_to_the_same_row(tmp_path):
    a, b = load(tmp_path, OPENAI_ROW, "o.jsonl"), load(tmp_path, SHAREGPT_ROW, "s.jsonl")
    assert b.mapping == {"messages": "conversations", "tools": "tools"} and not b.unused_columns
    ra, rb = a.rows[0], b.rows[0]
    assert ra["tools"] == rb["tools"] == [WEATHER]
    call = ra["messages"][1]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"] == \
        {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert rb["messages"][1]["tool_calls"][0]["function"] == call["tool_calls"][0]["function"]
    assert [m["role"] for m in rb["messages"]] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("row", [OPENAI_ROW, SHAREGPT_ROW], ids=["openai", "sharegpt"])
def test_tool_results_are_masked_and_tool_calls_graded(tmp_path, tool_tok, row):
    r = load(tmp_path, row, "t.jsonl").rows[0]
    enc = encode_row(tool_tok, r, DataConfig(max_length=1024))
    text = tool_tok.decode(enc["input_ids"])
    assert "get_weather" in text.split("<|im_end|>")[0], "the tools list is rendered"
    graded = tool_tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE])
    masked = tool_tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab == IGNORE])
    assert '<tool_call>get_weather {"city": "Oslo"}</tool_call>' in graded
    assert "It is -3 C and snowing in Oslo." in graded
    assert "snowing\"}" not in graded and "temp_c" in masked, "the tool result is masked"
    assert "Weather in Oslo?" in masked and "Tools:" in masked
    roles = {t["role"] for t in preview_row(tool_tok, r, DataConfig(max_length=1024))["tokens"]}
    assert {"tool_call", "tool_result", "graded", "prompt"} <= roles


def test_a_template_without_tool_support_is_refused_with_a_sentence(tmp_path, tok):
    r = load(tmp_path, OPENAI_ROW, "o.jsonl").rows[0]
    with pytest.raises(UserError, match="no tool support"):
        encode_row(tok, r, DataConfig(template="llama3"))
