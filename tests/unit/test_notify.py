import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from backend.runs.notify import post_webhook, run_end_payload, webhook_problem


def _server(handler_cls):
    srv = HTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_webhook_receives_one_json_post_with_run_state():
    received = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = _server(H)
    try:
        ok, _ = post_webhook(f"http://127.0.0.1:{srv.server_port}/hook",
                             run_end_payload("r1", {"state": "completed", "best_val_loss": 1.5, "duration_s": 3}))
    finally:
        srv.shutdown()
    assert ok
    assert received == [{"run_id": "r1", "state": "completed", "best_val_loss": 1.5, "duration_s": 3, "error": None}]


def test_hanging_webhook_times_out_without_raising():
    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            time.sleep(3)

        def log_message(self, *a):
            pass

    srv = _server(Slow)
    try:
        t = time.time()
        ok, msg = post_webhook(f"http://127.0.0.1:{srv.server_port}/", {"x": 1}, timeout=0.5)
        elapsed = time.time() - t
    finally:
        srv.shutdown()
    assert not ok and "unaffected" in msg
    assert elapsed < 2.5


def test_malformed_and_unreachable_webhooks_are_sentences():
    assert "not an http(s) URL" in webhook_problem("ftp:/nope")
    ok, msg = post_webhook("not a url", {})
    assert not ok and "not an http(s) URL" in msg
    ok, msg = post_webhook("http://127.0.0.1:9/", {}, timeout=0.5)
    assert not ok and "could not be reached" in msg
