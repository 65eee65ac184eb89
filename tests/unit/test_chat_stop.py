"""Chat's Stop ends with a status that says the reply stopped, never a lasting "Stopping…"."""
import threading
import time

from studio.tabs import chat


class _FakeClient:
    def __init__(self):
        self.stops = 0

    def stop(self):
        self.stops += 1


def _session():
    s = chat.ChatSession.__new__(chat.ChatSession)  # no worker process
    s.client, s.stop_requested, s.busy, s.loaded = _FakeClient(), threading.Event(), threading.Event(), True
    return s


def test_stop_says_stopped_once_the_reply_has_ended():
    s = _session()
    s.busy.set()
    threading.Timer(0.3, s.busy.clear).start()  # the reply ends shortly after the stop request
    said = list(chat.on_stop(s, wait_s=5))
    assert said == ["Stopping…", chat.TEXT["stopped"]]
    assert s.client.stops == 1 and s.stop_requested.is_set()


def test_stop_with_nothing_generating_says_so_and_a_slow_stop_says_it_is_still_stopping():
    s = _session()
    assert list(chat.on_stop(s)) == ["Nothing is being generated."]
    s.busy.set()
    started = time.monotonic()
    assert list(chat.on_stop(s, wait_s=0.3))[-1] == chat.TEXT["still_stopping"]
    assert time.monotonic() - started < 3
