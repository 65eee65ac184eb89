"""The fast data path gives exactly what the plain calls give: direct template render, direct Rust
tokenizer, label spans, the streamed Arrow dataset (packed and not), worker processes, progress."""
import random

import pytest

from backend.core.config import DataConfig
from backend.data import templates as T


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return T.get_tokenizer(str(tiny_model_dir))


def _rows(n: int, seed: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    words = ["sun", "moon", "river", "stone", "light", "tree", "cloud", "seven", "blue", "  ", "\n"]
    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": "Be brief."}] if i % 3 == 0 else []
        for _ in range(1 + i % 3):
            msgs += [{"role": "user", "content": " ".join(rnd.choices(words, k=rnd.randint(1, 9)))},
                     {"role": "assistant", "content": " ".join(rnd.choices(words, k=rnd.randint(1, 30)))}]
        out.append({"messages": msgs})
    return out


@pytest.mark.parametrize("name", ["auto", *T.TEMPLATES])
def test_the_direct_render_equals_apply_chat_template(tok, name):
    _, jinja, _ = T.resolve_template(tok, name)
    for row in _rows(12):
        msgs = row["messages"] if name not in ("llama2", "mistral", "gemma") else row["messages"]
        for gen in (False, True):
            want = tok.apply_chat_template(msgs, chat_template=jinja, tokenize=False, add_generation_prompt=gen,
                                           bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
            assert T._render(tok, jinja, msgs, gen) == want
    assert T._direct_renderer(tok, jinja) is not None  # the fast path was the one checked


def test_the_direct_tokenizer_equals_the_tokenizer_call(tok):
    assert T._direct_backend(tok) is not None
    rendered = [T.render(tok, r, DataConfig()) for r in _rows(30)] + [T.render(tok, {"text": "plain text"}, DataConfig())]
    fast = T._tokenize_batch(tok, rendered)
    for r, (ids, offs) in zip(rendered, fast):
        enc = tok(r.text, add_special_tokens=r.add_special_tokens, return_offsets_mapping=True)
        assert list(ids) == enc["input_ids"] and [tuple(o) for o in offs] == [tuple(o) for o in enc["offset_mapping"]]


def _labels_by_characters(ids, offsets, spans, n_chars):
    """The previous definition, character by character: graded when any of the token's characters is in a span."""
    inside = [False] * (n_chars + 1)
    for a, b in spans:
        for c in range(a, b):
            inside[c] = True
    return [t if e > s and any(inside[c] for c in range(s, e)) else T.IGNORE for t, (s, e) in zip(ids, offsets)]


def test_span_labels_equal_the_character_definition():
    rnd = random.Random(3)
    for _ in range(300):
        n_chars = rnd.randint(1, 80)
        offsets, pos = [], 0
        while pos < n_chars:
            step = rnd.choice([0, 1, 1, 2, 3, 5])
            offsets.append((pos, min(n_chars, pos + step)))
            pos += max(step, 1) if rnd.random() < 0.9 else 0
        if rnd.random() < 0.2:
            rnd.shuffle(offsets)  # no order is assumed
        spans = []
        for _ in range(rnd.choice([0, 1, 2, 3, 6, 12])):
            a = rnd.randrange(n_chars)
            spans.append((a, rnd.randint(a + 1, n_chars)))
        ids = list(range(1, len(offsets) + 1))
        assert T._span_labels(ids, offsets, spans, n_chars) == _labels_by_characters(ids, offsets, spans, n_chars)


@pytest.mark.parametrize("packing", [False, True])
def test_the_streamed_arrow_dataset_equals_the_in_memory_encoding(tok, tmp_path, packing):
    rows = _rows(60) + [{"prompt": "The sky is", "completion": " blue."}]
    cfg = DataConfig(max_length=48, packing=packing, template="chatml")
    seen = []
    ds = T.build_sft_dataset(tok, rows, cfg, cache_dir=tmp_path, progress=lambda f, text: seen.append((f, text)))
    if packing:
        want = [{k: s[k] for k in ("input_ids", "labels", "position_ids")}
                for s in T.plan_packing(tok, rows, cfg).sequences]
    else:
        want = [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"], "labels": e["labels"]}
                for e in T.encode_rows(tok, rows, cfg).encoded]
        assert want == [e for e in (T.encode_row(tok, r, cfg) for r in rows) if T.has_graded(e)]
    assert [dict(x) for x in ds] == want
    assert seen and seen[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in seen)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_worker_processes_encode_exactly_what_one_process_does(tok, monkeypatch):
    rows = _rows(90)
    cfg = DataConfig(max_length=40, template="chatml")
    monkeypatch.setattr(T, "TASK_ROWS", 20)
    monkeypatch.setattr(T, "BATCH_ROWS", 20)
    one = list(T.iter_encoded(tok, rows, cfg, processes=1))
    two = list(T.iter_encoded(tok, rows, cfg, processes=2))
    assert [b.start for b in two] == [b.start for b in one] == [0, 20, 40, 60, 80]
    for a, b in zip(one, two):
        assert a.ids.tolist() == b.ids.tolist() and a.labels.tolist() == b.labels.tolist()
        assert a.kept.tolist() == b.kept.tolist() and a.dropped == b.dropped


def test_large_files_get_processes_small_ones_none(monkeypatch):
    monkeypatch.setenv("FTSTUDIO_DATA_PROCS", "3")
    assert T.data_processes(T.PROCESS_ROWS - 1) == 1
    assert 1 <= T.data_processes(T.PROCESS_ROWS) <= 3
