"""Presets: every built-in one is a valid partial RunConfig; saving stays inside its folder."""
from __future__ import annotations

import pytest
import yaml

from backend.core.config import ConfigError
from backend.core.errors import UserError
from backend.methods import validate_for_model
from backend.core.presets import (
    PRESETS_DIR, apply_preset, list_presets, load_preset, preset_config, preset_info, sanitize_name, save_preset,
)

BUILTIN = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def test_the_issue_presets_exist_with_titles(tmp_path):
    names = dict(list_presets(tmp_path))
    for wanted in ("qlora-7b-24gb", "lora-attention-fast", "full-small-model", "dora-stability", "cpu-quick-try"):
        assert wanted in names and names[wanted] != wanted


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_preset_validates_as_a_run_config(name, tmp_path):
    cfg = preset_config(name, tmp_path)
    assert preset_info(name, tmp_path)["description"]
    assert "preset" not in load_preset(name, tmp_path)
    from transformers import LlamaConfig

    # A 7B-like shape with a long context, so model-dependent checks (targets, length) apply too.
    shape = LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                        intermediate_size=512, vocab_size=1000, max_position_embeddings=4096)
    errors = validate_for_model(cfg, shape)
    errors.pop("method.name", None)  # QLoRA's bitsandbytes check depends on the machine
    assert errors == {}


def test_cpu_quick_try_is_small_and_fp32(tmp_path):
    cfg = preset_config("cpu-quick-try", tmp_path)
    assert cfg.model == "smollm2-135m-instruct" and cfg.train.precision == "fp32"
    assert cfg.data.max_length == 256 and cfg.train.max_steps and cfg.train.max_steps <= 60


def test_applying_a_preset_keeps_the_dataset_choice(tmp_path):
    current = {"data": {"path": "mine.jsonl", "max_length": 128}, "method": {"name": "full"}}
    out = apply_preset(current, "lora-attention-fast", tmp_path)
    assert out["data"]["path"] == "mine.jsonl" and out["data"]["max_length"] == 512
    assert out["method"]["name"] == "lora"


def test_a_preset_that_names_a_data_file_never_replaces_the_users_dataset(tmp_path):
    # cpu-quick-try names the bundled sample; a user's CSV and its mapping must survive it.
    current = {"data": {"path": "uploads/capitals.csv", "format": "alpaca",
                        "mapping": {"prompt": "Question", "completion": "Answer"}, "validation_split": 0.2}}
    out = apply_preset(current, "cpu-quick-try", tmp_path)
    assert out["data"]["path"] == "uploads/capitals.csv"
    assert out["data"]["mapping"] == {"prompt": "Question", "completion": "Answer"}
    assert out["data"]["format"] == "alpaca" and out["data"]["validation_split"] == 0.2
    assert out["data"]["max_length"] == 256  # the preset's tokenization settings still apply


def test_save_then_load_round_trips_and_lists_the_title(tmp_path):
    partial = {"method": {"name": "dora", "r": 4}, "train": {"learning_rate": 3e-4}}
    path = save_preset("My DoRA run!", partial, title="My DoRA run", user=tmp_path)
    assert path == tmp_path.resolve() / "my-dora-run.yaml"
    assert load_preset("my-dora-run", tmp_path) == partial
    assert ("my-dora-run", "My DoRA run") in list_presets(tmp_path)
    assert yaml.safe_load(path.read_text())["preset"]["title"] == "My DoRA run"


def test_names_cannot_escape_the_preset_folder(tmp_path):
    assert sanitize_name("../../etc/passwd") == "etc-passwd"
    path = save_preset("../../evil", {"train": {"seed": 1}}, user=tmp_path / "p")
    assert path.parent == (tmp_path / "p").resolve()
    with pytest.raises(UserError, match="at least one letter"):
        sanitize_name("../..")


def test_saving_refuses_a_builtin_name_and_an_invalid_config(tmp_path):
    with pytest.raises(UserError, match="built-in preset"):
        save_preset("cpu-quick-try", {}, user=tmp_path)
    with pytest.raises(ConfigError, match="method.r"):
        save_preset("bad", {"method": {"r": 0}}, user=tmp_path)
    assert not (tmp_path / "bad.yaml").exists()


def test_unknown_preset_names_the_choices(tmp_path):
    with pytest.raises(UserError, match="no preset named 'nope'.*cpu-quick-try"):
        load_preset("nope", tmp_path)
