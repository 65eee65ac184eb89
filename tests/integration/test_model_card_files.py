"""Cards on disk: the merge writes one into the merged model, the combination into the combined adapter."""
from __future__ import annotations

from backend.export.merge import combine_adapters, merge_adapter
from backend.runs.model_card import parse_front_matter
from tests.integration.test_merge import make_lora_run


def test_a_merged_model_carries_a_transformers_card_naming_its_run(tiny_model_dir, tmp_path):
    run = make_lora_run(tmp_path, tiny_model_dir, "20260101-000000-card")
    out = merge_adapter(run, tmp_path / "merged")
    text = (tmp_path / "merged" / "README.md").read_text()
    fm = parse_front_matter(text)
    assert fm["library_name"] == "transformers" and "lora" in fm["tags"]
    assert "base_model" not in fm  # a local folder is no hub id
    assert "merged model" in text and "20260101-000000-card" in text and str(tiny_model_dir) in text
    assert out["out"] == str((tmp_path / "merged").resolve())


def test_a_combined_adapter_card_lists_its_sources_and_weights(tiny_model_dir, tmp_path):
    a = make_lora_run(tmp_path, tiny_model_dir, "ra", seed=1)
    b = make_lora_run(tmp_path, tiny_model_dir, "rb", seed=2)
    combine_adapters([a, b], [0.7, 0.3], out_dir=tmp_path / "combined")
    text = (tmp_path / "combined" / "README.md").read_text()
    assert parse_front_matter(text)["library_name"] == "peft"
    assert "Combined from ra (weight 0.7), rb (weight 0.3) with linear." in text
