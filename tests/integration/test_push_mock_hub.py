"""`ftstudio push`'s real upload path (huggingface_hub's HfApi) against a local stand-in for the hub's HTTP API."""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backend.export.push import push
from backend.runs.model_card import parse_front_matter
from tests.unit.test_model_card import make_run


class _Hub(BaseHTTPRequestHandler):
    """The four endpoints create_repo and upload_folder call; every request is kept in server.seen."""

    def _reply(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.seen.append((self.path, self.headers.get("authorization"), body))
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            return self._reply({"url": f"{base}/alice/support-bot", "name": "alice/support-bot"})
        if self.path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if "/commit/" in self.path:
            return self._reply({"commitUrl": f"{base}/alice/support-bot/commit/{'1' * 40}", "commitOid": "1" * 40})
        self._reply({"error": "not here"}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub.constants

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest set it before the import
    monkeypatch.setenv("HF_TOKEN", "hf_local_test")
    yield srv
    srv.shutdown()


def test_push_creates_the_repo_and_commits_the_adapter_with_its_card(tmp_path, hub):
    run = make_run(tmp_path)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    out = push(run, "alice/support-bot")
    paths = [p for p, _, _ in hub.seen]
    assert paths[0] == "/api/repos/create" and paths[-1] == "/api/models/alice/support-bot/commit/main"
    assert {auth for _, auth, _ in hub.seen} == {"Bearer hf_local_test"}
    lines = [json.loads(l) for l in hub.seen[-1][2].decode().splitlines()]
    files = {l["value"]["path"]: base64.b64decode(l["value"]["content"]) for l in lines if l["key"] == "file"}
    assert files["adapter_model.safetensors"] == b"weights" and "adapter_config.json" in files
    card = files["README.md"].decode()
    assert parse_front_matter(card)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "| final train loss | 1.9 |" in card
    assert out["commit"].endswith("1" * 40)
