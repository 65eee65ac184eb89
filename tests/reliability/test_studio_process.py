"""The studio as a real process: killed and restarted mid-run it finds the run again; it binds to
loopback; --auth keeps the API closed; its file route serves the workspace and nothing else."""
from __future__ import annotations

import json
import urllib.parse

import pytest

from backend.runs import runner
from backend.runs import rundir
from backend.core.config import RunConfig
from tests.reliability.conftest import http_get, wait_until

pytestmark = pytest.mark.timeout(240)


def _fetch_file(studio, path) -> tuple[int, bytes]:
    return http_get(f"{studio.url}/gradio_api/file={urllib.parse.quote(str(path))}")


def test_ui_killed_and_restarted_mid_run_finds_the_run_again(tmp_path, studio_factory, fake_trainer):
    ws = tmp_path / "ws"
    first = studio_factory(ws).start()
    assert "http://127.0.0.1:" in first.log.read_text(), "the default bind is loopback"
    run_dir = runner.start_run(ws, RunConfig(name="survives the ui"))
    wait_until(lambda: rundir.read_status(run_dir)["state"] == "running", 30)
    pid = rundir.read_status(run_dir)["pid"]

    first.kill()
    assert rundir.pid_alive(pid), "the training process does not depend on the UI process"

    second = studio_factory(ws).start()
    try:
        assert http_get(second.url + "/")[0] == 200, "the page answers after the restart"
        active = runner.find_active_runs(ws)
        assert [a["id"] for a in active] == [run_dir.name] and active[0]["state"] == "running"
        # The same live studio serves run files from the workspace and nothing outside it.
        code, body = _fetch_file(second, run_dir / "config.yaml")
        assert code == 200 and b"survives the ui" in body
        outside = tmp_path / "secret.txt"
        outside.write_text("outside the workspace")
        for target in ("/etc/passwd", outside, f"{ws}/../secret.txt", f"{ws}/runs/../../secret.txt"):
            code, body = _fetch_file(second, target)
            assert code in (403, 404) and b"root:" not in body and b"outside the workspace" not in body, \
                (target, code)
    finally:
        assert runner.stop_run(run_dir, timeout=20)["state"] == "stopped"


def test_auth_refuses_an_unauthenticated_api_call(tmp_path, studio_factory):
    studio = studio_factory(tmp_path / "ws", auth="alice:s3cret").start()
    code, body = http_get(studio.url + "/config")
    assert code == 401, (code, body[:200])
    code, body = http_get(studio.url + "/gradio_api/info")
    assert code in (401, 403), (code, body[:200])
    code, body = http_get(studio.url + "/gradio_api/file=/etc/passwd")
    assert code in (401, 403, 404) and b"root:" not in body
    # With the password the API opens: the refusal above is the login, not a broken server.
    import urllib.request
    import http.cookiejar
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    data = urllib.parse.urlencode({"username": "alice", "password": "s3cret"}).encode()
    opener.open(studio.url + "/login", data=data, timeout=10)
    with opener.open(studio.url + "/config", timeout=10) as r:
        assert r.status == 200 and "components" in json.loads(r.read())
