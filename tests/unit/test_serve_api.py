"""The OpenAI-compatible server's HTTP side, with a stand-in for the chat worker (no model, milliseconds)."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from backend.core.errors import UserError
from backend.inference.serve import StopScanner, build_app, check_bind, served_model_id


class FakeWorker:
    """Streams fixed chunks; records what it was asked and whether the stream was closed early."""

    def __init__(self, chunks=("Hel", "lo ", "STOP", " world")):
        self.chunks = list(chunks)
        self.last_done = None
        self.calls = []
        self.closed_early = False

    def stream(self, messages, settings=None, use_adapter=True):
        self.calls.append((messages, settings))
        finished = False
        try:
            for c in self.chunks:
                yield c
            self.last_done = {"tokens": len(self.chunks), "prompt_tokens": 7, "stopped": False}
            finished = True
        finally:
            self.closed_early = not finished


def _client(worker=None, key=None):
    worker = worker or FakeWorker()
    return TestClient(build_app(worker, "tiny-run", api_key=key)), worker


def _events(text: str) -> list:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def test_models_lists_the_served_model():
    client, _ = _client()
    r = client.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["tiny-run"] and r.json()["object"] == "list"


def test_a_completion_joins_the_chunks_and_passes_the_settings():
    client, worker = _client()
    r = client.post("/v1/chat/completions", json={
        "model": "tiny-run", "messages": [{"role": "developer", "content": "Be brief."},
                                          {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello STOP world"}
    assert body["choices"][0]["finish_reason"] == "length"  # 4 tokens of max 4
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    messages, settings = worker.calls[0]
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert settings["max_new_tokens"] == 4 and settings["temperature"] == 0.0


def test_a_stop_string_cuts_the_reply_and_stops_the_worker():
    client, worker = _client()
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stop": "STOP"})
    assert r.json()["choices"][0]["message"]["content"] == "Hello "
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert worker.closed_early


def test_streaming_sends_role_then_deltas_then_finish_and_done():
    client, _ = _client()
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
    assert "".join(d for d in deltas if d) == "Hello STOP world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("body, status, words", [
    ({"messages": []}, 400, "non-empty list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "no tool or function calls"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "must be a number"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, 400, "temperature must be between"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "one answer per request"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max new tokens must be between"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "not served here"),
])
def test_bad_requests_get_openai_error_json_with_a_sentence(body, status, words):
    client, worker = _client()
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert words in err["message"] and err["message"].endswith(".") and "type" in err
    assert worker.calls == []


def test_a_body_that_is_not_json_and_an_unknown_path_are_sentences_too():
    client, _ = _client()
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.get("/v1/embeddings")
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]


def test_with_a_key_every_request_must_carry_it_as_a_bearer_token():
    client, _ = _client(key="s3cret")
    assert client.get("/v1/models").status_code == 401
    r = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "Bearer" in r.json()["error"]["message"]
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_an_address_beyond_loopback_needs_a_key():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "k")
    with pytest.raises(UserError, match="needs an API key"):
        check_bind("0.0.0.0", None)


def test_a_stop_string_split_across_chunks_is_never_streamed_in_part():
    s = StopScanner(["</end>"])
    out = [s.feed(c) for c in ("abc</", "en", "d>tail")]
    assert "".join(out) == "abc" and s.hit
    s = StopScanner(["</end>"])
    assert s.feed("a</") == "a" and s.feed("b") == "</b" and not s.hit


def test_the_served_name_is_the_run_folder_or_the_model(tmp_path):
    run = tmp_path / "20260101-my-run"
    (run / "adapter").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    assert served_model_id(None, str(run)) == "20260101-my-run"
    assert served_model_id(None, str(run / "adapter")) == "20260101-my-run"
    assert served_model_id(None, str(run / "checkpoints" / "checkpoint-4")) == "20260101-my-run-checkpoint-4"
    assert served_model_id("smollm2-135m-instruct", None) == "smollm2-135m-instruct"
