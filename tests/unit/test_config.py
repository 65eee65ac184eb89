import pytest

from backend.core.config import ConfigError, RunConfig, config_to_yaml, load_config, validate_config


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = RunConfig()
    p = tmp_path / "c.yaml"
    p.write_text(config_to_yaml(cfg))
    assert load_config(p) == cfg


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="train.learnig_rate: is not a known setting"):
        validate_config({"train": {"learnig_rate": 1e-4}})


def test_wrong_types_are_named_by_field():
    with pytest.raises(ConfigError) as e:
        validate_config({"method": {"r": 0}, "train": {"learning_rate": -1, "batch_size": "four"}})
    assert set(e.value.fields) == {"method.r", "train.learning_rate", "train.batch_size"}


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: x\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(p)


def test_non_mapping_yaml_is_refused(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
