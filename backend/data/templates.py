"""Chat templates, token labels and loss masks, and the token-level preview.

`encode_row` is the one function that decides which tokens are graded (label = token id)
and which are masked (label = -100). The trainer builds its dataset with it and the
Dataset tab's preview is built from it, so what a person sees is what trains.

How masking works: the row is rendered to text with the chat template, and each
assistant turn's character span is found by rendering the conversation prefix by
prefix (messages[:k] then messages[:k+1]); the reply starts where its own text appears
in that difference. This needs no `{% generation %}` markers in the template, works for
any number of turns and for templates (Llama-2, Mistral) that have no generation prompt.
The text is tokenized once with character offsets, and a token is graded when any of
its characters lies in a graded span.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from backend.core.errors import UserError
from backend.core.io import atomic_write_json
from backend.core.models import load_tokenizer
from backend.data import packing, reasoning, tools
from backend.data.rowstore import row_bytes

IGNORE = -100

# Registry of well-known formats, written as Jinja chat templates so they go through the
# same renderer (transformers' apply_chat_template) as a tokenizer's own template.
TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "llama2": (
        "{% set ns = namespace(sys='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.sys = '<<SYS>>\\n' + m['content'] + '\\n<</SYS>>\\n\\n' %}"
        "{% elif m['role'] == 'user' %}{{ bos_token + '[INST] ' + ns.sys + m['content'] + ' [/INST]' }}"
        "{% set ns.sys = '' %}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
        " + (m['content'] | trim) + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "mistral": (
        "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\\n\\n' %}"
        "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.sys + m['content'] + ' [/INST]' }}{% set ns.sys = '' %}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"),
    "gemma": (
        "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\\n\\n' %}"
        "{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\\n'"
        " + (ns.sys if m['role'] == 'user' else '') + (m['content'] | trim) + '<end_of_turn>\\n' }}"
        "{% if m['role'] == 'user' %}{% set ns.sys = '' %}{% endif %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"),
    "phi3": (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"),
    "alpaca": (
        "{% set ns = namespace(sys='Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.') %}{% for m in messages %}{% if m['role'] == 'system' %}"
        "{% set ns.sys = m['content'] %}{% endif %}{% endfor %}{{ ns.sys + '\\n\\n' }}"
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'assistant' %}{{ '### Response:\\n' + m['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"),
}
TEMPLATE_TITLES = {
    "auto": "The model's own template", "chatml": "ChatML (<|im_start|>)", "llama2": "Llama-2 ([INST])",
    "llama3": "Llama-3 (<|start_header_id|>)", "mistral": "Mistral ([INST], no system role)",
    "gemma": "Gemma (<start_of_turn>)", "phi3": "Phi-3 (<|user|>)", "alpaca": "Alpaca (### Instruction)",
}
FALLBACK_TEMPLATE = "alpaca"  # for tokenizers without a template of their own: plain words, no special markers


# ---------------------------------------------------------------- tokenizer cache

_TOKENIZERS: dict[str, Any] = {}
_TOK_LOCK = threading.Lock()


def get_tokenizer(model: str, trust_remote_code: bool = False):
    """Load a model's tokenizer once per process; the preview must not reload it per click."""
    key = f"{model}|{trust_remote_code}"
    with _TOK_LOCK:
        tok = _TOKENIZERS.get(key)
        if tok is None:
            tok = _load_tokenizer_retrying(model, trust_remote_code)
            _TOKENIZERS[key] = tok
        return tok


def _load_tokenizer_retrying(model: str, trust_remote_code: bool, attempts: int = 3):
    import time

    for attempt in range(attempts):
        try:
            return load_tokenizer(model, trust_remote_code=trust_remote_code)
        except ImportError:
            # transformers' lazy module can fail a first import that races another thread's
            # (the studio prepares the bundled model in the background); a retry succeeds.
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


# ---------------------------------------------------------------- rendering

def resolve_template(tokenizer, name: str) -> tuple[str, str, Optional[str]]:
    """(name used, Jinja source, note for the user or None)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: the default one
            own = own.get("default") or next(iter(own.values()), None)
        if own:
            return "auto", own, None
        return FALLBACK_TEMPLATE, TEMPLATES[FALLBACK_TEMPLATE], (
            "This model's tokenizer has no chat template, so the Alpaca layout is used. Pick another "
            "template if the model was trained with one.")
    if name not in TEMPLATES:
        raise UserError(f"Unknown chat template '{name}'. Choose auto or one of: {', '.join(TEMPLATES)}.")
    return name, TEMPLATES[name], None


_RENDERERS: dict[tuple, Any] = {}


def _plain_messages(messages: list[dict]) -> bool:
    """Messages of only string roles and contents: what the direct render below passes through unchanged."""
    return all(type(m) is dict and m.keys() <= {"role", "content"} and type(m.get("role")) is str
               and type(m.get("content")) is str for m in messages)


_SNAPSHOT = threading.local()  # .tokens: (tokenizer, its _token_key) while encode_full_batch runs


def _token_key(tokenizer) -> tuple:
    """What the compiled renderers are keyed by. A tokenizer's special-token attributes cost a few
    microseconds each (transformers resolves them in __getattr__), and every row asked for them three
    times; while a batch is encoded they cannot change, so the batch reads them once."""
    snap = getattr(_SNAPSHOT, "tokens", None)
    if snap is not None and snap[0] is tokenizer:
        return snap[1]
    return (id(tokenizer), tokenizer.bos_token, tokenizer.eos_token)


def _direct_renderer(tokenizer, jinja: str):
    """The compiled template and the variables apply_chat_template would give it, or None.

    apply_chat_template normalises the messages (objects to dicts, None keys dropped, reasoning
    aliases, sandbox-safe copies) on every call, which was a third of encoding time; for plain
    string messages none of that changes anything, so the compiled template renders them directly
    (tests/unit/test_data_speed_path.py checks the texts are identical).
    """
    key = (jinja, *_token_key(tokenizer))
    if key not in _RENDERERS:
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template, _plain_template_data

            variables = _plain_template_data({**tokenizer.special_tokens_map, "bos_token": tokenizer.bos_token or "",
                                              "eos_token": tokenizer.eos_token or ""})
            compiled = _compile_jinja_template(jinja)
            # Template.render merges the template's globals (a ChainMap, slow to iterate) into a new dict
            # on every call, twice over; the merge is done once here and each render gets a copy of it.
            globals_ = dict(compiled.globals)
            _RENDERERS[key] = (compiled, {**globals_, **variables, "tools": None, "documents": None}, globals_)
        except Exception:  # noqa: BLE001 - another transformers version: the public call is used
            _RENDERERS[key] = None
        if len(_RENDERERS) > 64:
            _RENDERERS.pop(next(iter(_RENDERERS)))
    return _RENDERERS[key]


def _render(tokenizer, jinja: str, messages: list[dict], generation_prompt: bool = False, tools=None,
            plain: Optional[bool] = None) -> str:
    """The template's text of the messages; `plain` says the messages were already found plain (a copy
    of checked messages with string contents swapped in), so they are not checked again."""
    if not messages:
        return ""
    try:
        if plain is None:
            plain = _plain_messages(messages)
        direct = _direct_renderer(tokenizer, jinja) if tools is None and plain else None
        if direct is not None:
            compiled, scope, globals_ = direct
            from jinja2.runtime import new_context

            ctx = new_context(compiled.environment, compiled.name, compiled.blocks,
                              {**scope, "messages": [dict(m) for m in messages],
                               "add_generation_prompt": generation_prompt}, True, globals_)
            return compiled.environment.concat(compiled.root_render_func(ctx))
        return tokenizer.apply_chat_template(
            messages, chat_template=jinja, tokenize=False, add_generation_prompt=generation_prompt,
            bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "", tools=tools)
    except Exception as e:  # noqa: BLE001 - template code raises anything (TemplateError, TypeError...)
        raise UserError(f"The chat template could not render this conversation: {e}. Some templates "
                        "need strictly alternating user/assistant turns; pick another template or fix "
                        "the row.") from None


def to_conversation(row: dict) -> Optional[list[dict]]:
    """The row as chat messages, or None for plain rows (text, prompt/completion)."""
    if "messages" in row:
        return list(row["messages"])
    if "chosen" in row:  # preference rows preview as prompt + chosen reply
        prompt, chosen = row.get("prompt") or "", row["chosen"]
        msgs = list(prompt) if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])
        return msgs + (list(chosen) if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}])
    if "label" in row and "completion" in row:
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    return None


def _with_system(messages: list[dict], system_prompt: Optional[str]) -> list[dict]:
    # The row's own system message wins: the setting is a default for rows without one.
    if system_prompt and system_prompt.strip() and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}] + messages
    return messages


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Rendered:
    text: str
    graded: list[tuple[int, int]]   # character spans whose tokens get labels
    grade_all: bool                 # every token graded (text rows, train_on_prompt)
    add_special_tokens: bool        # let the tokenizer add BOS (plain rows; templates write their own)
    append_eos: bool
    template: str
    note: Optional[str] = None
    kinds: Optional[list] = None    # (start, end, 'tool_call' | 'tool_result') spans the token view colours


def _reply_turns(msgs: list[dict], last_only: bool) -> list[int]:
    turns = [k for k, m in enumerate(msgs) if m["role"] == "assistant" and m["content"].strip()]
    return turns[-1:] if last_only and turns else turns


def _assistant_spans(tokenizer, jinja: str, msgs: list[dict], full: str, last_only: bool,
                     plain: Optional[bool] = None) -> list[tuple[int, int]]:
    """Graded character spans of the assistant replies, in time linear in the conversation.

    The conversation is rendered once more with each graded reply replaced by a marker. Where
    putting the replies back into that text gives the real text, the markers say where each
    reply lies, and a turn's end is where a two-message conversation ends after its reply
    (the end-of-turn marker). A turn where either check fails, or a template that rewrites
    replies, is measured by rendering prefixes (`_spans_by_prefix`), which is exact but
    quadratic in the number of turns.
    """
    turns = _reply_turns(msgs, last_only)
    if not turns:
        return []
    if "\x00" in full:
        return _spans_by_prefix(tokenizer, jinja, msgs, full, turns)
    marked = list(msgs)
    for k in turns:
        marked[k] = {**msgs[k], "content": f"\x00{k}\x00"}
    skeleton = _render(tokenizer, jinja, marked, plain=plain)
    parts = skeleton.split("\x00")
    if len(parts) != 2 * len(turns) + 1 or [int(p) for p in parts[1::2]] != turns:
        return _spans_by_prefix(tokenizer, jinja, msgs, full, turns)
    tail = _turn_tail(tokenizer, jinja)
    spans: list[tuple[int, int]] = []
    pos, rebuilt = 0, []
    fallback: list[int] = []
    for j, k in enumerate(turns):
        lead = parts[2 * j]
        rebuilt.append(lead)
        pos += len(lead)
        content = msgs[k]["content"]
        # The template writes the reply as it is or trimmed; either way the graded text is the trimmed reply.
        shown = content if full.startswith(content, pos) else content.strip()
        if not full.startswith(shown, pos):
            return _spans_by_prefix(tokenizer, jinja, msgs, full, turns)
        start = pos + (len(shown) - len(shown.lstrip()))
        after = pos + len(shown)
        if tail is not None and full.startswith(tail, after):
            end = after + len(tail)
        else:
            fallback.append(len(spans))
            end = after
        rebuilt.append(shown)
        pos = after
        spans.append((start, end))
    rebuilt.append(parts[-1])
    if "".join(rebuilt) != full:
        return _spans_by_prefix(tokenizer, jinja, msgs, full, turns)
    for i in fallback:  # a turn that ends unlike the two-message example: its prefix says where
        upto = _render(tokenizer, jinja, msgs[:turns[i] + 1])
        seg_end = len(upto) if full.startswith(upto) else _common_prefix(upto, full)
        spans[i] = (spans[i][0], max(spans[i][1], seg_end))
    out = []
    for a, b in spans:
        b = _rstrip_end(full, a, b)
        if b > a:
            out.append((a, b))
    return out


def _rstrip_end(full: str, start: int, end: int) -> int:
    while end > start and full[end - 1].isspace():
        end -= 1  # the newline after an end-of-turn marker is the next turn's layout, not the reply
    return end


_TAILS: dict[tuple, Optional[str]] = {}


def _turn_tail(tokenizer, jinja: str) -> Optional[str]:
    """What the template writes after a reply to close the turn (e.g. '<|im_end|>\\n'), or None."""
    key = (jinja, *_token_key(tokenizer))
    if key not in _TAILS:
        mark = "\x00reply\x00"
        try:
            two = _render(tokenizer, jinja, [{"role": "user", "content": "question"},
                                             {"role": "assistant", "content": mark}])
            _TAILS[key] = two[two.index(mark) + len(mark):] if two.count(mark) == 1 else None
        except (UserError, ValueError):
            _TAILS[key] = None
    return _TAILS[key]


def _spans_by_prefix(tokenizer, jinja: str, msgs: list[dict], full: str, turns: list[int]) -> list[tuple[int, int]]:
    spans = []
    prefixes = {len(msgs): full}  # a prefix can serve two turns (the end of one, the start of the next)

    def prefix(n: int) -> str:
        if n not in prefixes:
            prefixes[n] = _render(tokenizer, jinja, msgs[:n])
        return prefixes[n]

    for k in turns:
        before = prefix(k)
        upto = prefix(k + 1)
        seg_start = _common_prefix(before, full)
        seg_end = len(upto) if full.startswith(upto) else _common_prefix(upto, full)
        reply = msgs[k]["content"].strip()
        start = full.find(reply, seg_start, seg_end) if reply else -1
        if start < 0:
            # The template rewrote the reply; fall back to the generation prompt's end.
            gen = _render(tokenizer, jinja, msgs[:k], generation_prompt=True)
            start = len(gen) if full.startswith(gen) and seg_start <= len(gen) < seg_end else seg_start
        end = _rstrip_end(full, start, seg_end)
        if end > start:
            spans.append((start, end))
    return spans


def render(tokenizer, row: dict, data_cfg: Any) -> Rendered:
    """Text of a row and its graded character spans."""
    train_all = bool(getattr(data_cfg, "train_on_prompt", False))
    if "text" in row and len(row) == 1:
        return Rendered(row["text"], [(0, len(row["text"]))], True, True, True, "none")
    msgs = to_conversation(row)
    if msgs is None:  # prompt/completion: plain concatenation, as TRL does for non-chat rows
        p, c = row["prompt"], row["completion"]
        return Rendered(p + c, [(len(p), len(p) + len(c))], train_all, True, True, "none")
    name, jinja, note = resolve_template(tokenizer, getattr(data_cfg, "template", "auto"))
    msgs = _with_system(reasoning.apply(msgs, data_cfg), getattr(data_cfg, "system_prompt", None))
    if tools.is_tool_row(row):  # tools, calls and results: backend.data.tools renders them with the template
        full, spans, kinds = tools.render(lambda ms, ts, gen: _render(tokenizer, jinja, ms, gen, ts), jinja, row,
                                          msgs, bool(getattr(data_cfg, "last_turn_only", False)), train_all)
        return Rendered(full, reasoning.ungrade(full, spans, data_cfg), train_all, False, False, name, note, kinds)
    plain = _plain_messages(msgs)  # the marked copy _assistant_spans renders is plain exactly when these are
    full = _render(tokenizer, jinja, msgs, plain=plain)
    spans = [] if train_all else _assistant_spans(tokenizer, jinja, msgs, full,
                                                  bool(getattr(data_cfg, "last_turn_only", False)), plain)
    return Rendered(full, reasoning.ungrade(full, spans, data_cfg), train_all, False, False, name, note)


def render_text(tokenizer, row: dict, data_cfg: Any) -> str:
    """The row as the model will read it (chat template applied)."""
    return render(tokenizer, row, data_cfg).text


# ---------------------------------------------------------------- tokenizing and labels

@dataclass
class Encoding:
    """A row tokenized in full (before truncation), with what the preview needs."""
    text: str
    input_ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]
    template: str
    note: Optional[str]
    kinds: Optional[list] = None    # tool-call / tool-result character spans (Rendered.kinds)


def _tokenize(tokenizer, r: Rendered) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = tokenizer(r.text, add_special_tokens=r.add_special_tokens, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        # Tokenizers without offsets: tokenize piece by piece between span edges.
        cuts = sorted({0, len(r.text), *[p for s in r.graded for p in s]})
        ids, offs = [], []
        if r.add_special_tokens and getattr(tokenizer, "bos_token_id", None) is not None \
                and getattr(tokenizer, "add_bos_token", False):
            ids.append(tokenizer.bos_token_id)
            offs.append((0, 0))
        for a, b in zip(cuts, cuts[1:]):
            piece = tokenizer(r.text[a:b], add_special_tokens=False)["input_ids"]
            ids.extend(piece)
            offs.extend([(a, b)] * len(piece))
        return ids, offs


def _span_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], n_chars: int) -> list[int]:
    """A token's label is its id when any of its characters lies in a graded span, else IGNORE.

    Characters [s, e) meet a span [a, b) exactly when s < b and e > a, so no per-character array
    is needed: a plain loop for the usual one or two spans, numpy for a long conversation's many.
    """
    if not ids:
        return []
    if not spans:
        return [IGNORE] * len(ids)
    if len(spans) <= 4:
        if len(spans) == 1:
            (a, b), = spans
            # The test that fails first for most tokens (those before the reply) goes first.
            return [t if e > a and s < b and e > s else IGNORE for t, (s, e) in zip(ids, offsets)]
        return [t if e > s and any(s < b and e > a for a, b in spans) else IGNORE for t, (s, e) in zip(ids, offsets)]
    import numpy as np

    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    s, e = offs[:, 0], offs[:, 1]
    starts = np.asarray([a for a, _ in spans], dtype=np.int64)
    ends = np.asarray([b for _, b in spans], dtype=np.int64)
    order = np.argsort(starts)
    starts, reach = starts[order], np.maximum.accumulate(ends[order])
    # The spans starting before a token's end; the furthest any of them reaches must pass its start.
    k = np.searchsorted(starts, e, side="left") - 1
    graded = (e > s) & (k >= 0) & (reach[np.maximum(k, 0)] > s)
    return np.where(graded, np.asarray(ids, dtype=np.int64), IGNORE).tolist()


def encode_full(tokenizer, row: dict, data_cfg: Any) -> Encoding:
    r = render(tokenizer, row, data_cfg)
    ids, offsets = _tokenize(tokenizer, r)
    labels = list(ids) if r.grade_all else _span_labels(ids, offsets, r.graded, len(r.text))
    eos = getattr(tokenizer, "eos_token_id", None)
    if r.append_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos if (r.grade_all or r.graded) else IGNORE)
        offsets.append((len(r.text), len(r.text)))
    return Encoding(r.text, ids, labels, offsets, r.template, r.note, r.kinds)


def encode_row(tokenizer, row: dict, data_cfg: Any) -> dict:
    """input_ids, attention_mask, labels (-100 = masked) for one normalized row, truncated to max_length."""
    e = encode_full(tokenizer, row, data_cfg)
    n = min(len(e.input_ids), int(data_cfg.max_length))
    return {"input_ids": e.input_ids[:n], "attention_mask": [1] * n, "labels": e.labels[:n]}


def has_graded(encoded: dict) -> bool:
    return any(x != IGNORE for x in encoded["labels"][1:])  # label 0 is never predicted


@dataclass
class EncodeReport:
    encoded: list[dict]
    kept: list[int]          # index into the input rows of each encoded row
    truncated: int
    dropped: list[int]       # rows with nothing left to learn after truncation


BATCH_ROWS = 1000  # rows per tokenizer call: big enough to amortise the call, small enough to bound memory
PROCESS_ROWS = 50_000  # from this many rows on, encoding runs in worker processes (FTSTUDIO_DATA_PROCS caps them)
TASK_ROWS = 10 * BATCH_ROWS  # rows one worker encodes per task


def _direct_backend(tokenizer):
    """The Rust tokenizer itself, where calling it gives exactly what tokenizer(...) would, else None.

    tokenizer(...) first resets truncation and padding and then converts every encoding to Python
    lists twice; with neither set and the same special-token splitting, the backend's own
    encode_batch returns the same ids and offsets (tests/unit/test_data_speed_path.py checks it).
    """
    bk = getattr(tokenizer, "_tokenizer", None)
    if bk is None or not hasattr(bk, "encode_batch") or not getattr(tokenizer, "is_fast", False):
        return None
    try:
        if bk.truncation is not None or bk.padding is not None:
            return None
        if bool(bk.encode_special_tokens) != bool(getattr(tokenizer, "split_special_tokens", False)):
            return None
    except AttributeError:
        return None
    return bk


def _tokenize_batch(tokenizer, rendered: list[Rendered]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Token ids and character offsets of many rendered rows, one tokenizer call per run of like rows."""
    out: list = [None] * len(rendered)
    groups: dict[bool, list[int]] = {}
    for i, r in enumerate(rendered):
        groups.setdefault(r.add_special_tokens, []).append(i)
    backend = _direct_backend(tokenizer)
    for special, idx in groups.items():
        texts = [rendered[i].text for i in idx]
        if backend is not None:
            for i, enc in zip(idx, backend.encode_batch(texts, add_special_tokens=special)):
                out[i] = (enc.ids, enc.offsets)
            continue
        try:
            enc = tokenizer(texts, add_special_tokens=special, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError):
            for i in idx:  # tokenizers without offsets: the row-by-row path
                out[i] = _tokenize(tokenizer, rendered[i])
            continue
        for j, i in enumerate(idx):
            out[i] = (list(enc["input_ids"][j]), [tuple(o) for o in enc["offset_mapping"][j]])
    return out


def _finish(tokenizer, r: Rendered, ids: list[int], offsets: list[tuple[int, int]], eos: Optional[int]) -> tuple[list[int], list[int]]:
    labels = list(ids) if r.grade_all else _span_labels(ids, offsets, r.graded, len(r.text))
    if r.append_eos and eos is not None and (not ids or ids[-1] != eos):
        ids = ids + [eos]
        labels.append(eos if (r.grade_all or r.graded) else IGNORE)
    return ids, labels


def encode_full_batch(tokenizer, rows: list[dict], data_cfg: Any) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of every row, untruncated: rendered one by one, tokenized in one call."""
    before = getattr(_SNAPSHOT, "tokens", None)
    _SNAPSHOT.tokens = (tokenizer, _token_key(tokenizer))
    try:
        rendered = [render(tokenizer, row, data_cfg) for row in rows]
    finally:
        _SNAPSHOT.tokens = before
    eos = getattr(tokenizer, "eos_token_id", None)
    return [_finish(tokenizer, r, list(ids), offs, eos)
            for r, (ids, offs) in zip(rendered, _tokenize_batch(tokenizer, rendered))]


@dataclass
class EncodedBatch:
    """A run of encoded rows, truncated to max length, as flat int32 arrays (a few bytes per token)."""
    start: int            # index of the batch's first input row
    rows: int             # input rows the batch covers
    kept: Any             # np.int64 indices (into all input rows) of the rows that train
    lengths: Any          # np.int32 token count of each kept row
    ids: Any              # np.int32, the kept rows' tokens end to end
    labels: Any           # np.int32, their labels (IGNORE = masked)
    truncated: int        # rows longer than max length
    dropped: list[int]    # rows with nothing left to learn after truncation


def encode_batch(tokenizer, rows: list[dict], data_cfg: Any, start: int = 0) -> EncodedBatch:
    """encode_row for a run of rows, kept compact: what the dataset writer and the workers exchange."""
    import numpy as np
    from itertools import chain

    cap = int(data_cfg.max_length)
    kept, ids_out, labels_out, lengths, dropped, truncated = [], [], [], [], [], 0
    for k, (ids, labels) in enumerate(encode_full_batch(tokenizer, rows, data_cfg)):
        if len(ids) > cap:
            truncated += 1
            ids, labels = ids[:cap], labels[:cap]
        if any(x != IGNORE for x in labels[1:]):  # has_graded: label 0 is never predicted
            kept.append(start + k)
            ids_out.append(ids)
            labels_out.append(labels)
            lengths.append(len(ids))
        else:
            dropped.append(start + k)
    total = sum(lengths)
    return EncodedBatch(start, len(rows), np.asarray(kept, dtype=np.int64), np.asarray(lengths, dtype=np.int32),
                        np.fromiter(chain.from_iterable(ids_out), dtype=np.int32, count=total),
                        np.fromiter(chain.from_iterable(labels_out), dtype=np.int32, count=total),
                        truncated, dropped)


def data_processes(rows: int) -> int:
    """Worker processes for encoding `rows` rows: 1 below PROCESS_ROWS, else the CPUs (FTSTUDIO_DATA_PROCS caps)."""
    import os

    if rows < PROCESS_ROWS:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap = os.environ.get("FTSTUDIO_DATA_PROCS", "").strip()
    if cap.isdigit() and int(cap) >= 1:
        cpus = min(cpus, int(cap))
    return max(1, min(cpus, 16))


# What a forked worker encodes from: set in the parent just before the pool starts, inherited by fork,
# so the rows are never pickled (only each task's result comes back, as flat arrays).
_JOB: Optional[tuple] = None


def _worker_encode(start: int, stop: int) -> EncodedBatch:
    tokenizer, rows, data_cfg = _JOB
    return encode_batch(tokenizer, rows[start:stop], data_cfg, start)


def _pool_context():
    import multiprocessing as mp

    try:
        return mp.get_context("fork")  # the rows and the tokenizer are inherited, not sent
    except ValueError:
        return None


def iter_encoded(tokenizer, rows: list[dict], data_cfg: Any, progress=None,
                 processes: Optional[int] = None) -> Iterator[EncodedBatch]:
    """The rows encoded in order, BATCH_ROWS at a time, in worker processes for large files.

    progress(fraction, text), when given, is called after every batch. With several processes at
    most two tasks per worker are in flight, so memory stays bounded by the tasks, not the file.
    """
    global _JOB
    n = len(rows)
    procs = data_processes(n) if processes is None else max(1, int(processes))
    ctx = _pool_context() if procs > 1 else None

    def tell(done: int) -> None:
        if progress is not None:
            progress(done / n if n else 1.0, f"Tokenizing: {done:,} of {n:,} rows")

    if ctx is None:
        for start in range(0, n, BATCH_ROWS):
            batch = encode_batch(tokenizer, rows[start:start + BATCH_ROWS], data_cfg, start)
            tell(start + batch.rows)
            yield batch
        return
    import os
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one Rust thread per worker, no fork warning
    _JOB = (tokenizer, rows, data_cfg)
    try:
        with ProcessPoolExecutor(procs, mp_context=ctx) as pool:
            spans = deque((s, min(s + TASK_ROWS, n)) for s in range(0, n, TASK_ROWS))
            running: deque = deque()
            while spans or running:
                while spans and len(running) < 2 * procs:
                    running.append(pool.submit(_worker_encode, *spans.popleft()))
                batch = running.popleft().result()
                tell(batch.start + batch.rows)
                yield batch
    finally:
        _JOB = None


def encode_rows(tokenizer, rows: list[dict], data_cfg: Any, progress=None) -> EncodeReport:
    """encode_row for many rows, as Python lists (the preview's packing plan; training streams to Arrow)."""
    encoded, kept, dropped, truncated = [], [], [], 0
    for batch in iter_encoded(tokenizer, rows, data_cfg, progress, processes=1):
        bounds = [0, *batch.lengths.cumsum().tolist()]
        ids, labels = batch.ids.tolist(), batch.labels.tolist()
        for j in range(len(batch.lengths)):
            a, b = bounds[j], bounds[j + 1]
            encoded.append({"input_ids": ids[a:b], "attention_mask": [1] * (b - a), "labels": labels[a:b]})
        kept.extend(batch.kept.tolist())
        dropped.extend(batch.dropped)
        truncated += batch.truncated
    return EncodeReport(encoded, kept, truncated, dropped)


def _all_text(rows: list[dict]) -> bool:
    return all("text" in r and len(r) == 1 for r in rows)


@dataclass
class PackPlan:
    """The packed sequences of a dataset and where each came from."""
    sequences: list[dict]    # input_ids, labels, position_ids, segment
    rows: list[list[int]]    # index into the input rows of each segment of each sequence
    efficiency: float        # real tokens / token slots


def _no_rows_left(rows: list[dict], data_cfg: Any) -> UserError:
    return UserError(
        f"None of the {len(rows)} rows has a graded token within max_length={data_cfg.max_length}: "
        "the answers are cut off. Raise max length, or shorten the prompts.")


def plan_packing(tokenizer, rows: list[dict], data_cfg: Any) -> PackPlan:
    """The packed training sequences, planned over the whole dataset (the preview shows one of them)."""
    cap = int(data_cfg.max_length)
    if _all_text(rows):
        full = [encode_full(tokenizer, r, data_cfg) for r in rows]
        seqs = packing.chunk_stream([{"input_ids": e.input_ids, "labels": e.labels} for e in full], cap)
        return PackPlan(seqs, [s.pop("rows") for s in seqs],
                        packing.efficiency([len(s["input_ids"]) for s in seqs], cap))
    rep = encode_rows(tokenizer, rows, data_cfg)
    if not rep.encoded:
        raise _no_rows_left(rows, data_cfg)
    lengths = [len(e["input_ids"]) for e in rep.encoded]
    bins = packing.plan_bins(lengths, cap)
    return PackPlan(packing.pack(rep.encoded, cap, bins), [[rep.kept[i] for i in b] for b in bins],
                    packing.efficiency(lengths, cap, bins))


# Bump when encoding changes what a row becomes: cached datasets of older versions are then ignored.
ENCODING_VERSION = 3


def dataset_key(tokenizer, rows: list[dict], data_cfg: Any) -> str:
    """What determines an encoded dataset: the rows, the tokenizer, the template and the data settings."""
    import hashlib
    import json

    h = hashlib.sha256()
    settings = {k: getattr(data_cfg, k, None) for k in ("template", "system_prompt", "max_length",
                                                         "train_on_prompt", "last_turn_only", "packing",
                                                         "reasoning")}
    h.update(json.dumps({"v": ENCODING_VERSION, "settings": settings,
                         "tokenizer": [getattr(tokenizer, "name_or_path", ""), len(tokenizer),
                                       str(getattr(tokenizer, "chat_template", "")), tokenizer.bos_token,
                                       tokenizer.eos_token, tokenizer.pad_token]}, sort_keys=True,
                        default=str).encode())
    if hasattr(rows, "raw_rows"):  # rows on disk are stored as exactly these bytes: no decode, same key
        for raw in rows.raw_rows():
            h.update(raw)
            h.update(b"\n")
        return h.hexdigest()[:40]
    for row in rows:
        h.update(row_bytes(row))
        h.update(b"\n")
    return h.hexdigest()[:40]


ARROW_FILE = "data.arrow"   # a cached dataset: this Arrow stream (memory-mapped when read) and INFO_FILE
INFO_FILE = "info.json"     # written last: its presence marks a complete cache entry
WRITE_ROWS = 1000           # sequences per Arrow record batch


def _list_array(flat, lengths, dtype=None):
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(flat if dtype is None else flat.astype(dtype, copy=False))
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


class _ArrowSink:
    """Record batches to an Arrow stream file, or kept in memory (path None) for small builds."""

    def __init__(self, path):
        self.path, self.writer, self.batches, self.count = path, None, [], 0

    def add(self, columns: dict) -> None:
        import pyarrow as pa

        batch = pa.record_batch(columns)
        self.count += batch.num_rows
        if self.path is None:
            self.batches.append(batch)
            return
        if self.writer is None:
            self.writer = pa.ipc.new_stream(str(self.path), batch.schema)
        self.writer.write_batch(batch)

    def dataset(self):
        import datasets
        import pyarrow as pa

        if self.path is None:
            from datasets.table import InMemoryTable
            return datasets.Dataset(InMemoryTable(pa.Table.from_batches(self.batches)))
        self.writer.close()
        return datasets.Dataset.from_file(str(self.path))  # memory-mapped: the tokens stay on disk


def _write_rows(batches, sink: _ArrowSink) -> tuple[list, int]:
    """The unpacked columns input_ids, attention_mask, labels; returns (kept row lengths, rows kept)."""
    import numpy as np

    lengths = []
    for batch in batches:
        if len(batch.lengths):
            sink.add({"input_ids": _list_array(batch.ids, batch.lengths),
                      "attention_mask": _list_array(np.ones(len(batch.ids), dtype=np.int8), batch.lengths),
                      "labels": _list_array(batch.labels, batch.lengths)})
        lengths.append(batch.lengths)
    return lengths, sink.count


def _write_packed(unpacked, lengths, cap: int, sink: _ArrowSink, progress=None) -> float:
    """Packed sequences (input_ids, labels, position_ids) of the unpacked rows, planned by plan_bins.

    Reads the rows' tokens from the unpacked Arrow data (memory-mapped when on disk) one group of
    bins at a time, so memory holds the row lengths and one group, never the whole file.
    """
    import numpy as np

    table = unpacked.data.table
    chunks = []
    for ids_c, lab_c in zip(table.column("input_ids").chunks, table.column("labels").chunks):
        chunks.append((ids_c.offsets.to_numpy(), ids_c.values.to_numpy(), lab_c.offsets.to_numpy(),
                       lab_c.values.to_numpy()))
    first_row = np.cumsum([0] + [len(c[0]) - 1 for c in chunks])
    bins = packing.plan_bins(lengths.tolist(), cap)
    for g in range(0, len(bins), WRITE_ROWS):
        group = bins[g:g + WRITE_ROWS]
        ids, labels, positions, seq_lengths = [], [], [], []
        for members in group:
            n = 0
            for i in members:
                c = int(np.searchsorted(first_row, i, side="right") - 1)
                offs, vals, loffs, labs = chunks[c]
                j = i - first_row[c]
                a, b = int(offs[j]), int(offs[j + 1])
                ids.append(vals[a:b])
                lab = labs[int(loffs[j]):int(loffs[j + 1])].copy()
                lab[0] = IGNORE  # a row's first token is never predicted, alone or packed
                labels.append(lab)
                positions.append(np.arange(b - a, dtype=np.int32))
                n += b - a
            seq_lengths.append(n)
        seq_lengths = np.asarray(seq_lengths, dtype=np.int64)
        sink.add({"input_ids": _list_array(np.concatenate(ids), seq_lengths),
                  "labels": _list_array(np.concatenate(labels), seq_lengths),
                  "position_ids": _list_array(np.concatenate(positions), seq_lengths)})
        if progress is not None:
            done = min(g + WRITE_ROWS, len(bins))
            progress(done / len(bins), f"Packing: {done:,} of {len(bins):,} sequences")
    return packing.efficiency(lengths.tolist(), cap, bins)


def build_sft_dataset(tokenizer, rows: list[dict], data_cfg: Any, cache_dir=None, progress=None):
    """A datasets.Dataset built with encode_row: input_ids, attention_mask, labels; packed if asked.

    With cache_dir it is written as Arrow under cache_dir/<dataset_key> batch by batch and read back
    memory-mapped: memory stays bounded whatever the file's size, and a resume or a re-run with
    other hyperparameters reads it instead of tokenizing again. progress(fraction, text) follows it.

    Packed sequences carry input_ids, labels and position_ids (restarting at every row) and no
    attention mask: see backend.data.packing. Rows left with no graded token after truncation
    are dropped: they would add nothing but a loss of 0/0. Plain-text rows with packing are cut
    into full blocks instead of truncated.
    """
    if not rows:
        raise UserError("There are no rows to train on. Load a dataset with at least one usable row.")
    if cache_dir is None:
        return _build(tokenizer, rows, data_cfg, None, progress)
    import os
    import shutil
    from pathlib import Path

    import datasets

    target = Path(cache_dir) / dataset_key(tokenizer, rows, data_cfg)
    if (target / INFO_FILE).exists():
        try:
            return datasets.Dataset.from_file(str(target / ARROW_FILE))
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            shutil.rmtree(target, ignore_errors=True)
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _build(tokenizer, rows, data_cfg, tmp, progress)
        atomic_write_json(tmp / INFO_FILE, {"rows": len(rows), "version": ENCODING_VERSION})
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return datasets.Dataset.from_file(str(target / ARROW_FILE))
    except OSError:  # a full or read-only disk: build in memory instead
        shutil.rmtree(tmp, ignore_errors=True)
        return _build(tokenizer, rows, data_cfg, None, progress)


def _build(tokenizer, rows: list[dict], data_cfg: Any, folder, progress=None):
    import datasets
    import numpy as np

    cap = int(data_cfg.max_length)
    if data_cfg.packing and _all_text(rows):
        import pyarrow as pa

        items = plan_packing(tokenizer, rows, data_cfg).sequences  # documents cut into full blocks
        sink = _ArrowSink(None if folder is None else folder / ARROW_FILE)
        for g in range(0, len(items), WRITE_ROWS):
            sink.add({k: pa.array([it[k] for it in items[g:g + WRITE_ROWS]], type=pa.large_list(pa.int32()))
                      for k in ("input_ids", "labels", "position_ids")})
        return sink.dataset()
    unpacked_path = None if folder is None else folder / (ARROW_FILE if not data_cfg.packing else "rows.arrow")
    sink = _ArrowSink(unpacked_path)
    share = 0.9 if data_cfg.packing else 1.0  # packing's own pass reports the last tenth
    tell = None if progress is None else (lambda f, text: progress(share * f, text))
    lengths, kept = _write_rows(iter_encoded(tokenizer, rows, data_cfg, tell), sink)
    if not kept:
        raise _no_rows_left(rows, data_cfg)
    unpacked = sink.dataset()
    if not data_cfg.packing:
        return unpacked
    packed = _ArrowSink(None if folder is None else folder / ARROW_FILE)
    tell = None if progress is None else (lambda f, text: progress(0.9 + 0.1 * f, text))
    _write_packed(unpacked, np.concatenate(lengths), cap, packed, tell)
    out = packed.dataset()
    del unpacked
    if unpacked_path is not None:
        unpacked_path.unlink(missing_ok=True)  # the memory map stays valid until closed; the file goes
    return out


class SftCollator:
    """Right-pads a batch: input_ids with the pad id, attention_mask with 0, labels with -100."""
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        m = self.pad_to_multiple_of
        if m:
            longest = -(-longest // m) * m
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE}
        batch = {}
        for key, pad in fill.items():
            rows = []
            for f in features:
                seq = list(f[key]) if key in f else list(f["input_ids"]) if key == "labels" else [1] * len(f["input_ids"])
                rows.append(seq + [pad] * (longest - len(seq)))
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch


# ---------------------------------------------------------------- preview

def _token_text(tokenizer, text: str, tid: int, off: tuple[int, int]) -> str:
    s, e = off
    if e > s:
        return text[s:e]
    return tokenizer.convert_ids_to_tokens(tid) if tid is not None else ""


def _role(label: int, tid: int, special: set[int]) -> str:
    if label != IGNORE:
        return "graded"
    return "special" if tid in special else "prompt"


def preview_row(tokenizer, row: dict, data_cfg: Any, pad_to: int | None = None) -> dict:
    """Every token of a row with id, label, attention and role, built from encode_row.

    Tokens past max_length are listed with role 'truncated' (label None: they never train);
    with pad_to, padding tokens follow as the collator would add them.
    """
    full = encode_full(tokenizer, row, data_cfg)
    n = min(len(full.input_ids), int(data_cfg.max_length))
    kept = {"input_ids": full.input_ids[:n], "attention_mask": [1] * n, "labels": full.labels[:n]}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    tokens = []
    for i, (tid, lab, att) in enumerate(zip(kept["input_ids"], kept["labels"], kept["attention_mask"])):
        tokens.append({"id": tid, "text": _token_text(tokenizer, full.text, tid, full.offsets[i]),
                       "label": lab, "attention": att,
                       "role": tools.token_role(_role(lab, tid, special), full.offsets[i], full.kinds)})
    for i in range(len(kept["input_ids"]), len(full.input_ids)):
        tid = full.input_ids[i]
        tokens.append({"id": tid, "text": _token_text(tokenizer, full.text, tid, full.offsets[i]),
                       "label": None, "attention": 0, "role": "truncated"})
    if pad_to and pad_to > len(kept["input_ids"]):
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad_text = tokenizer.pad_token or ""
        tokens.extend({"id": pad_id, "text": pad_text, "label": IGNORE, "attention": 0, "role": "padding"}
                      for _ in range(pad_to - len(kept["input_ids"])))
    graded = sum(1 for t in tokens if t["role"] == "graded")
    return {"text": full.text, "tokens": tokens, "template": full.template, "note": full.note,
            "length": len(full.input_ids), "kept": len(kept["input_ids"]), "graded": graded,
            "truncated": max(0, len(full.input_ids) - len(kept["input_ids"]))}


def preview_packed(tokenizer, rows: list[dict], index: int, data_cfg: Any,
                   plan: Optional[PackPlan] = None) -> dict:
    """The packed sequence that holds row `index`, each token with the row, segment and position it trains with.

    The plan covers the whole dataset (best-fit-decreasing looks at every row), so a caller
    showing several rows passes the plan it computed once.
    """
    plan = plan or _cached_plan(tokenizer, rows, data_cfg)
    where = next((n for n, members in enumerate(plan.rows) if index in members), None)
    if where is None:
        raise UserError(f"Row {index} is left out of training: nothing of its answer fits within "
                        f"max_length={data_cfg.max_length}. Raise max length, or shorten its prompt.")
    seq, members = plan.sequences[where], plan.rows[where]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    text_of = {i: encode_full(tokenizer, rows[i], data_cfg) for i in dict.fromkeys(members)}
    tokens, seg_start = [], 0
    for j, (tid, lab, pos, seg) in enumerate(zip(seq["input_ids"], seq["labels"], seq["position_ids"],
                                               seq["segment"])):
        if j and seg != seq["segment"][j - 1]:
            seg_start = j
        row = members[seg]
        full = text_of[row]
        k = _offset_index(seq, j, seg_start, full)
        tokens.append({"id": tid, "text": _token_text(tokenizer, full.text, tid, full.offsets[k]) if k is not None
                       else tokenizer.convert_ids_to_tokens(tid), "label": lab, "attention": 1,
                       "role": _role(lab, tid, special), "row": row, "segment": seg, "position": pos,
                       "boundary": pos == 0 and j > 0})
    texts = [text_of[i].text for i in dict.fromkeys(members)]
    return {"text": "".join(texts), "tokens": tokens, "rows": list(dict.fromkeys(members)),
            "length": len(tokens), "efficiency": plan.efficiency, "sequences": len(plan.sequences)}


_LAST_PLAN: dict[tuple, PackPlan] = {}


def _cached_plan(tokenizer, rows: list[dict], data_cfg: Any) -> PackPlan:
    """The last plan, kept while the same rows and settings are previewed row after row."""
    dump = data_cfg.model_dump_json() if hasattr(data_cfg, "model_dump_json") else repr(vars(data_cfg))
    key = (id(tokenizer), id(rows), len(rows), dump, repr(rows[:1]), repr(rows[-1:]))
    if key not in _LAST_PLAN:
        _LAST_PLAN.clear()
        _LAST_PLAN[key] = plan_packing(tokenizer, rows, data_cfg)
    return _LAST_PLAN[key]


def _offset_index(seq: dict, j: int, seg_start: int, full: Encoding) -> Optional[int]:
    """Index into the row's own tokens of packed token j (a text piece may start mid-document)."""
    k = j - seg_start + (seq["first"][seq["segment"][j]] if "first" in seq else 0)
    return k if 0 <= k < len(full.offsets) else None


def token_length_stats(tokenizer, rows: list[dict], data_cfg: Any, limit: int | None = None, progress=None) -> dict:
    """Untruncated token lengths and how many rows max_length cuts (on the first `limit` rows if set).

    Encoded BATCH_ROWS at a time like training; progress(fraction, text) is called after each batch.
    """
    import statistics

    sample = rows if limit is None else rows[:limit]
    lengths, no_answer = [], 0
    cap = int(data_cfg.max_length)
    for start in range(0, len(sample), BATCH_ROWS):
        for ids, labels in encode_full_batch(tokenizer, sample[start:start + BATCH_ROWS], data_cfg):
            lengths.append(len(ids))
            if len(ids) > cap and not any(x != IGNORE for x in labels[1:cap]):
                no_answer += 1
        if progress is not None:
            done = min(start + BATCH_ROWS, len(sample))
            progress(done / len(sample), f"Counting tokens: {done:,} of {len(sample):,} rows")
    truncated = sum(1 for n in lengths if n > cap)
    if not lengths:
        return {"min": 0, "median": 0, "max": 0, "mean": 0.0, "truncated": 0, "truncated_share": 0.0,
                "lost_answers": 0, "lengths": [], "counted": 0, "total": len(rows), "tokens": 0,
                "packing_efficiency": 0.0}
    return {"min": min(lengths), "median": int(statistics.median(lengths)), "max": max(lengths),
            "mean": round(statistics.fmean(lengths), 1), "truncated": truncated,
            "truncated_share": round(truncated / len(lengths), 4), "lost_answers": no_answer,
            "lengths": lengths, "counted": len(lengths), "total": len(rows), "tokens": sum(lengths),
            "packing_efficiency": packing.efficiency(lengths, cap)}
