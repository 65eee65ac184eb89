"""The end-of-run webhook: a real tiny run POSTs its final state once; a hanging hook never holds the run."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from backend.runs import runner
from backend.runs import rundir
from backend.core.config import RunConfig
from backend.training.run import notify_end
from tests.integration.test_train_runner import tiny_config, wait_until

pytestmark = pytest.mark.timeout(300)


def hook_server(delay: float = 0.0):
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            time.sleep(delay)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, received


def test_a_finished_run_posts_its_state_to_the_webhook(tmp_path, tiny_model_dir):
    srv, received = hook_server()
    try:
        cfg = tiny_config(tiny_model_dir, tmp_path, with_validation=False, patience=None, max_steps=3)
        cfg = cfg.model_copy(update={"notify": cfg.notify.model_copy(
            update={"webhook": f"http://127.0.0.1:{srv.server_port}/done"}), "report_to": []})
        run_dir = runner.start_run(tmp_path / "ws", cfg)
        status = runner.wait_for_run(run_dir, timeout=240)
        assert status["state"] == "completed", status
        wait_until(lambda: received, timeout=30)
    finally:
        srv.shutdown()
    assert len(received) == 1
    body = received[0]
    assert body["run_id"] == run_dir.name and body["state"] == "completed"
    assert isinstance(body["duration_s"], (int, float)) and body["duration_s"] >= 0
    assert "best_val_loss" in body
    wait_until(lambda: "Webhook delivered" in (run_dir / rundir.LOG_FILE).read_text(), timeout=30)


def test_a_hanging_webhook_is_given_up_on_and_logged(tmp_path, capsys):
    srv, received = hook_server(delay=5.0)
    try:
        cfg = RunConfig.model_validate({"notify": {"webhook": f"http://127.0.0.1:{srv.server_port}/slow"}})
        run_dir = rundir.create_run(tmp_path / "ws", cfg)
        rundir.write_status(run_dir, state="failed", error="it broke", started=rundir.now_iso(), ended=rundir.now_iso())
        t0 = time.monotonic()
        notify_end(run_dir, wait_s=1.0)
        took = time.monotonic() - t0
    finally:
        srv.shutdown()
    assert took < 3.0
    assert received and received[0]["state"] == "failed" and received[0]["error"] == "it broke"
    assert "Webhook not delivered" in capsys.readouterr().out
    assert rundir.read_status(run_dir)["state"] == "failed"


def test_an_unreachable_webhook_is_logged_as_a_sentence(tmp_path, capsys):
    cfg = RunConfig.model_validate({"notify": {"webhook": "http://127.0.0.1:9/nothing-listens"}})
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    rundir.write_status(run_dir, state="completed")
    notify_end(run_dir, wait_s=4.0)
    out = capsys.readouterr().out
    assert "Webhook not delivered" in out and "could not be reached" in out
