"""backend.data.health: the duplicate detector finds the planted duplicates and only those; empty answers,
rows cut by max length, the language mix and train/validation leakage are counted; drop_duplicates writes a
copy without them and keeps the original."""
import json

import pytest

from backend.core.config import DataConfig
from backend.data import health
from backend.data.records import load_rows

@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from backend.data.templates import get_tokenizer
    return get_tokenizer(str(tiny_model_dir))


TOPICS = ["photosynthesis", "volcanoes", "tides", "rainbows", "earthquakes", "glaciers", "auroras", "comets",
          "magnets", "batteries", "vaccines", "bridges", "clouds", "deserts", "coral reefs", "black holes"]


def distinct_rows() -> list[dict]:
    """Rows that share a template and differ in their point: none is a duplicate of another."""
    rows = [{"prompt": f"Explain how {t} work, in two sentences for a curious child.",
             "completion": f"Here is how {t} work: first one thing happens, then another. That is all about {t}."}
            for t in TOPICS]
    rows += [{"prompt": f"What is {a} + {b}?", "completion": f"{a + b}"} for a in range(6) for b in range(6)]
    return rows


def planted() -> tuple[list[dict], set[int], set[int]]:
    rows = distinct_rows()
    exact = {"prompt": "  explain how TIDES work, in two sentences for a curious child.",
             "completion": "Here is how tides work: first one thing happens,  then another. That is all about tides."}
    near = {"prompt": "Explain how glaciers work, in two short sentences for a curious child.",
            "completion": "Here is how glaciers work: first one thing happens, then another. That is all about glaciers."}
    rows.insert(20, exact)
    rows.append(near)
    return rows, {20}, {len(rows) - 1}


def test_the_detector_finds_the_planted_duplicates_and_only_those():
    rows, exact, near = planted()
    h = health.check(rows)
    assert set(h.duplicate_rows) == exact
    assert set(h.near_duplicate_rows) == near
    assert h.duplicates == 1 and h.near_duplicates == 1
    assert health.check(distinct_rows()).as_dict()["duplicates"] == 0
    assert health.check(distinct_rows()).near_duplicates == 0


def test_empty_answers_are_counted_kept_and_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "and?"}, {"role": "assistant", "content": "   "}]},
            {"question": "q", "answer": "   "}]
    p.write_text("\n".join(json.dumps({"messages": rows[0]["messages"]}) for _ in range(1)) + "\n"
                 + json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]})
                 + "\n" + json.dumps({"messages": [{"role": "user", "content": "y"},
                                                   {"role": "assistant", "content": "fine"}]}) + "\n")
    d = load_rows(str(p))
    h = health.check(d.rows, d.errors, d.mapping)
    assert d.skipped == 1 and h.empty_answers == 2  # one kept row with a blank turn, one skipped row


def test_answers_cut_and_prompts_too_long_use_the_training_labels(tiny_tokenizer):
    cfg = DataConfig(max_length=24)
    rows = [{"prompt": "short", "completion": "ok"},
            {"prompt": "a question " * 3, "completion": " an answer that goes on" * 10},
            {"prompt": "a very long question " * 20, "completion": " yes"}]
    h = health.check(rows, tokenizer=tiny_tokenizer, data_cfg=cfg)
    assert (h.answers_cut, h.prompts_too_long, h.length_rows) == (1, 1, 3)


def test_language_mix_is_reported():
    rows = [{"text": "The cat is on the mat and it is happy."}] * 3 + \
           [{"text": "Der Hund ist nicht in der Küche und das ist gut."}] * 2 + [{"text": "Привет, как дела?"}]
    h = health.check(rows)
    assert h.languages == {"en": 3, "de": 2, "ru/uk": 1}
    assert any("mix languages" in s for s in h.sentences())
    assert not any("mix languages" in s for s in health.check(rows[:3]).sentences())


def test_leakage_counts_validation_rows_that_repeat_training_rows():
    train = distinct_rows()
    val = [dict(train[3]), {"prompt": "Something else entirely", "completion": "Unrelated."},
           {**train[5], "prompt": train[5]["prompt"].upper()}]
    assert health.leaked(train, val) == 2
    assert health.leaked(train, val[1:2]) == 0


def test_drop_duplicates_writes_a_new_file_and_keeps_the_original(tmp_path):
    rows, exact, near = planted()
    src = tmp_path / "qa.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    src.write_text(text)
    out = health.dedup_path(str(src))
    report = health.drop_duplicates(str(src), str(out))
    assert out.name == "qa.dedup.jsonl" and src.read_text() == text
    assert report["rows"] == len(rows) - 2
    assert report["duplicates_dropped"] == 1 and report["near_duplicates_dropped"] == 1
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept == [r for i, r in enumerate(rows) if i not in exact | near]
    again = load_rows(str(out))
    assert health.check(again.rows).duplicates == 0 and again.mapping == load_rows(str(src)).mapping
