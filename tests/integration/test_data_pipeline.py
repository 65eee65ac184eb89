"""What the preview shows is what trains: preview tokens/labels equal the training dataset's rows."""
import json

import pytest

from backend.core.config import DataConfig
from backend.data.records import load_for_training, load_rows
from backend.data.templates import (IGNORE, SftCollator, build_sft_dataset, get_tokenizer, plan_packing, preview_packed,
                               preview_row)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return get_tokenizer(str(tiny_model_dir))


@pytest.fixture()
def chat_file(tmp_path):
    rows = []
    for i in range(12):
        msgs = [{"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."}]
        if i % 3 == 0:
            msgs += [{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]
        rows.append({"messages": msgs})
    p = tmp_path / "chat.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return str(p)


@pytest.mark.parametrize("settings", [{}, {"train_on_prompt": True}, {"last_turn_only": True},
                                      {"template": "llama2", "max_length": 24}])
def test_preview_tokens_equal_the_training_dataset_rows(tok, chat_file, settings):
    cfg = DataConfig(path=chat_file, **settings)
    rows = load_rows(chat_file).rows
    ds = build_sft_dataset(tok, rows, cfg)
    assert len(ds) == len(rows)
    for i, row in enumerate(rows):
        shown = [t for t in preview_row(tok, row, cfg)["tokens"] if t["role"] != "truncated"]
        assert [t["id"] for t in shown] == ds[i]["input_ids"]
        assert [t["label"] for t in shown] == ds[i]["labels"]
        assert [t["attention"] for t in shown] == ds[i]["attention_mask"]


def test_packed_preview_equals_the_packed_training_sequence(tok, chat_file):
    cfg = DataConfig(path=chat_file, packing=True, max_length=160)
    rows = load_rows(chat_file).rows
    ds = build_sft_dataset(tok, rows, cfg)
    assert len(ds) < len(rows) and all(len(x) <= 160 for x in ds["input_ids"])
    p = preview_packed(tok, rows, 0, cfg)
    where = next(n for n, members in enumerate(plan_packing(tok, rows, cfg).rows) if 0 in members)
    assert [t["id"] for t in p["tokens"]] == ds[where]["input_ids"]
    assert [t["label"] for t in p["tokens"]] == ds[where]["labels"]
    assert [t["position"] for t in p["tokens"]] == ds[where]["position_ids"]
    assert sum(t["boundary"] for t in p["tokens"]) == len(p["rows"]) - 1
    assert [t["segment"] for t in p["tokens"] if t["boundary"]] == list(range(1, len(p["rows"])))
    assert 0 < p["efficiency"] <= 1


def test_rows_whose_answer_is_cut_off_are_dropped_from_training(tok, tmp_path):
    long_prompt = "word " * 200
    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps({"question": long_prompt, "answer": "short"}) + "\n"
                 + json.dumps({"question": "q", "answer": "a"}) + "\n")
    rows = load_rows(str(p)).rows
    ds = build_sft_dataset(tok, rows, DataConfig(max_length=32))
    assert len(ds) == 1


def test_collated_batch_gives_a_finite_loss_on_the_tiny_model(tiny_model_dir, tok, chat_file):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = DataConfig(path=chat_file)
    loaded, train, val = load_for_training(cfg, seed=3)
    assert len(train) + len(val) == 12 and len(val) == 1
    ds = build_sft_dataset(tok, train, cfg)
    batch = SftCollator(tok.pad_token_id)([ds[i] for i in range(4)])
    assert (batch["labels"] != IGNORE).sum() > 0
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)
