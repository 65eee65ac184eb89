import pytest

from backend.core.models import ModelError, resolve_model


def test_missing_directory_that_is_not_a_hub_id_is_refused_with_a_sentence(tmp_path):
    with pytest.raises(ModelError, match="neither"):
        resolve_model(str(tmp_path / "nope" / "deeper" / "x"))


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path))


def test_local_directory_with_config_resolves(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).kind == "local"


def test_hub_id_resolves_as_hub():
    assert resolve_model("HuggingFaceTB/SmolLM2-360M").kind == "hub"


def test_empty_reference_is_refused():
    with pytest.raises(ModelError, match="No model"):
        resolve_model("  ")
