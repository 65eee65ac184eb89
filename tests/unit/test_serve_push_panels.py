"""The Chat tab's Serve panel and the Merge tab's Push panel: their handlers, without a browser."""
from __future__ import annotations

from backend.inference.serve import usage_examples
from studio.tabs.chat_serve import NOT_RUNNING, on_start, on_stop, serving_markdown
from studio.tabs.merge_push import stream_push
from tests.unit.test_model_card import make_run


class NeverStarted:
    """A ServeProcess that fails the test if the handler starts a process."""

    def start(self, *a, **k):
        raise AssertionError("no process should start")

    def stop(self):
        return False


def test_serve_refuses_no_model_and_an_open_address_without_a_key_before_starting():
    assert "Pick a model" in on_start(NeverStarted(), "", "127.0.0.1", 8000, "")
    msg = on_start(NeverStarted(), "smollm2-135m-instruct", "0.0.0.0", 8000, "")
    assert "ft-error" in msg and "needs an API key" in msg
    assert on_stop(NeverStarted()) == NOT_RUNNING


def test_the_serving_text_shows_the_url_and_runnable_examples():
    info = {"url": "http://127.0.0.1:8011", "model": "my-run", "api_key_required": True,
            "examples": usage_examples("http://127.0.0.1:8011", "my-run", True)}
    md = serving_markdown(info)
    assert "http://127.0.0.1:8011/v1" in md and "Bearer" in md
    assert "curl http://127.0.0.1:8011/v1/chat/completions" in md
    assert 'OpenAI(base_url="http://127.0.0.1:8011/v1"' in md and '"model": "my-run"' in md


def test_push_panel_says_a_bad_repo_name_at_once_and_runs_the_cli_for_the_rest(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    assert "Pick a run" in list(stream_push("", "alice/x", "adapter", "", False))[-1]
    assert "not a hub repository name" in list(stream_push(str(run), "no owner", "adapter", "", False))[-1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = list(stream_push(str(run), "alice/x", "adapter", "", False))
    assert lines[0] == "Starting the upload…" and "ft-error" in lines[-1] and "offline" in lines[-1]
