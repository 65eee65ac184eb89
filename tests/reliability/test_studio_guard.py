"""The live studio refuses what another web site, or a password guesser, sends it: a cross-site POST
(forged from a page open in the user's browser) gets 403 before Gradio sees it; wrong passwords are
slowed down; Gradio's login-free POST routes need the login too.

On the main branch before this change, every one of these went through: the cross-site POST reached
Gradio's queue, and 200 wrong passwords took 2.7 s."""
from __future__ import annotations

import asyncio
import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(480)

JOIN = {"data": [], "fn_index": 0, "session_hash": "abcdefgh12", "event_data": None, "trigger_id": None}


def _post(url: str, body: bytes, headers: dict, opener=None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with (opener.open if opener else urllib.request.urlopen)(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _login(url: str, password: str, opener=None) -> int:
    data = urllib.parse.urlencode({"username": "alice", "password": password}).encode()
    return _post(url + "/login", data, {"Content-Type": "application/x-www-form-urlencoded"}, opener)[0]


def test_cross_site_posts_wrong_passwords_and_login_free_routes(tmp_path, studio_factory, bundled_dir, monkeypatch):
    # The converted bundled model from the test cache: the studio then starts without converting it in a
    # thread, which on a busy machine can starve the server past Gradio's start-up probe.
    monkeypatch.setenv("FTSTUDIO_MODEL_CACHE", str(bundled_dir.parent))
    studio = studio_factory(tmp_path / "ws", auth="alice:s3cret").start(timeout=300)  # a busy machine starts slowly
    join = studio.url + "/gradio_api/queue/join"
    body = json.dumps(JOIN).encode()
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example", "http://localhost:1"):
        code, answer = _post(join, body, {"Content-Type": "application/json", "Origin": origin})
        assert code == 403 and b"another web site" in answer, (origin, code, answer[:200])
    code, _ = _post(studio.url + "/gradio_api/reset", b"{}", {"Content-Type": "application/json",
                                                               "Sec-Fetch-Site": "cross-site"})
    assert code == 403
    # The studio's own page, and clients that are not browsers, pass the check (and meet the login).
    for headers in ({"Origin": studio.url}, {}):
        code, answer = _post(join, body, {"Content-Type": "application/json", **headers})
        assert code == 401, (headers, code, answer[:200])
    code, _ = _post(studio.url + "/gradio_api/reset", b'{"session_hash": "x", "event_id": "y"}',
                    {"Content-Type": "application/json"})
    assert code == 401, "Gradio's login-free routes need the login too"

    # Wrong passwords: four at full speed, then 0.5, 1, 2, 4 s waits before the next four (one at a time).
    t0 = time.monotonic()
    codes = [_login(studio.url, f"guess{i}") for i in range(8)]
    elapsed = time.monotonic() - t0
    assert codes == [400] * 8 and elapsed >= 7.0, f"8 wrong passwords took {elapsed:.1f} s"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    assert _login(studio.url, "s3cret", opener) == 200, "the right password still opens, after the wait"
    code, _ = _post(studio.url + "/gradio_api/reset", b'{"session_hash": "x", "event_id": "y"}',
                    {"Content-Type": "application/json"}, opener)
    assert code != 401
    assert _login(studio.url, "wrong again") == 400


def _run(coro):
    """asyncio.run in a thread of its own: an earlier test in the same process (the browser suite's sync
    Playwright) can leave an event loop running in the main thread, where asyncio.run refuses to start."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_two_hundred_wrong_passwords_take_half_an_hour(monkeypatch):
    from studio import login_throttle

    now = [0.0]
    waited = []

    async def fake_sleep(seconds):
        waited.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(login_throttle.asyncio, "sleep", fake_sleep)
    check = login_throttle.login_checker("alice", "s3cret", clock=lambda: now[0])

    async def guess_all():
        return await asyncio.gather(*(check("alice", f"guess{i}") for i in range(200)))

    assert not any(_run(guess_all()))
    assert sum(waited) >= 1900, f"200 wrong passwords waited {sum(waited):.0f} s"
    assert _run(check("alice", "s3cret")) and check.throttle.failures == 0
