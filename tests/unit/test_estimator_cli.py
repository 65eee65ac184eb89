"""`ftstudio estimate CONFIG.yaml --json`: the JSON contract in docs/ARCHITECTURE.md, exit codes, hypothetical cards."""
import json

import pytest
import yaml

from backend.cli import main


@pytest.fixture(scope="module")
def config_only_model(tmp_path_factory):
    from transformers import LlamaConfig
    d = tmp_path_factory.mktemp("config-only")
    LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=1000, max_position_embeddings=2048).save_pretrained(d)
    return d


def write(tmp_path, data):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def test_estimate_prints_one_json_object_with_the_design_keys(tmp_path, capsys, config_only_model, monkeypatch):
    monkeypatch.setattr("backend.estimator.core.list_gpus", lambda: [])  # a CPU-only machine
    path = write(tmp_path, {"model": str(config_only_model), "method": {"name": "lora", "r": 8}})
    code, data, _ = run_cli(capsys, "estimate", path, "--json")
    assert code == 0
    assert set(data["terms_bytes"]) == {"weights", "gradients", "optimizer", "activations", "logits", "overhead"}
    assert data["trainable_params"] < data["total_params"]
    assert data["fits"] is None and data["gpus"] == []
    assert any("No GPU" in n for n in data["notes"])


def test_a_hypothetical_card_gives_a_verdict(tmp_path, capsys, config_only_model):
    path = write(tmp_path, {"model": str(config_only_model), "method": {"name": "full"}})
    code, data, _ = run_cli(capsys, "estimate", path, "--gpus", "2", "--gpu-memory", "24", "--json")
    assert code == 0 and data["fits"] is True
    assert len(data["gpus"]) == 2 and data["gpus"][0]["total_bytes"] == 24 * 2**30


def test_a_bad_config_exits_2_with_an_error_field(tmp_path, capsys, config_only_model):
    path = write(tmp_path, {"model": str(config_only_model), "train": {"batch_sise": 4}})
    code, data, err = run_cli(capsys, "estimate", path, "--json")
    assert code == 2 and "batch_sise" in data["error"] and "batch_sise" in err


def test_a_missing_model_directory_exits_2(tmp_path, capsys):
    path = write(tmp_path, {"model": str(tmp_path / "nowhere")})
    code, data, _ = run_cli(capsys, "estimate", path, "--json")
    assert code == 2 and "nowhere" in data["error"]


def test_a_missing_config_file_exits_2(tmp_path, capsys):
    code, data, _ = run_cli(capsys, "estimate", str(tmp_path / "absent.yaml"), "--json")
    assert code == 2 and "does not exist" in data["error"]


def test_negative_gpu_memory_exits_2(tmp_path, capsys, config_only_model):
    path = write(tmp_path, {"model": str(config_only_model)})
    code, data, _ = run_cli(capsys, "estimate", path, "--gpu-memory", "-1", "--json")
    assert code == 2 and "--gpu-memory" in data["error"]
