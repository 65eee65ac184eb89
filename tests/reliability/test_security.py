"""Access and containment: loopback by default, --auth parsing, names that cannot escape the workspace,
safetensors-only model loads, trust_remote_code off unless asked for (and then a warning)."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest

from backend.core import models
from backend.runs import rundir
from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.core.security import is_within, safe_filename, safe_join

HOSTILE_NAMES = ["../../etc/passwd", "..", ".", "/etc/passwd", "..\\..\\windows\\system32", "a/../../b",
                 "~/.ssh/id_rsa", "name\x00.jsonl", "café données 🙂.jsonl", "  spaced  name .csv", "-rf",
                 "x" * 500 + ".jsonl", ".hidden", "CON", ""]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_filename_is_one_plain_component(name, tmp_path):
    safe = safe_filename(name)
    assert safe and "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert safe not in (".", "..") and not safe.startswith(".")
    assert len(safe) <= 100 and is_within(tmp_path, tmp_path / safe)


def test_safe_filename_keeps_the_extension_of_long_names():
    assert safe_filename("x" * 500 + ".jsonl").endswith(".jsonl")


def test_safe_join_refuses_escapes_and_allows_plain_names(tmp_path):
    assert safe_join(tmp_path, "runs", "a.json") == tmp_path / "runs" / "a.json"
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(UserError, match="outside"):
            safe_join(tmp_path, bad)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(UserError, match="outside"):
        safe_join(tmp_path, "link", "file")
    assert not is_within(tmp_path, tmp_path / "link" / "file")


@pytest.mark.parametrize("name", HOSTILE_NAMES[:8] + ["café données 🙂", ""])
def test_run_names_cannot_escape_the_runs_folder(tmp_path, name):
    ws = tmp_path / "ws"
    cfg = RunConfig(name=name[:80] or None)
    run_dir = rundir.create_run(ws, cfg)
    assert run_dir.parent == rundir.runs_root(ws) and is_within(rundir.runs_root(ws), run_dir)
    assert all(c.isalnum() or c == "-" for c in run_dir.name) and run_dir.name.isascii()
    assert rundir.read_status(run_dir)["name"] == (name[:80] or None), "the label is kept as text, not as a path"
    assert sorted(p.name for p in ws.rglob("*") if p.is_dir()) == sorted(["runs", run_dir.name])


@pytest.mark.parametrize("upload_name", ["evil name été.jsonl", "..jsonl", "...", "a;rm -rf ~.csv",
                                         "x" * 200 + ".jsonl", "données.jsonl"])
def test_uploads_are_copied_inside_the_workspace_uploads_folder(tmp_path, upload_name):
    from studio.tabs.dataset import keep_upload

    gradio_tmp = tmp_path / "gradio" / "deep" / ".."
    (tmp_path / "gradio" / "deep").mkdir(parents=True)
    src = tmp_path / "gradio" / upload_name
    src.write_text('{"text": "hi"}\n')
    ws = tmp_path / "ws"
    kept = Path(keep_upload(ws, str(gradio_tmp / upload_name)))
    assert kept.parent == ws / "uploads" and is_within(ws / "uploads", kept)
    assert kept.read_text() == '{"text": "hi"}\n'
    assert not kept.name.startswith(".") and "/" not in kept.name and kept.suffix == Path(upload_name).suffix


def test_preset_names_cannot_escape_the_presets_folder(tmp_path):
    from backend.core.presets import save_preset

    for name in ("../../escape", "/etc/cron.d/x", "a/../../b"):
        path = save_preset(name, {"train": {"epochs": 1}}, user=tmp_path / "presets")
        assert path.parent == (tmp_path / "presets").resolve()
    assert not list(tmp_path.glob("*.yaml")) and not (tmp_path.parent / "escape.yaml").exists()


def test_default_bind_is_loopback_and_auth_is_off_until_asked():
    from backend.commands.ui import add_arguments
    from studio.launcher import is_loopback, parse_auth

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert args.host == "127.0.0.1" and is_loopback(args.host) and args.auth is None
    assert parse_auth(parser.parse_args(["--auth", "alice:s3cret"]).auth) == ("alice", "s3cret")


def test_launcher_passes_the_workspace_as_the_only_allowed_path(tmp_path, monkeypatch, launch_kwargs):
    from studio import launcher

    seen = launch_kwargs
    monkeypatch.delenv("FTSTUDIO_WORKSPACE", raising=False)
    args = argparse.Namespace(host="127.0.0.1", port=0, workspace=str(tmp_path / "ws"), auth=None)
    launcher.launch_from_args(args)
    assert seen["allowed_paths"] == [str((tmp_path / "ws").resolve())]
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and seen["auth"] is None
    os.environ.pop("FTSTUDIO_WORKSPACE", None)


def test_trust_remote_code_is_off_by_default():
    assert RunConfig().trust_remote_code is False


def test_model_loads_pass_trust_remote_code_through_read_only_safetensors_and_warn(tmp_path, monkeypatch, caplog):
    import transformers

    calls = []

    def recorder(kind):
        def from_pretrained(source, **kw):
            calls.append((kind, kw))
            raise OSError("stop here")
        return from_pretrained

    for kind, cls in (("config", transformers.AutoConfig), ("tokenizer", transformers.AutoTokenizer),
                      ("model", transformers.AutoModelForCausalLM)):
        monkeypatch.setattr(cls, "from_pretrained", recorder(kind))
    model_dir = tmp_path / "some-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    monkeypatch.setattr(models, "_WARNED_REMOTE_CODE", set())
    for trust in (False, True):
        with caplog.at_level(logging.WARNING, logger="ftstudio.models"):
            for load in (models.load_model_config, models.load_tokenizer, models.load_causal_lm):
                with pytest.raises(models.ModelError):
                    load(str(model_dir), trust_remote_code=trust)
        warned = [r for r in caplog.records if "trust_remote_code is on" in r.getMessage()]
        assert bool(warned) is trust, "a warning exactly when it is on"
        assert str(model_dir) in (warned[0].getMessage() if warned else str(model_dir))
    assert [kw["trust_remote_code"] for _, kw in calls] == [False] * 3 + [True] * 3
    assert all(kw["use_safetensors"] is True for kind, kw in calls if kind == "model")


def test_a_model_with_only_pickled_weights_is_refused_with_a_sentence(tmp_path, tiny_model_dir):
    import shutil

    pickled = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, pickled)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(models.ModelError, match="safetensors"):
        models.load_causal_lm(str(pickled))


def test_an_adapter_with_only_pickled_weights_is_refused_before_peft_falls_back_to_it(tmp_path):
    from backend.export.merge import locate_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "x", "peft_type": "LORA"}')
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="pickled weights"):
        locate_adapter(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    assert locate_adapter(adapter).adapter_dir == adapter


def test_two_uploads_with_the_same_name_in_the_same_second_are_both_kept(tmp_path):
    from studio.tabs.dataset import keep_upload

    ws = tmp_path / "ws"
    kept = []
    for i in range(3):
        src = tmp_path / f"g{i}" / "data.jsonl"
        src.parent.mkdir()
        src.write_text(f'{{"text": "version {i}"}}\n')
        kept.append(Path(keep_upload(ws, str(src))))
    assert len(set(kept)) == 3
    assert [p.read_text() for p in kept] == [f'{{"text": "version {i}"}}\n' for i in range(3)]
