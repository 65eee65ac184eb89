"""Reasoning traces in assistant replies: DeepSeek/OpenAI-style `reasoning_content` fields and `<think>` blocks.

The records step folds a message's `reasoning_content` (or `reasoning`, `thinking`) into its content as a
`<think>...</think>` block in front of the answer, so every later step sees one layout. The data setting
`reasoning` then decides, when a row is rendered:

  keep            the trace stays in the reply and is graded like the answer (the model learns to think);
  keep_ungraded   the trace stays in the text the model reads but its tokens are masked (label -100);
  strip           the trace is removed before rendering (the model learns to answer without it).
"""
from __future__ import annotations

import re
from typing import Any, Optional

MODES = ("keep", "keep_ungraded", "strip")
FIELDS = ("reasoning_content", "reasoning", "thinking")
OPEN, CLOSE = "<think>", "</think>"
_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def fold(message: dict, content: str) -> str:
    """The reply with its separate reasoning field (if any) in front as a <think> block."""
    for key in FIELDS:
        trace = message.get(key)
        if isinstance(trace, str) and trace.strip():
            return f"{OPEN}\n{trace.strip()}\n{CLOSE}\n\n{content.lstrip()}"
    return content


def mode_of(data_cfg: Any) -> str:
    mode = getattr(data_cfg, "reasoning", "keep") or "keep"
    return mode if mode in MODES else "keep"


def strip(text: str) -> str:
    """The reply without its <think> blocks (and the space after them)."""
    return _BLOCK.sub("", text) if OPEN in text else text


def apply(messages: list[dict], data_cfg: Any) -> list[dict]:
    """The messages as they are rendered under the setting: with 'strip', assistant replies lose their traces."""
    if mode_of(data_cfg) != "strip":
        return messages
    return [{**m, "content": strip(m["content"])} if m.get("role") == "assistant" and OPEN in (m.get("content") or "")
            else m for m in messages]


def ungrade(text: str, spans: list[tuple[int, int]], data_cfg: Any) -> list[tuple[int, int]]:
    """With 'keep_ungraded', the graded spans minus every <think> block inside them."""
    if mode_of(data_cfg) != "keep_ungraded" or OPEN not in text:
        return spans
    blocks = [(m.start(), m.end()) for m in _BLOCK.finditer(text)]
    out: list[tuple[int, int]] = []
    for a, b in spans:
        pos = a
        for s, e in blocks:
            if e <= pos or s >= b:
                continue
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
        if pos < b:
            out.append((pos, b))
    return out


def title(mode: Optional[str]) -> str:
    return {"keep": "Keep and train on them", "keep_ungraded": "Keep, but do not train on them (masked)",
            "strip": "Strip them from the replies"}.get(mode or "keep", mode or "keep")
