"""The studio's choices survive a reload: saved in the workspace, read back validated, imported from a run."""
import json

import pytest
import yaml

from backend.core.choices import CHOICES_FILE, load_choices, save_choices, selected_run_dir, settings_from
from backend.core.config import RunConfig
from backend.core.errors import UserError


def test_nothing_saved_reads_as_none(tmp_path):
    assert load_choices(tmp_path) == {"run_config": None, "selected_run": None, "recent_models": []}


def test_saved_run_config_and_selected_run_come_back(tmp_path):
    rc = RunConfig().model_dump(mode="json")
    rc["data"].update(path="/data/capitals.csv", mapping={"prompt": "Question", "completion": "Answer"})
    rc["train"]["epochs"] = 1.0
    save_choices(tmp_path, run_config=rc)
    (tmp_path / "runs" / "20260101-000000-x").mkdir(parents=True)
    save_choices(tmp_path, selected_run="20260101-000000-x")
    back = load_choices(tmp_path)
    assert back["run_config"]["data"]["mapping"] == {"prompt": "Question", "completion": "Answer"}
    assert back["run_config"]["train"]["epochs"] == 1.0
    assert selected_run_dir(tmp_path) == tmp_path / "runs" / "20260101-000000-x"


def test_an_invalid_or_unreadable_choices_file_falls_back_to_defaults(tmp_path):
    (tmp_path / CHOICES_FILE).write_text(json.dumps({"run_config": {"train": {"batch_size": 0}},
                                                      "selected_run": "../../etc"}))
    assert load_choices(tmp_path)["run_config"] is None
    assert selected_run_dir(tmp_path) is None
    (tmp_path / CHOICES_FILE).write_text("{not json")
    assert load_choices(tmp_path) == {"run_config": None, "selected_run": None, "recent_models": []}


def test_settings_are_imported_from_a_run_directory_or_a_yaml_file(tmp_path):
    rc = RunConfig().model_dump(mode="json")
    rc["method"]["r"] = 4
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(rc))
    assert settings_from(run)["method"]["r"] == 4
    assert settings_from(run / "config.yaml")["method"]["r"] == 4
    with pytest.raises(UserError, match="no settings"):
        settings_from(tmp_path / "nothing")
