"""Loading, schema detection and normalization of every supported layout, and every bad input."""
import json

import pytest

from backend.data.records import RowError, load_rows, split_rows
from backend.core.errors import UserError


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- formats

def test_alpaca_rows_become_user_assistant_messages_with_input_appended(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Add", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi", "input": "", "output": "hi"}])
    d = load_rows(p)
    assert (d.format, d.source_format) == ("messages", "alpaca")
    assert d.mapping == {"prompt": "instruction", "completion": "output", "input": "input"}
    assert d.rows[0] == {"messages": [{"role": "user", "content": "Add\n\n2 and 3"},
                                      {"role": "assistant", "content": "5"}]}
    assert d.rows[1]["messages"][0]["content"] == "Say hi"


def test_openai_messages_are_kept(tmp_path):
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    d = load_rows(write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs}]))
    assert (d.format, d.source_format) == ("messages", "openai")
    assert d.rows == [{"messages": msgs}]


def test_sharegpt_from_value_maps_roles(tmp_path):
    conv = [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    d = load_rows(write_jsonl(tmp_path / "s.jsonl", [{"conversations": conv}]))
    assert (d.format, d.source_format) == ("messages", "sharegpt")
    assert [m["role"] for m in d.rows[0]["messages"]] == ["system", "user", "assistant"]
    assert d.rows[0]["messages"][2]["content"] == "a"


@pytest.mark.parametrize("q,a", [("question", "answer"), ("query", "response"), ("input", "output")])
def test_common_column_pairs_map_without_help(tmp_path, q, a):
    d = load_rows(write_jsonl(tmp_path / "q.jsonl", [{q: "why?", a: "because"}]))
    assert (d.format, d.source_format) == ("messages", "columns")
    assert d.mapping == {"prompt": q, "completion": a}
    assert d.rows[0]["messages"][1] == {"role": "assistant", "content": "because"}


def test_prompt_completion_stays_prompt_completion(tmp_path):
    d = load_rows(write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "The sky is", "completion": " blue."}]))
    assert d.format == "prompt_completion"
    assert d.rows == [{"prompt": "The sky is", "completion": " blue."}]


def test_preference_pairs(tmp_path):
    d = load_rows(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}]))
    assert d.format == "preference"
    assert d.rows == [{"prompt": "p", "chosen": "good", "rejected": "bad"}]


def test_conversational_preference_splits_the_shared_prompt(tmp_path):
    user = {"role": "user", "content": "q"}
    d = load_rows(write_jsonl(tmp_path / "pc.jsonl", [{
        "chosen": [user, {"role": "assistant", "content": "good"}],
        "rejected": [user, {"role": "assistant", "content": "bad"}]}]))
    assert (d.format, d.source_format) == ("preference", "preference_conversational")
    assert d.rows[0] == {"prompt": [user], "chosen": [{"role": "assistant", "content": "good"}],
                         "rejected": [{"role": "assistant", "content": "bad"}]}


def test_kto_labels_parse_to_bool(tmp_path):
    d = load_rows(write_jsonl(tmp_path / "k.jsonl", [
        {"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "c", "label": "no"},
        {"prompt": "p", "completion": "c", "label": 1}, {"prompt": "p", "completion": "c", "label": "maybe"}]))
    assert d.format == "kto"
    assert [r["label"] for r in d.rows] == [True, False, True]
    assert d.skipped == 1 and d.errors[0].line == 4 and d.errors[0].field == "label"


def test_plain_text_file_one_document_per_paragraph(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("first line\nsame doc\n\nsecond doc\n", encoding="utf-8")
    d = load_rows(str(p))
    assert d.format == "text"
    assert d.rows == [{"text": "first line\nsame doc"}, {"text": "second doc"}]
    assert d.lines == [1, 4]


def test_csv_tsv_parquet_and_json_array_load_through_the_same_detection(tmp_path):
    import pandas as pd

    (tmp_path / "d.csv").write_text('question,answer\n"a, b",yes\nwhy,because\n', encoding="utf-8")
    (tmp_path / "d.tsv").write_text("question\tanswer\nq\ta\n", encoding="utf-8")
    pd.DataFrame({"text": ["one", "two"]}).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps([{"prompt": "p", "completion": "c"}]), encoding="utf-8")
    assert load_rows(str(tmp_path / "d.csv")).rows[0]["messages"][0]["content"] == "a, b"
    assert load_rows(str(tmp_path / "d.tsv")).rows[0]["messages"][1]["content"] == "a"
    assert load_rows(str(tmp_path / "d.parquet")).rows == [{"text": "one"}, {"text": "two"}]
    assert load_rows(str(tmp_path / "d.json")).format == "prompt_completion"


def test_user_mapping_overrides_detection(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"ask": "q", "say": "a", "sys": "be brief"}])
    d = load_rows(p, mapping={"prompt": "ask", "completion": "say", "system": "sys"})
    assert d.format == "messages"
    assert d.rows[0]["messages"][0] == {"role": "system", "content": "be brief"}


def test_samples_shipped_with_the_studio_load(tmp_path):
    from pathlib import Path

    samples = Path(__file__).resolve().parents[2] / "assets" / "samples"
    expected = {"instructions.jsonl": "messages", "chat.jsonl": "messages",
                "preference.jsonl": "preference", "corpus.txt": "text"}
    for name, fmt in expected.items():
        if (samples / name).exists():
            d = load_rows(str(samples / name))
            assert d.format == fmt and d.rows and d.skipped == 0


# ---------------------------------------------------------------- bad input

def test_empty_file_is_refused_with_its_name(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.jsonl is empty"):
        load_rows(str(p))


def test_blank_lines_only_is_refused(tmp_path):
    p = tmp_path / "blank.jsonl"
    p.write_text("\n\n  \n")
    with pytest.raises(UserError, match="no rows"):
        load_rows(str(p))


def test_invalid_json_lines_are_skipped_and_numbered(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "broken\n[1, 2]\n{"text": "fine"}\n', encoding="utf-8")
    d = load_rows(str(p))
    assert len(d.rows) == 2 and d.skipped == 2
    assert [e.line for e in d.errors] == [2, 3]
    assert "not valid JSON" in d.errors[0].message
    assert "bad.jsonl, line 2" in d.error_sentences()[0]


def test_strict_mode_raises_on_first_bad_row_naming_line_and_field(tmp_path):
    p = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}])
    with pytest.raises(UserError, match=r"s\.jsonl, line 2, field 'output': is empty"):
        load_rows(p, skip_bad_rows=False)


def test_missing_columns_name_what_was_found(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"foo": 1, "bar": [1]}])
    with pytest.raises(UserError, match=r"columns \['foo', 'bar'\]"):
        load_rows(p)


def test_mapping_to_a_column_that_does_not_exist(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"q": "a", "a": "b"}])
    with pytest.raises(UserError, match="does not have .*prompt -> 'question'"):
        load_rows(p, mapping={"prompt": "question", "completion": "a"})


def test_row_missing_a_field_is_reported(tmp_path):
    d = load_rows(write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a"}, {"question": "q2"}]))
    assert d.skipped == 1
    assert d.errors[0] == RowError(2, "answer", "is missing or null. Fill it in, or remove the row.")


def test_windows_1252_and_latin_1_files_are_read_with_a_notice_naming_the_encoding(tmp_path):
    c = tmp_path / "excel.csv"
    c.write_bytes("prompt,completion\nCaf\u00e9 au lait?,\u201cOui\u201d for \u20ac5\n".encode("cp1252"))
    d = load_rows(str(c))
    assert d.rows == [{"prompt": "Caf\u00e9 au lait?", "completion": "\u201cOui\u201d for \u20ac5"}]
    assert d.encoding == "cp1252" and "Windows-1252" in d.notices[0] and "excel.csv" in d.notices[0]
    p = tmp_path / "latin.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    d = load_rows(str(p))
    assert d.skipped == 0 and d.rows[1] == {"text": "caf\u00e9"}
    assert d.encoding == "latin-1" and "Latin-1" in d.notices[0]
    u = tmp_path / "utf8.jsonl"
    u.write_text('{"text": "caf\u00e9"}\n', encoding="utf-8")
    d = load_rows(str(u))
    assert d.encoding == "utf-8" and d.notices == [] and d.summary()["encoding"] == "utf-8"


def test_undecodable_bytes_are_still_refused_with_the_line(tmp_path):
    mixed = tmp_path / "mixed.jsonl"  # a UTF-8 file with one broken line: not guessed as Windows-1252
    mixed.write_bytes('{"text": "caf\u00e9"}\n'.encode() + b'{"text": "caf\xe9"}\n')
    d = load_rows(str(mixed))
    assert d.skipped == 1 and d.errors[0].line == 2 and "UTF-8" in d.errors[0].message
    assert d.encoding == "utf-8"
    c = tmp_path / "latin.csv"  # 0x81 is undefined in Windows-1252
    c.write_bytes(b"text\nok\ncaf\x81\n")
    with pytest.raises(UserError, match=r"latin\.csv, line 3: .*0x81.*UTF-8"):
        load_rows(str(c))
    j = tmp_path / "arr.json"
    j.write_bytes(b'[{"text": "a"},\n {"text": "\x9d"}]')
    with pytest.raises(UserError, match=r"arr\.json, line 2: .*0x9D"):
        load_rows(str(j))


def test_conversation_without_assistant_turn_is_skipped_with_a_reason(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "user", "content": "only a question"}]}]
    d = load_rows(write_jsonl(tmp_path / "c.jsonl", rows))
    assert len(d.rows) == 1
    assert d.errors[0].line == 2 and d.errors[0].field == "messages"
    assert "no assistant turn" in d.errors[0].message


def test_unknown_role_is_reported(tmp_path):
    rows = [{"messages": [{"role": "narrator", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(UserError, match="role 'narrator'"):
        load_rows(write_jsonl(tmp_path / "r.jsonl", rows))


def test_all_rows_bad_is_an_error_not_an_empty_dataset(tmp_path):
    p = tmp_path / "allbad.jsonl"
    p.write_text("not json\nnor this\n")
    with pytest.raises(UserError, match=r"No usable rows .*line 1"):
        load_rows(str(p))


@pytest.mark.parametrize("name, size_gb, bound", [("huge.csv", 1, "1,024 MB.*at most 512 MB"),
                                                  ("huge.jsonl", 9, "9,216 MB.*at most 8,192 MB")])
def test_huge_file_is_refused_quickly_without_reading_it(tmp_path, name, size_gb, bound):
    # CSV is parsed whole (512 MB bound); JSON Lines is streamed, so its bound is larger (8 GB).
    import time

    p = tmp_path / name
    with open(p, "wb") as fh:  # a sparse file: no disk used, nothing to read
        fh.truncate(size_gb * 1024 ** 3)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=bound):
        load_rows(str(p))
    assert time.perf_counter() - t0 < 1.0


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.xlsx").write_bytes(b"x")
    with pytest.raises(UserError, match=r"\.xlsx"):
        load_rows(str(tmp_path / "d.xlsx"))


def test_broken_json_array_names_line_and_column(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[\n {"text": "a"},\n {"text": }\n]')
    with pytest.raises(UserError, match=r"arr\.json, line 3, column"):
        load_rows(str(p))


def test_broken_csv_names_the_line(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("question,answer\nq,a\nq,a,extra\n")
    with pytest.raises(UserError, match="line 3"):
        load_rows(str(p))


# ---------------------------------------------------------------- split

def test_split_is_seeded_disjoint_and_complete():
    rows = [{"text": str(i)} for i in range(100)]
    train, val = split_rows(rows, 0.1, seed=7)
    assert len(val) == 10 and len(train) == 90
    assert sorted(r["text"] for r in train + val) == sorted(r["text"] for r in rows)
    assert split_rows(rows, 0.1, seed=7) == (train, val)
    assert split_rows(rows, 0.1, seed=8)[1] != val


def test_split_keeps_a_training_row_and_zero_means_none():
    assert split_rows([{"text": "a"}, {"text": "b"}], 0.5, 1)[0]
    assert split_rows([{"text": "a"}] * 5, 0.0, 1) == ([{"text": "a"}] * 5, [])


def test_load_for_training_uses_validation_file_when_set(tmp_path):
    from backend.core.config import DataConfig
    from backend.data.records import load_for_training

    tr = write_jsonl(tmp_path / "t.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(10)])
    va = write_jsonl(tmp_path / "v.jsonl", [{"question": "vq", "answer": "va"}])
    _, train, val = load_for_training(DataConfig(path=tr, validation_path=va), seed=1)
    assert len(train) == 10 and val[0]["messages"][0]["content"] == "vq"
    _, train, val = load_for_training(DataConfig(path=tr, validation_split=0.2), seed=1)
    assert (len(train), len(val)) == (8, 2)


def test_two_unnamed_text_columns_guess_prompt_then_completion(tmp_path):
    d = load_rows(write_jsonl(tmp_path / "u.jsonl", [{"q": "hi", "a": "hello"}, {"q": "x"}]))
    assert (d.format, d.mapping) == ("messages", {"prompt": "q", "completion": "a"})
    assert d.skipped == 1 and d.errors[0].field == "a"


def test_dolly_rows_are_detected_with_context_as_the_input(tmp_path):
    p = write_jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": "Summarize this paragraph.", "context": "Bern is the federal city of Switzerland.",
         "response": "Bern hosts the government.", "category": "summarization"},
        {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"}])
    d = load_rows(p)
    assert (d.format, d.source_format) == ("messages", "dolly")
    assert d.mapping == {"prompt": "instruction", "completion": "response", "input": "context"}
    assert d.rows[0]["messages"][0]["content"] == ("Summarize this paragraph.\n\n"
                                                   "Bern is the federal city of Switzerland.")
    assert d.rows[1]["messages"][0]["content"] == "Name a colour."
    # The label column is named as unused, but it is not prose the model should have seen.
    assert d.unused_columns == ["category"] and d.unused_text == []


def test_a_left_out_text_column_is_listed_as_unused_prose(tmp_path):
    p = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": "What is the capital of France?", "answer": "Paris.",
         "notes": "Checked against the 2024 atlas, page 12.", "id": 7}])
    d = load_rows(p)
    assert d.unused_columns == ["notes", "id"] and d.unused_text == ["notes"]
    assert d.summary()["unused_text_columns"] == ["notes"]
