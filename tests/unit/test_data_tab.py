"""The Dataset tab's view helpers: config writing, token colouring, row table, cache."""
import json

import pytest

from backend.core.errors import UserError
from studio.context import default_run_config
from studio.tabs import dataset as tab


def test_with_data_writes_the_data_section_and_keeps_the_rest():
    rc = default_run_config()
    rc["model"] = "some/model"
    out = tab.with_data(rc, path="/d.jsonl", template="llama3", max_length=256, packing=True,
                        mapping={"prompt": "q", "completion": "a"}, format="messages")
    assert out["model"] == "some/model"
    assert out["data"]["path"] == "/d.jsonl" and out["data"]["template"] == "llama3"
    assert out["data"]["max_length"] == 256 and out["data"]["packing"] is True
    assert out["data"]["mapping"] == {"prompt": "q", "completion": "a"}
    assert rc["data"]["path"] != "/d.jsonl"  # the input dict is not changed in place


def test_with_data_turns_a_bad_value_into_a_sentence():
    with pytest.raises(UserError, match=r"data\.max_length.*greater than or equal to 8"):
        tab.with_data(default_run_config(), max_length=4)


def test_tokens_html_colours_by_role_and_escapes_markup():
    toks = [{"id": 1, "text": "<|im_start|>", "label": -100, "attention": 1, "role": "special"},
            {"id": 5, "text": "hi\n", "label": 5, "attention": 1, "role": "graded"},
            {"id": 6, "text": "cut", "label": None, "attention": 0, "role": "truncated"}]
    h = tab.tokens_html(toks)
    assert "class='tok special'" in h and "&lt;|im_start|&gt;" in h and "<|im_start|>" not in h
    assert "class='tok graded' title='id 5 · label 5 · attention 1 · graded'" in h
    assert "label — · attention 0 · truncated" in h
    assert "hi↵" in h


def test_rows_table_and_cache_reuse_the_loaded_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(3)))
    cache = tab.DatasetCache(size=2)
    ds = cache.load(str(p), None, "auto", True)
    assert cache.load(str(p), None, "auto", True) is ds
    rows = tab.rows_table(ds)
    assert rows[0][:2] == [0, 1] and "user: q0" in rows[0][2] and "assistant: a" in rows[0][2]


def test_samples_are_offered_by_file_name():
    names = tab.sample_choices()
    assert "instructions.jsonl" in names and not any(n.endswith(".py") for n in names)


@pytest.mark.parametrize("sample", ["instructions.jsonl", "preference.jsonl", "corpus.txt", "chat.jsonl"])
def test_settings_written_by_the_tab_reload_to_the_same_rows_for_training(sample):
    from backend.core.config import DataConfig
    from backend.data.records import load_for_training, load_rows

    path = str(tab.SAMPLES_DIR / sample)
    ds = load_rows(path)
    rc = tab.with_data(default_run_config(), path=path, format=ds.format, mapping=ds.mapping,
                       validation_split=0.0)
    loaded, train, val = load_for_training(DataConfig(**rc["data"]), seed=1)
    assert loaded.format == ds.format and train == ds.rows and val == []


def test_status_names_unused_columns_and_warns_about_left_out_text(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "What is the capital of France?", "answer": "Paris.",
                             "notes": "Checked against the 2024 atlas, page 12.", "category": "geo"}) + "\n")
    md = tab.status_markdown(tab.load_rows(str(p)))
    assert "Columns not used for training: `notes`, `category`" in md
    assert "Text column(s) `notes` are left out" in md


def test_the_same_content_uploaded_twice_is_stored_once_and_named_without_its_hash(tmp_path):
    ws = tmp_path / "ws"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "capitals.csv").write_text("Question,Answer\nq,a\n")
    first = tab.keep_upload(ws, str(tmp_path / "a" / "capitals.csv"))
    second = tab.keep_upload(ws, str(tmp_path / "b" / "capitals.csv"))
    assert first == second and len(list((ws / "uploads").iterdir())) == 1
    assert tab.display_name(first) == "capitals.csv"
    assert tab.source_of(ws, first) == "uploaded file"


def _view(workspace):
    """A DatasetView of plain strings (the handlers use components only as keys), on a real cache."""
    import dataclasses
    from types import SimpleNamespace

    names = [f.name for f in dataclasses.fields(tab.DatasetView) if f.name not in ("ctx", "cache", "role_boxes")]
    v = SimpleNamespace(**{n: n for n in names}, role_boxes=[f"map-{r}" for r in tab.MAP_ROLES],
                        cache=tab.DatasetCache())
    v.ctx = SimpleNamespace(run_config="rc", workspace=workspace, data_lengths=None)
    v.settings = [v.template, v.system_prompt, v.max_length, v.train_on_prompt, v.last_turn, v.packing]
    return v


def test_health_counts_show_and_drop_duplicates_writes_and_loads_a_copy(tmp_path, tiny_model_dir):
    rows = [{"question": f"Name a fact about topic number {i} please", "answer": f"Fact {i} is true."}
            for i in range(12)]
    rows.insert(4, {"question": "name a fact about TOPIC number 2 please", "answer": "Fact 2 is true."})
    src = tmp_path / "facts.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    src.write_text(text)
    v = _view(tmp_path)
    rc = {**default_run_config(), "model": str(tiny_model_dir)}
    settings = ("auto", "", 512, False, False, False, "split", 0.0, rc)
    out = tab.load_all(v, str(src), "auto", None, True, *settings)
    assert "duplicates 1 ·" in out["health_md"] and "repeat an earlier row" in out["health_md"]
    done = tab.from_dedup(v, str(src), out["src_state"], "auto", True, *settings[:-1], out["rc"])
    copy = tmp_path / "uploads" / "facts.dedup.jsonl"
    assert copy.exists() and src.read_text() == text, "the copy is written, the original kept"
    assert done["path_state"] == str(copy) and "Dropped 1 duplicate" in done["status"]
    assert "duplicates 0 ·" in done["health_md"] and "No problems found" in done["health_md"]
    assert done["rc"]["data"]["path"] == str(copy)


def test_the_reasoning_setting_is_written_and_redraws_the_tokens(tmp_path, tiny_model_dir):
    src = tmp_path / "think.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                            {"role": "assistant", "content": "<think>two and two</think> 4"}]}) + "\n")
    v = _view(tmp_path)
    rc = {**default_run_config(), "model": str(tiny_model_dir)}
    out = tab.load_all(v, str(src), "auto", None, True, "auto", "", 512, False, False, False, "split", 0.0, rc)
    assert "two and two" in out["rendered"]
    args = (str(src), out["src_state"], True, "auto", "", 512, False, False, False, 0)
    stripped = tab.on_reasoning(v, "strip", *args, out["rc"])
    assert stripped["rc"]["data"]["reasoning"] == "strip" and "two and two" not in stripped["rendered"]


def test_missing_template_markers_are_named_and_the_box_adds_them_as_single_tokens(tmp_path, tiny_model_dir):
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello"}]}) + "\n")
    v = _view(tmp_path)
    rc = {**default_run_config(), "model": str(tiny_model_dir)}
    out = tab.load_all(v, str(src), "auto", None, True, "llama3", "", 512, False, False, False, "split", 0.0, rc)
    markers = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    notice = out["new_tokens_md"]
    assert notice["visible"] and all(m in notice["value"] for m in markers) and "lacks" in notice["value"]
    assert out["add_tokens"]["visible"] and out["add_tokens"]["value"] is False
    pieces = [r for r in out["tok_table"] if r[1] == "<|eot_id|>"]
    assert not pieces, "before adding, the marker is several pieces"

    args = (str(src), out["src_state"], True, "llama3", "", 512, False, False, False, 0)
    added = tab.on_add_tokens(v, True, *args, out["rc"])
    assert added["rc"]["data"]["add_special_tokens"] == markers
    eot = [r for r in added["tok_table"] if r[1] == "<|eot_id|>"]
    assert eot and eot[0][2] == 49152 + 2  # one token, with the id training gives it
    assert "are added" in added["new_tokens_md"]["value"] and added["add_tokens"]["value"] is True

    # The tick follows the template: Gemma's missing markers replace Llama-3's.
    gemma = tab.on_settings(v, str(src), out["src_state"], True, "gemma", "", 512, False, False, False, 0,
                            added["rc"])
    assert gemma["rc"]["data"]["add_special_tokens"] == ["<start_of_turn>", "<end_of_turn>"]
    chatml = tab.on_settings(v, str(src), out["src_state"], True, "chatml", "", 512, False, False, False, 0,
                             gemma["rc"])
    assert chatml["rc"]["data"]["add_special_tokens"] == []  # the tokenizer has ChatML's markers
    assert chatml["new_tokens_md"]["visible"] is False and chatml["add_tokens"]["visible"] is False
    cleared = tab.on_add_tokens(v, False, *args, added["rc"])
    assert cleared["rc"]["data"]["add_special_tokens"] == []
