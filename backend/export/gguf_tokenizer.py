"""A transformers tokenizer described as GGUF `tokenizer.*` metadata (byte-level BPE, "gpt2" model).

GGUF carries no tokenizer.json: llama.cpp, Ollama and transformers' GGUF loader rebuild the
tokenizer from the vocabulary, the merges, the token types and the special token ids. Those are
read out of the tokenizer's own `tokenizer.json` here; nothing is guessed from the model name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from backend.core.errors import UserError

# llama.cpp token types (gguf.TokenType), spelled out so this module needs no gguf import.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# Turn-end markers of the chat formats the Modelfile understands; each is also a stop token.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>")


@dataclass
class GGUFTokenizer:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]          # bos / eos / padding / unknown / eot -> id
    add_bos: bool
    add_eos: bool
    chat_template: Optional[str]
    notes: list[str] = field(default_factory=list)


def _pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp name of the pre-tokenizer this tokenizer is, read from how it splits text.

    llama.cpp's own converter names the pre-tokenizer after what the tokenizer is (it recognises
    the tokenizer by its output on a fixed text); here the same question is answered from the
    tokenizer.json itself: its split regex, and whether digits are cut one by one. The name must
    be one llama.cpp knows (it refuses a file with any other, e.g. "gpt2" rather than "gpt-2"),
    and the export's check then tokenizes fixed strings in llama.cpp and in transformers and
    requires the same ids. An unknown split is refused rather than guessed.
    """
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    splits = [p for p in parts if p.get("type") == "Split"]
    if not splits:
        if any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in parts):
            # The GPT-2 regex inside ByteLevel; SmolLM2's own tokenizer.json first cuts digits one by
            # one, which llama.cpp calls "smollm". A tokenizer rebuilt from a GGUF (the bundled model's)
            # has lost that step and is plain GPT-2, "gpt-2" in llama.cpp; SmolLM2's vocabulary has no
            # multi-digit tokens, so both split its text into the same ids.
            digits = any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts)
            return "smollm" if digits else "gpt-2"
        raise UserError("The tokenizer's pre-tokenizer is not a byte-level one, so it cannot be written to GGUF "
                        "by this exporter. Export models with a byte-level BPE tokenizer (Llama 3, Qwen2, SmolLM2).")
    pattern = (splits[0].get("pattern") or {}).get("Regex")
    preferred = ("llama-bpe", "qwen2", "tekken", "gpt-4o")  # the names llama.cpp itself writes for these
    for name in preferred + tuple(GGUF_PRE_TOKENIZER_SPLITS):
        if GGUF_PRE_TOKENIZER_SPLITS.get(name) == pattern:
            return name
    raise UserError("The tokenizer splits text with a regular expression that llama.cpp does not know, "
                    "so the exported model would tokenize differently there (or not load). Export is limited to the byte-level "
                    "BPE tokenizers of Llama 3, Qwen2, Mistral (tekken) and SmolLM2.")


def _adds(tok: Any, token_id: Optional[int], position: int) -> bool:
    """Whether the tokenizer puts this special token at `position` when special tokens are on."""
    if token_id is None:
        return False
    with_special = tok("a b", add_special_tokens=True)["input_ids"]
    plain = tok("a b", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(plain) and with_special[position] == token_id


def describe_tokenizer(tok: Any, n_vocab: int) -> GGUFTokenizer:
    """The GGUF metadata for `tok`, padded to the model's `n_vocab` embedding rows."""
    data = json.loads(tok.backend_tokenizer.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError("This model's tokenizer is SentencePiece-style (as in Llama 2 and Mistral 7B v0.1-v0.3), "
                        "which this GGUF exporter does not write yet; it handles the byte-level BPE tokenizers of "
                        "Llama 3, Qwen2, Mistral Nemo (tekken) and SmolLM2. Convert this one with llama.cpp's "
                        "convert_hf_to_gguf.py from the merged model folder.")
    pre = _pre_tokenizer_name(data)
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    size = max(vocab.values()) + 1
    if size > n_vocab:
        raise UserError(f"The tokenizer has {size} tokens but the model only {n_vocab} embedding rows; "
                        "the tokenizer does not belong to this model.")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    for text, idx in vocab.items():
        tokens[idx] = text
        spec = added.get(text)
        types[idx] = NORMAL if spec is None else (CONTROL if spec.get("special") else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    special: dict[str, int] = {}
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                      ("padding", "pad_token_id"), ("unknown", "unk_token_id")):
        value = getattr(tok, attr, None)
        if value is not None:
            special[key] = int(value)
    template = getattr(tok, "chat_template", None)
    template = template if isinstance(template, str) else None
    notes: list[str] = []
    for marker in TURN_END_TOKENS:
        if marker in vocab and template and marker in template:
            special["eot"] = vocab[marker]
            break
    if not template:
        notes.append("The tokenizer has no chat template, so the GGUF carries none; chat runtimes will "
                     "fall back to their own default format.")
    return GGUFTokenizer(tokens, types, merges, pre, special, _adds(tok, special.get("bos"), 0),
                         _adds(tok, special.get("eos"), -1), template, notes)


def write_tokenizer(writer: Any, t: GGUFTokenizer) -> None:
    """Add the tokenizer metadata to a gguf.GGUFWriter."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(t.pre)
    writer.add_token_list(t.tokens)
    writer.add_token_types(t.token_types)
    if t.merges:
        writer.add_token_merges(t.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "padding": writer.add_pad_token_id, "unknown": writer.add_unk_token_id,
              "eot": writer.add_eot_token_id}
    for key, token_id in t.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(t.add_bos)
    writer.add_add_eos_token(t.add_eos)
    if t.chat_template:
        writer.add_chat_template(t.chat_template)
