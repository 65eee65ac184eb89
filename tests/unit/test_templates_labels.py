"""Labels and loss masks: which tokens are graded, for every template and switch."""
import pytest

from backend.core.config import DataConfig
from backend.core.errors import UserError
from backend.data.templates import (IGNORE, TEMPLATES, SftCollator, encode_row, get_tokenizer, preview_row,
                               render_text)

CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "See you."},
]}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return get_tokenizer(str(tiny_model_dir))


def graded_text(tok, row, cfg):
    enc = encode_row(tok, row, cfg)
    return tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE])


def test_multi_turn_chatml_labels_match_the_hand_checked_array(tok):
    enc = encode_row(tok, CHAT, DataConfig())
    M = IGNORE
    # <|im_start|>=1 <|im_end|>=2 "\n"=198; checked token by token against the rendered text.
    expected_ids = [
        1, 9690, 198, 6077, 5453, 30, 2, 198,        # <|im_start|>system\nBe brief.<|im_end|>\n
        1, 4093, 198, 26843, 2, 198,                 # <|im_start|>user\nHi<|im_end|>\n
        1, 520, 9531, 198,                           # <|im_start|>assistant\n
        19556, 17, 2,                                # Hello!<|im_end|>          (graded)
        198,                                         # \n
        1, 4093, 198, 3087, 85, 2, 198,              # <|im_start|>user\nBye<|im_end|>\n
        1, 520, 9531, 198,                           # <|im_start|>assistant\n
        7574, 346, 30, 2,                            # See you.<|im_end|>        (graded)
        198]                                         # \n
    expected_labels = (
        [M] * 8 + [M] * 6 + [M] * 4 + [19556, 17, 2] + [M] + [M] * 7 + [M] * 4 + [7574, 346, 30, 2] + [M])
    assert enc["input_ids"] == expected_ids
    assert enc["labels"] == expected_labels
    assert enc["attention_mask"] == [1] * len(expected_ids)


def test_last_turn_only_masks_earlier_replies(tok):
    enc = encode_row(tok, CHAT, DataConfig(last_turn_only=True))
    assert [x for x in enc["labels"] if x != IGNORE] == [7574, 346, 30, 2]


def test_train_on_prompt_grades_every_token(tok):
    enc = encode_row(tok, CHAT, DataConfig(train_on_prompt=True))
    assert enc["labels"] == enc["input_ids"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_registry_template_grades_the_replies_and_not_the_prompt(tok, name):
    cfg = DataConfig(template=name)
    text = render_text(tok, CHAT, cfg)
    graded = graded_text(tok, CHAT, cfg)
    assert "Hello!" in graded and "See you." in graded
    assert "Hi" not in graded and "Bye" not in graded and "brief" not in graded
    assert graded.count("Hello!") == 1
    assert "Be brief." in text


def test_llama2_template_without_generation_marker_masks_the_inst_block(tok):
    cfg = DataConfig(template="llama2")
    text = render_text(tok, CHAT, cfg)
    assert "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello!" in text
    graded = graded_text(tok, CHAT, cfg)
    assert "[INST]" not in graded and "[/INST]" not in graded
    assert graded.strip().startswith("Hello!")


def test_system_prompt_setting_is_added_to_rows_without_one(tok):
    row = {"messages": CHAT["messages"][1:3]}
    text = render_text(tok, row, DataConfig(system_prompt="Answer in French."))
    assert text.startswith("<|im_start|>system\nAnswer in French.<|im_end|>")
    # A row's own system message wins over the setting.
    assert "Be brief." in render_text(tok, CHAT, DataConfig(system_prompt="Answer in French."))


def test_text_rows_are_fully_graded_and_end_with_eos(tok):
    enc = encode_row(tok, {"text": "The lighthouse keeper"}, DataConfig())
    assert enc["input_ids"][-1] == tok.eos_token_id
    assert enc["labels"] == enc["input_ids"]


def test_prompt_completion_masks_the_prompt_and_grades_completion_plus_eos(tok):
    enc = encode_row(tok, {"prompt": "The sky is", "completion": " blue."}, DataConfig())
    n_prompt = len(tok("The sky is", add_special_tokens=False)["input_ids"])
    assert enc["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    assert enc["input_ids"][-1] == tok.eos_token_id


def test_max_length_truncates_and_preview_marks_the_tail(tok):
    cfg = DataConfig(max_length=10)
    enc = encode_row(tok, CHAT, cfg)
    assert len(enc["input_ids"]) == 10 == len(enc["labels"]) == len(enc["attention_mask"])
    p = preview_row(tok, CHAT, cfg)
    roles = [t["role"] for t in p["tokens"]]
    assert roles[10:] == ["truncated"] * (len(roles) - 10) and "truncated" not in roles[:10]
    assert p["truncated"] == len(roles) - 10


def test_preview_roles_and_padding(tok):
    p = preview_row(tok, CHAT, DataConfig(), pad_to=50)
    roles = [t["role"] for t in p["tokens"]]
    assert roles[0] == "special" and roles[1] == "prompt" and "graded" in roles
    pads = [t for t in p["tokens"] if t["role"] == "padding"]
    assert len(pads) == 50 - p["kept"]
    assert all(t["label"] == IGNORE and t["attention"] == 0 and t["id"] == tok.pad_token_id for t in pads)
    assert "".join(t["text"] for t in p["tokens"] if t["role"] != "padding") == p["text"]


def test_unknown_template_is_a_user_error(tok):
    with pytest.raises(UserError, match="Unknown chat template 'vicuna'"):
        encode_row(tok, CHAT, DataConfig(template="vicuna"))


def test_collator_right_pads_with_pad_zero_and_ignore():
    col = SftCollator(pad_token_id=7, pad_to_multiple_of=4)
    b = col([{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [-100, 2, 3]},
             {"input_ids": [4], "attention_mask": [1], "labels": [4]}])
    assert b["input_ids"].tolist() == [[1, 2, 3, 7], [4, 7, 7, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3, -100], [4, -100, -100, -100]]


def test_packing_plan_is_best_fit_decreasing_and_never_overflows():
    from backend.data.packing import efficiency, pack, plan_bins

    # Filled in row order these take 3 sequences; best-fit-decreasing fills 2 exactly.
    assert plan_bins([6, 5, 2, 3], 8) == [[0, 2], [1, 3]]
    lengths = [3, 3, 5, 2, 9, 6]
    bins = plan_bins(lengths, 8)
    assert len(bins) == 4  # 27 tokens (the 9 cut to 8) need 4 sequences of 8
    assert all(sum(min(lengths[i], 8) for i in b) <= 8 for b in bins)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    enc = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([3, 3, 5, 2])]
    packed = pack(enc, 8)
    assert [p["input_ids"] for p in packed] == [[0, 0, 0, 2, 2, 2, 2, 2], [1, 1, 1, 3, 3]]
    assert efficiency([3, 3, 5, 2], 8) == round(13 / 16, 4)


def test_tokenizer_cache_loads_once_and_retries_a_raced_import(monkeypatch):
    from backend.data import templates

    calls = []

    def flaky(model, trust_remote_code=False):
        calls.append(model)
        if len(calls) == 1:
            raise ImportError("cannot import name 'AutoTokenizer' (partially initialized module)")
        return object()

    monkeypatch.setattr(templates, "load_tokenizer", flaky)
    monkeypatch.setattr(templates, "_TOKENIZERS", {})
    first = templates.get_tokenizer("some-model")
    assert templates.get_tokenizer("some-model") is first
    assert calls == ["some-model", "some-model"]
