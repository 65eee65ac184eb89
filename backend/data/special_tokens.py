"""A chat template's special markers and the tokenizer's view of them: which ones it lacks, and a copy with them added.

A template such as ChatML writes markers (`<|im_start|>`, `<|im_end|>`) that a model trained with it has as
single special tokens. A tokenizer without them splits each marker into a handful of ordinary pieces, so the
model reads the conversation's structure as text and never learns one "end of turn" token to stop at. The
Dataset tab names the missing markers (`missing_markers`) and can set `data.add_special_tokens`; training,
the preview and the saved adapter then use the tokenizer `with_tokens` gives, where each marker is one id
(the embedding rows are grown and trained in `backend.methods.tokens`).
"""
from __future__ import annotations

import copy
import re
from typing import Any, Optional, Sequence

from backend.data.templates import TEMPLATE_TITLES, TEMPLATES, resolve_template

# The markers each registry template writes that its models have as special tokens. Llama-2's and Mistral's
# `[INST]` and Alpaca's headings are plain text in those models' own tokenizers, so they are not listed.
TEMPLATE_MARKERS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    # Phi-3 builds its role markers from the role name: these are the roles a conversation has.
    "phi3": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    "llama2": (), "mistral": (), "alpaca": (),
}
assert set(TEMPLATE_MARKERS) == set(TEMPLATES), "every registry template lists its markers"

# A tokenizer's own template may name markers in string literals; `<|name|>` is the common special form.
_MARKER_RE = re.compile(r"<\|[A-Za-z0-9_.:-]{1,40}\|>")


def template_markers(tokenizer: Any, template: str) -> list[str]:
    """The special markers the template writes, in order of first appearance."""
    used, jinja, _note = resolve_template(tokenizer, template)
    if used in TEMPLATE_MARKERS:
        return list(TEMPLATE_MARKERS[used])
    return list(dict.fromkeys(_MARKER_RE.findall(jinja)))


def is_single_token(tokenizer: Any, text: str) -> bool:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def missing_markers(tokenizer: Any, template: str) -> list[str]:
    """The template's markers the tokenizer does not have as one token each (what adding would fix)."""
    return [m for m in template_markers(tokenizer, template) if not is_single_token(tokenizer, m)]


def with_tokens(tokenizer: Any, tokens: Sequence[str]) -> Any:
    """A copy of the tokenizer with `tokens` added as special tokens (never split; skipped when a reply is
    decoded for chat), after the ones it has; the tokenizer itself is unchanged. Tokens it already has keep
    their ids."""
    if not tokens:
        return tokenizer
    out = copy.deepcopy(tokenizer)
    out.add_special_tokens({"extra_special_tokens": list(tokens)}, replace_extra_special_tokens=False)
    return out


def new_token_ids(base_size: int, tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """The ids `with_tokens` gave the tokens the base tokenizer (of `base_size` entries) lacked: the rows to grow
    and train."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    return sorted({int(i) for i in ids if i is not None and int(i) >= base_size})


_WITH_TOKENS: dict[tuple, Any] = {}


def preview_tokenizer(model: str, tokens: Sequence[str] = (), trust_remote_code: bool = False) -> Any:
    """The tokenizer the Dataset tab previews with: the model's (cached per process), with the run's added
    tokens when it has any, so the preview shows the ids training will use."""
    from backend.data.templates import get_tokenizer

    base = get_tokenizer(model, trust_remote_code)
    if not tokens:
        return base
    key = (id(base), tuple(tokens))
    if key not in _WITH_TOKENS:
        if len(_WITH_TOKENS) > 16:
            _WITH_TOKENS.clear()
        _WITH_TOKENS[key] = with_tokens(base, tokens)
    return _WITH_TOKENS[key]


def training_tokenizer(cfg: Any) -> Any:
    """The run's tokenizer: the model's, with `data.add_special_tokens` added (the trainer saves it beside the
    adapter, so chat, merge and export read the same ids)."""
    from backend.core.models import load_tokenizer

    tok = with_tokens(load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg.data.add_special_tokens)
    if cfg.data.add_special_tokens:
        # The added markers belong to the run's template: the saved tokenizer carries it, so chat and export write
        # the conversation the way it trained (with the model's own template they would never appear).
        _used, jinja, _note = resolve_template(tok, cfg.data.template)
        tok.chat_template = jinja
    return tok


def notice(tokenizer: Any, template: str, added: Sequence[str] = ()) -> Optional[str]:
    """The Dataset tab's sentence about the template's markers this tokenizer lacks, or None when it has them."""
    missing = missing_markers(tokenizer, template)
    if not missing:
        return None
    names = ", ".join(f"`{m}`" for m in missing)
    used, _jinja, _note = resolve_template(tokenizer, template)
    title = "The model's own template" if used == "auto" else f"The {TEMPLATE_TITLES.get(used, used)} template"
    if set(missing) <= set(added):
        return (f"{title}'s markers {names} are added to the tokenizer for this run: each is one token, "
                "and its embedding row trains (starting at the mean of the others).")
    return (f"{title} writes {names}, which this model's tokenizer lacks: each is read as several "
            "ordinary pieces. Add them to train each as one token with an embedding row of its own "
            "(LoRA-family methods and full fine-tuning).")


def follow_template(tokenizer: Any, old_template: str, new_template: str, added: Sequence[str]) -> list[str]:
    """The added tokens after the template changes: the new template's missing markers when the old template's
    were the ones added (the tick follows the template), else the list as it was (a config's own tokens)."""
    added = list(added)
    if not added or (old_template or "auto") == (new_template or "auto"):
        return added
    if set(missing_markers(tokenizer, old_template)) <= set(added):
        return missing_markers(tokenizer, new_template)
    return added
