"""Packed rows train exactly as if alone: same loss and gradients, no attention across rows, own positions."""
import random

import pytest

from backend.core.config import DataConfig
from backend.core.errors import UserError
from backend.data.packing import IGNORE
from backend.data.templates import build_sft_dataset, encode_rows, get_tokenizer

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return get_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    m.eval()
    return m


def _rows(n: int = 7, seed: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    words = ["sun", "moon", "river", "stone", "light", "tree", "cloud", "seven", "blue"]
    return [{"messages": [{"role": "user", "content": " ".join(rnd.choices(words, k=rnd.randint(2, 9)))},
                          {"role": "assistant", "content": " ".join(rnd.choices(words, k=rnd.randint(1, 12)))}]}
            for _ in range(n)]


def _collate(cfg, model, tok, items, flatten=None):
    from backend.training.run import make_collator

    col = make_collator(cfg, model, tok)
    if flatten is not None:
        col.flatten = flatten
    return col(items)


def _unpacked_sum_and_count(model, encoded):
    total, count = 0.0, 0
    for e in encoded:
        ids = torch.tensor([e["input_ids"]])
        labels = torch.tensor([e["labels"]])
        n = int((labels[0, 1:] != IGNORE).sum())
        if n:
            total = total + model(input_ids=ids, labels=labels).loss * n
            count += n
    return total, count


@pytest.mark.parametrize("flatten", [False, True])
def test_packed_loss_and_gradients_equal_the_rows_alone(model, tok, flatten):
    cfg = DataConfig(packing=True, max_length=96, template="chatml")
    rows = _rows()
    packed = list(build_sft_dataset(tok, rows, cfg))
    assert len(packed) < len(rows)  # several rows share a sequence
    encoded = encode_rows(tok, rows, cfg.model_copy(update={"packing": False})).encoded

    model.zero_grad()
    loss_sum, count = _unpacked_sum_and_count(model, encoded)
    (loss_sum / count).backward()
    ref_loss = float(loss_sum / count)
    ref_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    batch = _collate(cfg, model, tok, packed, flatten)
    assert "attention_mask" not in batch
    loss = model(**batch).loss
    loss.backward()
    assert int((batch["labels"][:, 1:] != IGNORE).sum()) == count
    assert abs(float(loss) - ref_loss) < 1e-5
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4)
    model.zero_grad()


def test_changing_one_row_leaves_the_other_rows_logits_unchanged(model, tok):
    cfg = DataConfig(packing=True, max_length=256, template="chatml")
    rows = _rows(3, seed=1)
    a = list(build_sft_dataset(tok, rows, cfg))
    changed = [dict(rows[0]), rows[1], rows[2]]
    changed[0] = {"messages": [{"role": "user", "content": "completely different words here, many more of them"},
                               {"role": "assistant", "content": "and another answer"}]}
    b = list(build_sft_dataset(tok, changed, cfg))
    assert len(a) == len(b) == 1
    seg_a, seg_b = _segments(a[0]["position_ids"]), _segments(b[0]["position_ids"])
    assert int(seg_a.max()) == int(seg_b.max()) == 2  # rows in index order: row 0 is segment 0
    with torch.no_grad():
        la = model(**_collate(cfg, model, tok, a)).logits[0]
        lb = model(**_collate(cfg, model, tok, b)).logits[0]
    assert not torch.equal(torch.tensor(a[0]["input_ids"])[seg_a == 0], torch.tensor(b[0]["input_ids"])[seg_b == 0])
    for s in (1, 2):
        assert torch.equal(torch.tensor(a[0]["input_ids"])[seg_a == s], torch.tensor(b[0]["input_ids"])[seg_b == s])
        assert torch.allclose(la[seg_a == s], lb[seg_b == s], atol=1e-5)


def _segments(positions):
    return torch.cumsum(torch.tensor([int(i > 0 and p == 0) for i, p in enumerate(positions)]), 0)


def test_positions_restart_at_every_packed_row(model, tok):
    cfg = DataConfig(packing=True, max_length=96, template="chatml")
    rows = _rows(5, seed=2)
    packed = list(build_sft_dataset(tok, rows, cfg))
    encoded = encode_rows(tok, rows, cfg.model_copy(update={"packing": False})).encoded
    lengths = sorted(len(e["input_ids"]) for e in encoded)
    seen = []
    for seq in packed:
        pos = seq["position_ids"]
        starts = [i for i, p in enumerate(pos) if p == 0]
        ends = starts[1:] + [len(pos)]
        for s, e in zip(starts, ends):
            assert pos[s:e] == list(range(e - s))
            seen.append(e - s)
    assert sorted(seen) == lengths
    # ...and the model trains each row at those positions: a row's logits in the pack are its logits alone.
    seq = max(packed, key=lambda q: q["position_ids"].count(0))
    seg = _segments(seq["position_ids"])
    assert int(seg.max()) >= 1
    with torch.no_grad():
        logits = model(**_collate(cfg, model, tok, [seq])).logits[0]
        for s in range(int(seg.max()) + 1):
            ids = torch.tensor(seq["input_ids"])[seg == s]
            alone = model(input_ids=ids[None]).logits[0]
            assert torch.allclose(logits[seg == s], alone, atol=1e-5)


def test_a_model_whose_attention_cannot_keep_rows_apart_is_refused(tok):
    from transformers import MambaConfig, MambaForCausalLM

    from backend.training.run import make_collator

    torch.manual_seed(0)
    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=1,
                                         expand=2, conv_kernel=2))
    with pytest.raises(UserError, match="Packing cannot be used with this model.*Turn packing off"):
        make_collator(DataConfig(packing=True), mamba, tok)
    make_collator(DataConfig(packing=False), mamba, tok)  # unpacked rows are fine
