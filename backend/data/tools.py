"""Tool-calling conversations: normalizing them, and rendering them through the model's chat template with
their tools, the tool calls graded and the tool results masked.

Layouts read:
  OpenAI:   a row-level `tools` list (JSON schema of each function); assistant messages with `tool_calls`
            ([{"type": "function", "function": {"name", "arguments"}}]); `tool` messages with the results.
  ShareGPT: turns `function_call` (the value is the call as JSON: {"name", "arguments"}) and `observation`
            (the result), and a `tools` column holding the list as a JSON string (LLaMA-Factory's layout).

Normalized, an assistant turn that calls a tool is {"role": "assistant", "content": str, "tool_calls": [...]}
with each call's arguments a dict (what the templates of Qwen, Llama-3.1, Mistral and Hermes expect), and a
result is {"role": "tool", "content": str} (with `tool_call_id` / `name` when the row has them). The template
must know tools: one that never mentions them would drop the calls silently, so such a row is refused.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

from backend.core.errors import UserError

TOOL_COLUMNS = ("tools", "functions")
CALL_ROLES = ("function_call", "tool_call", "tool_calls")   # ShareGPT turns that hold a call
RESULT_ROLES = ("observation", "tool", "function", "ipython", "tool_response")


class BadTools(ValueError):
    """A row's tools or calls cannot be read; the message is the sentence's tail."""


def _json(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise BadTools(f"{what} is text that is not valid JSON.") from None
    return value


def parse_tools(value: Any) -> Optional[list[dict]]:
    """A row's tool list (each a function schema), or None when the row has none."""
    if value in (None, "", []):
        return None
    value = _json(value, "the tools list")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadTools("the tools list must be a list of function descriptions ({\"type\": \"function\", "
                       "\"function\": {\"name\": ..., \"parameters\": ...}}).")
    return [t if "function" in t or t.get("type") == "function" else {"type": "function", "function": t}
            for t in value]


def _call(raw: Any) -> dict:
    raw = _json(raw, "a tool call")
    if not isinstance(raw, dict):
        raise BadTools("a tool call must be an object with a name and arguments.")
    fn = raw.get("function", raw)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise BadTools("a tool call has no function name.")
    args = fn.get("arguments", fn.get("parameters", {}))
    args = _json(args, f"the arguments of the call to {fn['name']}") if args not in (None, "") else {}
    call = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if raw.get("id"):
        call["id"] = str(raw["id"])
    return call


def parse_calls(value: Any) -> list[dict]:
    value = _json(value, "the tool calls")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadTools("the tool calls must be a non-empty list.")
    return [_call(c) for c in value]


def message(m: dict, role_raw: str, role: Optional[str], text: Callable[[Any], str]) -> Optional[dict]:
    """The normalized message when `m` is part of a tool conversation, else None (an ordinary message).

    `text` turns a content value into a string (records' own check), so the errors read the same."""
    raw = role_raw.strip().lower()
    content = m.get("content", m.get("value", m.get("text")))
    if raw in CALL_ROLES:
        return {"role": "assistant", "content": "", "tool_calls": parse_calls(content)}
    if role == "assistant" and m.get("tool_calls"):
        return {"role": "assistant", "content": text(content) if content not in (None, "") else "",
                "tool_calls": parse_calls(m["tool_calls"])}
    if raw in RESULT_ROLES or role == "tool":
        if isinstance(content, (dict, list)) and not _content_parts(content):
            content = json.dumps(content, ensure_ascii=False)
        out = {"role": "tool", "content": text(content) if content is not None else ""}
        for key in ("tool_call_id", "name"):
            if m.get(key):
                out[key] = str(m[key])
        return out
    return None


def _content_parts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(p, dict) and "type" in p for p in value)


def is_tool_row(row: dict) -> bool:
    return bool(row.get("tools")) or any(m.get("tool_calls") or m.get("role") == "tool"
                                         for m in row.get("messages") or [])


def check_template(jinja: str, row: dict) -> None:
    """A sentence when the chat template cannot write this row's tools, calls or results."""
    msgs = row.get("messages") or []
    lacks = []
    if row.get("tools") and "tools" not in jinja:
        lacks.append("a tools list")
    if any(m.get("tool_calls") for m in msgs) and "tool_call" not in jinja:
        lacks.append("tool calls")
    if any(m.get("role") == "tool" for m in msgs) and not ("tool" in jinja or "ipython" in jinja):
        lacks.append("tool results")
    if lacks:
        listed = lacks[0] if len(lacks) == 1 else f"{', '.join(lacks[:-1])} and {lacks[-1]}"
        raise UserError(f"This row has {listed}, but the chat template has no tool support: it would "
                        "leave them out of the text and train the model on answers without the calls. Use a model "
                        "whose template supports tools (Qwen2.5, Llama-3.1, Mistral, Hermes), or remove the tool "
                        "turns.")


def _common(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def render(apply: Callable[..., str], jinja: str, row: dict, messages: list[dict], last_only: bool,
           train_all: bool) -> tuple[str, list[tuple[int, int]], list[tuple[int, int, str]]]:
    """(text, graded spans, kinds) of a tool conversation.

    `apply(messages, tools, generation_prompt)` renders with the template. Graded: each assistant turn, the
    calls included, from where the generation prompt ends to where the turn's own rendering ends (found by
    rendering prefixes, which works whatever the template does around the tools). Kinds: the character spans
    of tool calls ('tool_call') and tool results ('tool_result'), for the token view's colours."""
    check_template(jinja, row)
    tools = row.get("tools") or None
    full = apply(messages, tools, False)
    turns = [k for k, m in enumerate(messages)
             if m["role"] == "assistant" and (m.get("content", "").strip() or m.get("tool_calls"))]
    if last_only:
        turns = turns[-1:]
    spans: list[tuple[int, int]] = []
    kinds: list[tuple[int, int, str]] = []
    cache: dict[tuple[int, bool], str] = {(len(messages), False): full}

    def prefix(n: int, gen: bool) -> str:
        if (n, gen) not in cache:
            cache[(n, gen)] = apply(messages[:n], tools, gen) if n else ""
        return cache[(n, gen)]

    for k, m in enumerate(messages):
        is_turn = k in turns
        if not (is_turn or m["role"] == "tool" or m.get("tool_calls")):
            continue
        gen = prefix(k, True) if m["role"] == "assistant" else prefix(k, False)
        start = len(gen) if full.startswith(gen) else _common(gen, full)
        upto = prefix(k + 1, False)
        end = len(upto) if full.startswith(upto) else _common(upto, full)
        while end > start and full[end - 1].isspace():
            end -= 1
        if end <= start:
            continue
        if is_turn and not train_all:
            spans.append((start, end))
        if m["role"] == "tool":
            kinds.append((start, end, "tool_result"))
        elif m.get("tool_calls"):
            kinds.append((start, end, "tool_call"))
    return full, spans, kinds


def token_role(role: str, offset: tuple[int, int], kinds: Optional[list]) -> str:
    """The preview role of a token: 'tool_call' (graded) or 'tool_result' (masked) inside those spans."""
    if not kinds or role == "special":
        return role
    s, e = offset
    for a, b, kind in kinds:
        if s < b and e > a:
            return kind if (kind == "tool_call") == (role == "graded") else role
    return role
