"""The Merge tab's GGUF panel drives `ftstudio export` in a child process and shows its result."""
from studio.tabs.merge_export import stream_export


def test_export_panel_streams_progress_and_a_checked_result(tiny_model_dir, tmp_path):
    lines = list(stream_export(str(tiny_model_dir), str(tmp_path / "tiny-f16.gguf"), "f16"))
    assert lines[0].startswith("Starting")
    assert "GGUF written and checked" in lines[-1], lines[-1]
    assert "ollama create" in lines[-1]
    assert (tmp_path / "tiny-f16.gguf").stat().st_size > 0


def test_export_panel_shows_a_sentence_for_an_unknown_source(tmp_path):
    lines = list(stream_export(str(tmp_path / "nothing-here"), str(tmp_path / "x.gguf"), "f16"))
    assert "ft-error" in lines[-1]
    assert not (tmp_path / "x.gguf").exists()
