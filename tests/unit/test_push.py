"""`ftstudio push`: sentences before any upload, and the upload itself against a stand-in for the hub API."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.core.errors import UserError
from backend.export.push import check_repo_id, push
from backend.runs.model_card import parse_front_matter
from tests.unit.test_model_card import make_run


class FakeHub:
    """Records what HfApi would have been asked; keeps a copy of each uploaded folder's files."""

    def __init__(self, fail: Exception | None = None):
        self.fail = fail
        self.repos: list[tuple[str, bool]] = []
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, private=False, exist_ok=False, token=None):
        if self.fail:
            raise self.fail
        self.repos.append((repo_id, private))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, repo_id, folder_path, token=None, commit_message=None, ignore_patterns=None):
        files = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        self.uploads.append({"repo": repo_id, "files": files, "message": commit_message, "token": token,
                             "ignore": ignore_patterns})
        return type("Commit", (), {"commit_url": f"https://hub.example/{repo_id}/commit/abc"})()


@pytest.fixture()
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")


def test_the_adapter_goes_up_with_a_card_holding_the_runs_figures(tmp_path, online):
    run = make_run(tmp_path)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    hub = FakeHub()
    out = push(run, "alice/support-bot", api=hub, private=True)
    assert hub.repos == [("alice/support-bot", True)]
    up = hub.uploads[0]
    assert up["token"] == "hf_test_token" and set(up["files"]) >= {"adapter_config.json", "adapter_model.safetensors",
                                                                      "README.md"}
    card = up["files"]["README.md"].decode()
    assert parse_front_matter(card)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "| final train loss | 1.9 |" in card and "| tuned | 2 | 7.39 |" in card
    assert 'from_pretrained("alice/support-bot")' in card
    assert out["repo"] == "alice/support-bot" and out["commit"].endswith("/commit/abc") and "README.md" in out["files"]


def test_a_gguf_goes_up_with_its_modelfile_and_a_gguf_card(tmp_path, online):
    run = make_run(tmp_path)
    exports = run.parent.parent / "exports"
    exports.mkdir()
    (exports / f"{run.name}-q8_0.gguf").write_bytes(b"GGUF")
    (exports / f"{run.name}-q8_0.Modelfile").write_text("FROM ./x.gguf\n")
    hub = FakeHub()
    push(run, "alice/support-bot-gguf", what="gguf", api=hub)
    files = hub.uploads[0]["files"]
    assert set(files) == {f"{run.name}-q8_0.gguf", "Modelfile", "README.md"}
    assert parse_front_matter(files["README.md"].decode())["library_name"] == "gguf"


@pytest.mark.parametrize("repo", ["no-owner", "alice/has space", "alice/bad--name", "../alice/x", "a/b/c", ""])
def test_a_repo_name_the_hub_would_refuse_is_a_sentence(repo):
    with pytest.raises(UserError, match="not a hub repository name"):
        check_repo_id(repo)


def test_offline_no_token_and_nothing_to_push_are_sentences_before_any_upload(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    hub = FakeHub()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="set to work offline"):
        push(run, "alice/x", api=hub)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file from a login either
    monkeypatch.setattr("backend.export.push.hub_token", lambda token=None: token)
    with pytest.raises(UserError, match="No hub token is set"):
        push(run, "alice/x", api=hub)
    with pytest.raises(UserError, match="has no merged model yet"):
        push(run, "alice/x", what="merged", api=hub, token="t")
    with pytest.raises(UserError, match="needs one file, but none was found"):
        push(run, "alice/x", what="gguf", api=hub, token="t")
    assert hub.repos == [] and hub.uploads == []


def test_an_unreachable_hub_and_a_refused_token_are_sentences(tmp_path, online):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    run = make_run(tmp_path)
    with pytest.raises(UserError, match="could not be reached"):
        push(run, "alice/x", api=FakeHub(fail=httpx.ConnectError("no route")))
    refused = HfHubHTTPError("401 Unauthorized", response=httpx.Response(401, request=httpx.Request("POST", "http://h")))
    with pytest.raises(UserError, match="refused the token"):
        push(run, "alice/x", api=FakeHub(fail=refused))


def test_the_cli_exits_2_with_the_offline_sentence(tmp_path):
    run = make_run(tmp_path)
    r = subprocess.run([sys.executable, "-m", "backend.cli", "push", str(run), "--repo", "alice/x", "--json"],
                       capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                          "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "offline" in json.loads(r.stdout)["error"]
