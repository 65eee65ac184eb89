"""The encoded dataset is kept as Arrow, keyed by rows, tokenizer, template and settings; a re-run reads it."""
import pytest

from backend.core.config import DataConfig
from backend.data import templates as T


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return T.get_tokenizer(str(tiny_model_dir))


ROWS = [{"messages": [{"role": "user", "content": f"What is {i}?"}, {"role": "assistant", "content": f"{i}."}]}
        for i in range(20)]


def test_a_second_build_reads_the_cache_and_a_changed_setting_or_row_does_not(tok, tmp_path, monkeypatch):
    cfg = DataConfig(max_length=64, packing=True, template="chatml")
    first = T.build_sft_dataset(tok, ROWS, cfg, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1

    calls = []
    real = T.iter_encoded
    monkeypatch.setattr(T, "iter_encoded", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = T.build_sft_dataset(tok, ROWS, cfg, cache_dir=tmp_path)
    assert calls == [] and again[:] == first[:]

    T.build_sft_dataset(tok, ROWS, cfg.model_copy(update={"max_length": 48}), cache_dir=tmp_path)
    assert calls == [1]
    T.build_sft_dataset(tok, ROWS[:-1] + [{"messages": ROWS[0]["messages"][:1] + [
        {"role": "assistant", "content": "changed"}]}], cfg, cache_dir=tmp_path)
    assert calls == [1, 1] and len(list(tmp_path.iterdir())) == 3


def test_batched_encoding_equals_encoding_row_by_row(tok):
    rows = ROWS + [{"text": "a plain document"}, {"prompt": "The sky is", "completion": " blue."}]
    for cfg in (DataConfig(), DataConfig(train_on_prompt=True), DataConfig(max_length=12, template="llama2")):
        rep = T.encode_rows(tok, rows, cfg)
        one_by_one = [T.encode_row(tok, r, cfg) for r in rows]
        assert rep.encoded == [e for e in one_by_one if T.has_graded(e)]
