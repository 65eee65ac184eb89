"""`ftstudio data inspect|preview` print the JSON docs/ARCHITECTURE.md describes; bad input exits 2 with a sentence."""
import json

from backend.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else None


def write(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"question": f"q{i}", "answer": "a" * (1 if i else 300)} for i in range(5)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    return str(p)


def test_inspect_reports_format_mapping_errors_and_token_lengths(tmp_path, capsys, tiny_model_dir):
    code, out = run(capsys, "data", "inspect", write(tmp_path), "--model", str(tiny_model_dir),
                    "--max-length", "48", "--json")
    assert code == 0
    assert out["format"] == "messages" and out["source_format"] == "columns"
    assert out["rows"] == 5 and out["columns"] == ["question", "answer"]
    assert out["mapping"] == {"prompt": "question", "completion": "answer"}
    assert out["skipped"] == 1 and out["errors"][0]["line"] == 6
    tl = out["token_lengths"]
    assert tl["min"] <= tl["median"] <= tl["max"] and tl["truncated"] == 1


def test_preview_lists_tokens_with_labels_and_roles(tmp_path, capsys, tiny_model_dir):
    code, out = run(capsys, "data", "preview", write(tmp_path), "--row", "1", "--model", str(tiny_model_dir), "--json")
    assert code == 0 and "q1" in out["text"]
    assert set(out["tokens"][0]) >= {"id", "text", "label", "attention", "role"}
    roles = {t["role"] for t in out["tokens"]}
    assert {"graded", "prompt", "special"} <= roles
    code, out2 = run(capsys, "data", "preview", write(tmp_path), "--row", "1", "--model", str(tiny_model_dir),
                     "--train-on-prompt", "--json")
    assert all(t["label"] == t["id"] for t in out2["tokens"])


def test_packed_preview_gives_every_token_its_position_and_segment(tmp_path, capsys, tiny_model_dir):
    code, out = run(capsys, "data", "preview", write(tmp_path), "--row", "2", "--model", str(tiny_model_dir),
                    "--template", "chatml", "--max-length", "128", "--packing", "--json")
    assert code == 0 and 2 in out["rows"] and len(out["rows"]) >= 2
    toks = out["tokens"]
    assert all({"position", "segment", "row"} <= set(t) for t in toks)
    for j, t in enumerate(toks):  # positions count up within a segment and restart at each new one
        if j and t["segment"] != toks[j - 1]["segment"]:
            assert t["position"] == 0 and t["segment"] == toks[j - 1]["segment"] + 1 and t["label"] == -100
        elif j:
            assert t["position"] == toks[j - 1]["position"] + 1
    assert toks[0]["position"] == 0 and 0 < out["efficiency"] <= 1


def test_bad_input_exits_2_with_the_sentence_in_error(tmp_path, capsys):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    code, out = run(capsys, "data", "inspect", str(empty), "--json")
    assert code == 2 and "is empty" in out["error"]


def test_inspect_reports_health_and_reads_a_windows_1252_csv_with_an_encoding_notice(tmp_path, capsys,
                                                                                     tiny_model_dir):
    p = tmp_path / "excel.csv"
    lines = ["question,answer"] + [f"Qu\u00e9 significa la palabra n\u00famero {i}?,Significa cosa {i}." for i in range(8)]
    lines += ["Qu\u00e9 significa la palabra n\u00famero 3?,Significa cosa 3.", "Vac\u00edo?,   "]
    p.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    code, out = run(capsys, "data", "inspect", str(p), "--model", str(tiny_model_dir), "--json")
    assert code == 0 and out["encoding"] == "latin-1"
    assert "Latin-1" in out["notices"][0] and out["warnings"][0] == out["notices"][0]
    h = out["health"]
    assert h["duplicates"] == 1 and h["near_duplicates"] == 0 and h["empty_answers"] == 1
    assert h["languages"] == {"es": 9} and h["leakage"] is not None
    assert {"answers_cut", "prompts_too_long", "validation_rows"} <= set(h)


def test_dedup_writes_a_copy_without_duplicates(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(5)] + [{"q": "QUESTION 2", "a": "answer 2"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = run(capsys, "data", "dedup", str(p), "--json")
    assert code == 0 and out["duplicates_dropped"] == 1 and out["rows"] == 5
    assert out["path"].endswith("d.dedup.jsonl") and len(p.read_text().splitlines()) == 6


def test_inspect_lists_the_missing_markers_and_preview_adds_them(tmp_path, capsys, tiny_model_dir):
    code, out = run(capsys, "data", "inspect", write(tmp_path), "--model", str(tiny_model_dir), "--template", "llama3",
                    "--json")
    assert code == 0 and out["missing_markers"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    args = ("data", "preview", write(tmp_path), "--row", "1", "--model", str(tiny_model_dir), "--template", "llama3",
            "--json")
    code, plain = run(capsys, *args)
    code, added = run(capsys, *args, "--add-special-tokens", *out["missing_markers"])
    assert code == 0 and {t["id"] for t in added["tokens"] if t["text"] == "<|eot_id|>"} == {49154}
    assert len(added["tokens"]) < len(plain["tokens"])  # each marker is one token instead of several
    code, bad = run(capsys, *args, "--add-special-tokens", "<x>", "<x>")
    assert code == 2 and "listed twice" in bad["error"]
