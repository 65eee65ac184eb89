"""`ftstudio serve` on the tiny model, called with the `openai` client: the API the user's own tools speak."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from backend.core.errors import UserError
from backend.inference.serve_process import ServeProcess
from tests.integration.test_merge import make_lora_run

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency (pip install openai)")
pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    run = make_lora_run(tmp_path_factory.mktemp("serve-ws"), tiny_model_dir, "20260101-000000-served")
    proc = ServeProcess()
    info = proc.start(str(run), port=_free_port(), timeout=300)
    yield info
    assert proc.stop()
    assert not proc.running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_run(client, server):
    assert [m.id for m in client.models.list().data] == ["20260101-000000-served"] == [server["model"]]


def test_a_completion_answers_in_choices_message_content(client, server):
    r = client.chat.completions.create(model=server["model"], max_tokens=8, temperature=0,
                                       messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hello"}])
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0


def test_streaming_yields_deltas_that_add_up_to_the_answer(client, server):
    kwargs = dict(model=server["model"], max_tokens=10, temperature=0, messages=[{"role": "user", "content": "Hi"}])
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    deltas = [c.choices[0].delta.content for c in client.chat.completions.create(stream=True, **kwargs)
              if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1 and "".join(deltas) == whole


def test_a_bad_request_is_an_openai_error_with_a_sentence(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server["model"], messages=[{"role": "user", "content": "x"}],
                                       temperature=9)
    assert "temperature must be between" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    req = urllib.request.Request(server["url"] + "/v1/chat/completions", data=b"[1, 2", method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(req, timeout=30)
    assert raw.value.code == 400 and "not valid JSON" in json.loads(raw.value.read())["error"]["message"]


def test_serving_beyond_loopback_without_a_key_is_refused_before_loading(tiny_model_dir):
    r = subprocess.run([sys.executable, "-m", "backend.cli", "serve", str(tiny_model_dir), "--host", "0.0.0.0",
                        "--port", str(_free_port()), "--json"], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "FTSTUDIO_API_KEY": ""})
    assert r.returncode == 2
    assert "needs an API key" in json.loads(r.stdout)["error"]
    with pytest.raises(UserError, match="needs an API key"):
        ServeProcess().start(str(tiny_model_dir), host="0.0.0.0", port=_free_port(), timeout=120)
