"""Every file the studio ships or writes runs headless as it is, from any folder: presets (with their
metadata block), a run's config.yaml, the Method tab's exported YAML and a queue file; relative paths
are looked up in the config's folder, then the workspace, then the project folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from backend import cli
from backend.core.config import ConfigError, RunConfig, config_to_yaml, resolve_paths
from backend.core.paths import PRESETS_DIR, PROJECT_ROOT
from backend.core.presets import load_preset, preset_config
from backend.runs import queue, rundir
from backend.runs.run_files import read_run_files, search_roots

pytestmark = pytest.mark.timeout(600)
PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A working folder outside the repository."""
    away = tmp_path / "elsewhere"
    away.mkdir()
    monkeypatch.chdir(away)
    return away


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_estimates_as_it_is_from_outside_the_repository(preset, elsewhere, capsys, monkeypatch):
    monkeypatch.setattr("backend.estimator.core.list_gpus", lambda: [])  # the same answer on any machine
    assert cli.main(["estimate", str(preset), "--gpus", "1", "--gpu-memory", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_bytes"] > 0 and out["trainable_params"] > 0


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_print_config_fills_a_preset_like_the_method_tab_and_resolves_its_data(preset, elsewhere, capsys):
    assert cli.main(["train", str(preset), "--print-config", "--workspace", str(elsewhere / "ws")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "preset" not in printed
    # The Method tab applies a preset over the defaults (backend.core.presets.preset_config).
    expected = preset_config(preset.stem).model_dump(mode="json")
    expected["data"]["path"] = str((PROJECT_ROOT / expected["data"]["path"]).resolve())
    assert printed == expected
    assert Path(printed["data"]["path"]).is_file()
    assert rundir.list_runs(elsewhere / "ws") == []  # --print-config starts nothing


def test_every_preset_trains_two_steps_on_the_tiny_model_from_outside_the_repository(
        tiny_model_dir, elsewhere, capsys):
    from backend.training.run import run as train_in_process

    # Each preset file as shipped, layered under a config that only points it at the tiny model
    # and cuts it to two steps (the config's fields win).
    (elsewhere / "small.yaml").write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "data": {"max_length": 64, "validation_split": 0.0}, "report_to": [],
        "train": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "eval_steps": 50,
                  "gradient_checkpointing": False}}))
    ws = elsewhere / "ws"
    # The preset the README shows goes through `ftstudio train` and its subprocess ...
    code = cli.main(["train", "small.yaml", "--preset", "cpu-quick-try", "--workspace", str(ws),
                     "--no-progress", "--json"])
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert (code, run["state"]) == (0, "completed"), run
    # ... and every preset, read the same way, trains in this process (sparing a Python start-up each).
    for preset in PRESETS:
        [cfg] = read_run_files(elsewhere / "small.yaml", preset=preset.stem, workspace=ws)
        run_dir = rundir.create_run(ws, cfg)
        assert train_in_process(run_dir) == 0, (preset.stem, rundir.read_status(run_dir).get("error"))
        assert rundir.read_status(run_dir)["state"] == "completed"
        saved = RunConfig.model_validate(yaml.safe_load((run_dir / rundir.CONFIG_FILE).read_text()))
        assert saved.method.name == load_preset(preset.stem)["method"]["name"]
        assert saved.data.path == str((PROJECT_ROOT / "assets/samples/instructions.jsonl").resolve())


def test_preset_option_layers_a_preset_under_a_config_whose_fields_win(elsewhere, capsys):
    (elsewhere / "mine.yaml").write_text("train:\n  learning_rate: 0.005\n")
    assert cli.main(["train", "mine.yaml", "--preset", "cpu-quick-try", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["learning_rate"] == 0.005          # the config's own field
    assert cfg["train"]["max_steps"] == 60                  # from the preset
    assert cfg["method"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_a_run_config_yaml_and_an_exported_yaml_run_as_they_are(tmp_path, elsewhere):
    exported = RunConfig.model_validate({"data": {"path": "assets/samples/chat.jsonl"}})
    (elsewhere / "exported.yaml").write_text(config_to_yaml(exported))
    [cfg] = read_run_files(elsewhere / "exported.yaml")
    assert cfg.data.path == str(PROJECT_ROOT / "assets/samples/chat.jsonl")
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    [again] = read_run_files(run_dir / rundir.CONFIG_FILE)
    assert again == cfg


def test_a_queue_file_runs_its_waiting_entries_in_order(tmp_path, elsewhere):
    ws = tmp_path / "ws"
    first = queue.add_to_queue(ws, RunConfig.model_validate({"name": "first"}))
    queue.add_to_queue(ws, RunConfig.model_validate({"name": "second"}))
    data = json.loads(queue.queue_path(ws).read_text())
    data["entries"][0]["state"] = "done"
    queue.queue_path(ws).write_text(json.dumps(data))
    assert first["id"] == data["entries"][0]["id"]
    assert [c.name for c in read_run_files(queue.queue_path(ws))] == ["second"]


def test_relative_paths_look_in_the_config_folder_then_the_workspace_then_the_project(tmp_path):
    conf, ws = tmp_path / "conf", tmp_path / "ws"
    for folder in (conf, ws):
        (folder / "assets" / "samples").mkdir(parents=True)
    rel = "assets/samples/instructions.jsonl"
    cfg = RunConfig.model_validate({"data": {"path": rel}})
    roots = search_roots(conf, ws)
    assert roots == [conf.resolve(), ws.resolve(), PROJECT_ROOT]
    assert resolve_paths(cfg, roots).data.path == str(PROJECT_ROOT / rel)
    (ws / rel).write_text("{}\n")
    assert resolve_paths(cfg, roots).data.path == str(ws.resolve() / rel)
    (conf / rel).write_text("{}\n")
    assert resolve_paths(cfg, roots).data.path == str(conf.resolve() / rel)


def test_a_relative_path_found_nowhere_names_the_folders_and_the_order(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("data:\n  path: nowhere/rows.jsonl\n")
    with pytest.raises(ConfigError) as err:
        read_run_files(tmp_path / "c.yaml", workspace=tmp_path / "ws")
    message = str(err.value)
    assert "data.path" in message and "nowhere/rows.jsonl" in message
    assert str(tmp_path) in message and "the config file's folder, then the workspace" in message
    assert cli.main(["train", str(tmp_path / "c.yaml"), "--workspace", str(tmp_path / "ws")]) == 2
    assert "nowhere/rows.jsonl" in capsys.readouterr().err
