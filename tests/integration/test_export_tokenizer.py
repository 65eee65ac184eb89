"""The tokenizer as GGUF metadata: what is carried, and the tokenizers that are refused with a sentence."""
from __future__ import annotations

import pytest

from backend.core.errors import UserError
from backend.export.gguf_tokenizer import CONTROL, NORMAL, UNUSED, describe_tokenizer


@pytest.fixture()
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_smollm2_tokenizer_carries_vocab_merges_and_special_ids(tok):
    t = describe_tokenizer(tok, 49152 + 8)
    assert t.pre == "gpt-2" and len(t.merges)  # llama.cpp's name; it refuses "gpt2" == 48900 and " " in t.merges[0]
    assert t.tokens[2] == "<|im_end|>" and t.token_types[2] == CONTROL
    assert t.token_types[tok.convert_tokens_to_ids("Ġthe")] == NORMAL
    # Embedding rows past the tokenizer (padded vocabularies, as in Qwen2) become unused placeholders.
    assert t.tokens[-1] == "[PAD49159]" and t.token_types[-8:] == [UNUSED] * 8
    assert t.special_ids == {"bos": 1, "eos": 2, "padding": 2, "unknown": 0, "eot": 2}
    assert t.add_bos is False and t.add_eos is False
    assert t.chat_template == tok.chat_template


def test_qwen2_split_regex_is_named_for_readers(tok):
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    assert describe_tokenizer(tok, 49152).pre == "qwen2"


def test_unknown_split_regex_is_refused(tok):
    from tokenizers import Regex, pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+|\s"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    with pytest.raises(UserError, match="regular expression that llama.cpp does not know"):
        describe_tokenizer(tok, 49152)


def test_sentencepiece_style_tokenizer_is_refused_with_a_way_out():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={"<unk>": 0, "▁a": 1, "<0x41>": 2}, merges=[], byte_fallback=True,
                                   unk_token="<unk>"))
    sp = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(UserError, match="SentencePiece.*llama.cpp"):
        describe_tokenizer(sp, 3)


def test_tokenizer_larger_than_the_model_is_refused(tok):
    with pytest.raises(UserError, match="49152 tokens but the model only 1000 embedding rows"):
        describe_tokenizer(tok, 1000)


def test_smollm2_digit_split_is_named_smollm(tok):
    from tokenizers import pre_tokenizers

    # SmolLM2's own tokenizer.json cuts digits one by one before the GPT-2 split.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert describe_tokenizer(tok, 49152).pre == "smollm"
