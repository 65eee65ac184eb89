"""Issue 24 item 8: every slow handler says what it is doing (Gradio progress text over its outputs)."""
from __future__ import annotations

import gradio as gr
from gradio.helpers import special_args

from studio.context import bind
from studio.progress import shows


class FakeProgress:
    def __init__(self):
        self.calls = []

    def __call__(self, fraction, desc=None, **kw):
        self.calls.append((fraction, desc))


def _slow(prefix, a, b):
    """Adds."""
    return f"{prefix}{a + b}"


def _stream(a):
    yield a
    yield a * 2


def test_the_wrapper_says_its_text_then_runs_the_handler_with_its_own_arguments():
    fn = shows("Adding the numbers…", bind(_slow, "="), [object(), object()])
    progress = FakeProgress()
    assert fn(1, 2, progress) == "=3"
    assert progress.calls == [(0, "Adding the numbers…")]
    assert fn.__name__ == "_slow" and fn.__doc__ == "Adds."  # the API name and its description stay


def test_gradio_finds_the_progress_tracker_after_the_inputs():
    fn = shows("Adding…", bind(_slow, "="), [object(), object()])
    inputs, progress_index, _, _ = special_args(fn, [1, 2])
    assert progress_index == 2 and isinstance(inputs[2], gr.Progress)
    # A handler that takes *args (the Method tab's on_edit) gets one parameter per input all the same.
    many = shows("Checking…", lambda *a: sum(a), [object()] * 5)
    assert special_args(many, [1] * 5)[1] == 5


def test_a_streaming_handler_stays_a_generator():
    import inspect

    fn = shows("Streaming…", _stream, [object()])
    assert inspect.isgeneratorfunction(fn)
    progress = FakeProgress()
    assert list(fn(3, progress)) == [3, 6] and progress.calls == [(0, "Streaming…")]


def _texts_of(demo) -> dict[str, str]:
    """Endpoint name -> the progress text its handler shows, for every event of the app."""
    out = {}
    for d in demo.fns.values():
        text = getattr(d.fn, "shows", None)
        if text:
            out.setdefault(getattr(d.fn, "__name__", "?"), text)
    return out


def test_the_slow_steps_of_the_app_say_what_they_do(tmp_path):
    from studio.app import build_app

    texts = _texts_of(build_app(tmp_path))
    # method change -> estimate, Apply preset, dataset load, model load (inspect, chat), eval, start.
    expected = {"on_state": "Estimating the memory", "on_preset": "Applying the preset", "from_upload": "Reading the file",
                "from_sample": "Reading the file", "on_inspect": "Reading the model", "on_edit": "Checking the settings",
                "on_load": "Loading the model for chat", "on_evaluate": "Starting the evaluation",
                "on_start": "starting the run", "restore": "Loading the dataset"}
    for name, words in expected.items():
        assert name in texts and words in texts[name], (name, texts.get(name))
