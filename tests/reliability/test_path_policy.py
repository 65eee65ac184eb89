"""The studio's one path policy (backend/core/access.py), through the handlers a browser or any local
process can call: reads only inside the workspace, --allow-path folders, samples and model caches;
writes only inside the workspace; the same sentence for "missing" and "not allowed"; zips that never
follow a link out of the folder. Each handler is called as Gradio would call it, with plain data.

On the main branch before this policy, each of these read, zipped or wrote outside the workspace."""
from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.core import access, models
from backend.core.errors import UserError
from studio.context import default_run_config
from studio.tabs import chat, dataset, merge, method, train, train_queue

ROWS = '{"prompt": "secret question", "completion": "secret answer"}\n'


@pytest.fixture()
def places(tmp_path):
    ws = tmp_path / "ws"
    (ws / "runs").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(ROWS)
    (outside / "model").mkdir()
    (outside / "model" / "config.json").write_text('{"model_type": "llama"}')
    access.allow_paths([])
    yield SimpleNamespace(ws=ws, outside=outside, missing=outside / "no-such-file.jsonl")
    access.allow_paths([])


def _same_sentence(a: str, path_a, b: str, path_b) -> bool:
    return a.replace(str(path_a), "PATH") == b.replace(str(path_b), "PATH")


def _dataset_view(ws: Path):
    names = ["status", "errors_md", "table", "path_state", "src_state", "split_md", "row_no", "stats_md", "hist",
             "rendered", "preview_html", "tok_table"]
    names += ["sample", "upload", "path_box"]  # the pickers a load clears (one current dataset)
    v = SimpleNamespace(**{n: n for n in names}, role_boxes=[f"role-{r}" for r in dataset.MAP_ROLES])
    v.ctx = SimpleNamespace(run_config="rc", workspace=ws)
    v.cache = dataset.DatasetCache()
    return v


def _from_path(v, text) -> dict:
    return dataset.from_path(v, text, "auto", True, "auto", "", 512, False, False, False, "split", 0.1,
                             default_run_config())


def test_the_dataset_path_box_reads_nothing_outside_and_says_the_same_for_missing_files(places):
    v = _dataset_view(places.ws)
    out = _from_path(v, str(places.outside / "secret.jsonl"))
    assert set(out) == {"status"} and "secret" not in out["status"].replace("secret.jsonl", "")
    assert "cannot be used" in out["status"] and "--allow-path" in out["status"]
    missing = _from_path(v, str(places.missing))
    assert _same_sentence(out["status"], places.outside / "secret.jsonl", missing["status"], places.missing)
    # /etc/shadow exists (unreadable), /etc/no-such-file does not: the answers must not differ.
    shadow, nothing = _from_path(v, "/etc/shadow"), _from_path(v, "/etc/no-such-file-here")
    assert _same_sentence(shadow["status"], "/etc/shadow", nothing["status"], "/etc/no-such-file-here")
    # A link inside the workspace that points out is outside.
    (places.ws / "link.jsonl").symlink_to(places.outside / "secret.jsonl")
    assert "cannot be used" in _from_path(v, str(places.ws / "link.jsonl"))["status"]
    assert "cannot be used" in _from_path(v, f"{places.ws}/../outside/secret.jsonl")["status"]


def test_a_folder_named_with_allow_path_becomes_readable(places):
    policy = access.policy(places.ws)
    with pytest.raises(UserError, match="cannot be used"):
        policy.readable(places.outside / "secret.jsonl")
    access.allow_paths([places.outside])
    assert access.policy(places.ws).readable(places.outside / "secret.jsonl") == places.outside / "secret.jsonl"
    # Reading is allowed there; writing is not.
    with pytest.raises(UserError, match="writes only inside its workspace"):
        access.policy(places.ws).writable(places.outside / "merged")


def test_the_launcher_takes_allow_path_and_sets_the_policy(places, monkeypatch, launch_kwargs):
    from backend.commands.ui import add_arguments
    from studio import launcher

    seen = launch_kwargs
    monkeypatch.setenv("FTSTUDIO_WORKSPACE", str(places.ws))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--workspace", str(places.ws), "--allow-path", str(places.outside)])
    launcher.launch_from_args(args)
    assert access.policy(places.ws).allowed == (places.outside.resolve(),)
    assert seen["allowed_paths"] == [str(places.ws.resolve())], "the file route still serves the workspace only"
    with pytest.raises(SystemExit, match="no such folder"):
        launcher.launch_from_args(parser.parse_args(["--workspace", str(places.ws),
                                                     "--allow-path", str(places.missing)]))


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path":
                                                            models.DEFAULT_MODEL, "r": 2, "target_modules": ["q_proj"]}))
    (folder / "adapter_model.safetensors").write_bytes(b"0" * 16)
    return folder


def test_zip_refuses_a_folder_outside_and_never_follows_links_out(places, monkeypatch):
    # On main, /on_zip zipped any folder holding a config.json into exports/ for download.
    z, status = merge.on_zip(places.ws, str(places.outside / "model"))
    assert z is None and "cannot be used" in status
    assert not (places.ws / "exports").exists() or not any((places.ws / "exports").iterdir())
    # Inside the workspace, links to a file and to a folder outside are left out of the zip.
    ad = _adapter(places.ws / "mine" / "adapter")
    (ad / "leak.txt").symlink_to(places.outside / "secret.jsonl")
    (ad / "leakdir").symlink_to(places.outside)
    (ad / "inside-link.json").symlink_to(ad / "adapter_config.json")
    z, status = merge.on_zip(places.ws, str(ad))
    assert z, status
    names = zipfile.ZipFile(z).namelist()
    assert "adapter/adapter_config.json" in names and "adapter/inside-link.json" in names
    assert not any("leak" in n or "secret" in n for n in names), names


def test_zip_of_a_run_whose_adapter_folder_is_a_link_out_is_refused(places):
    from backend.export.merge import export_zip

    run = places.ws / "runs" / "r1"
    run.mkdir()
    (run / "config.yaml").write_text("name: r1\n")
    _adapter(places.outside / "elsewhere")
    (run / "adapter").symlink_to(places.outside / "elsewhere")
    with pytest.raises(UserError, match="link to a folder outside"):
        export_zip(run, places.ws / "exports" / "x.zip")


def test_merge_and_combine_refuse_outside_sources_and_outputs_before_any_work(places, monkeypatch):
    started = []
    monkeypatch.setattr(merge.mg, "run_merge_subprocess", lambda cmd, *a, **k: started.append(cmd) or iter(()))
    ad = _adapter(places.ws / "mine" / "adapter")
    for out_dir in ("/", "/etc", str(places.outside / "merged"), str(places.ws), f"{places.ws}/../escape"):
        lines = list(merge.on_merge(places.ws, str(ad), out_dir))
        assert len(lines) == 1 and "writes only inside its workspace" in lines[0], (out_dir, lines)
    lines = list(merge.on_merge(places.ws, str(places.outside / "model"), str(places.ws / "merged" / "m")))
    assert "cannot be used" in lines[0]
    lines = list(merge.on_combine(places.ws, [str(ad), str(ad)], "", "ties", 0.5, "/tmp/combined-out", False))
    assert "writes only inside its workspace" in lines[0]
    lines = list(merge.on_combine(places.ws, [str(ad), str(places.outside / "model")], "", "ties", 0.5, "", False))
    assert "cannot be used" in lines[0]
    assert started == [], "no merge process was started"
    assert not (places.outside / "merged").exists()


def test_model_fields_refuse_folders_outside_with_the_missing_sentence(places):
    v = method.MethodView(SimpleNamespace(run_config="rc", workspace=places.ws), places.ws / "presets")
    v.model_md, v.errs = "model_md", {"model": "err-model"}
    out = method.on_inspect(v, str(places.outside / "model"), [], False, default_run_config())
    refused = out["err-model"]["value"]
    missing = method.on_inspect(v, str(places.outside / "nope"), [], False, default_run_config())["err-model"]["value"]
    assert "cannot be used" in refused
    assert _same_sentence(refused, places.outside / "model", missing, places.outside / "nope")
    # Hub ids and the bundled model are names, not paths: they pass the policy.
    assert access.policy(places.ws).model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert access.policy(places.ws).model(models.DEFAULT_MODEL) == models.DEFAULT_MODEL


def test_chat_refuses_a_model_or_adapter_outside_before_the_worker_loads_it(places, monkeypatch):
    session = chat.ChatSession(places.ws)
    monkeypatch.setattr(session.client, "load", lambda *a, **k: pytest.fail("the worker was asked to load"))
    refused = session.load(str(places.outside / "model"), False)
    missing = session.load(str(places.outside / "nope"), False)
    assert "cannot be used" in refused
    assert _same_sentence(refused, places.outside / "model", missing, places.outside / "nope")


def test_starting_or_queueing_a_config_with_outside_paths_is_refused(places):
    rc = default_run_config()
    rc["data"]["path"] = str(places.outside / "secret.jsonl")
    ctx = SimpleNamespace(workspace=places.ws, extras={})
    out = train.on_start(ctx, rc, {})
    assert "cannot be used" in out[1]
    assert not any((places.ws / "runs").iterdir()), "no run directory was made"
    with pytest.raises(UserError, match="cannot be used"):
        train_queue.queue_config(places.ws, rc)
    rc = default_run_config()
    rc["model"] = str(places.outside / "model")
    with pytest.raises(UserError, match="cannot be used"):
        train_queue.queue_config(places.ws, rc)


def test_the_command_line_keeps_full_access(places):
    from backend.data.records import load_rows

    assert load_rows(str(places.outside / "secret.jsonl")).rows[0]["prompt"] == "secret question"
