"""Saying what a slow handler is doing while it runs (Gradio's progress text over its outputs).

`shows(text, fn, inputs)` wraps an event handler so that Gradio shows `text` over the event's
outputs until the handler returns; the wrapper is what goes to `.click(...)` and the like. Gradio
finds a gr.Progress only as a positional parameter with that default, after the inputs, so the
wrapper declares exactly one parameter per input and the progress tracker after them: the handler
itself keeps its signature and its unit tests call it without Gradio.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence

import gradio as gr


def _input_count(inputs: Optional[Sequence[Any]]) -> int:
    if inputs is None:
        return 0
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    return 1  # one component, or a set of them (then Gradio passes one dict)


def shows(text: str, fn: Callable[..., Any], inputs: Optional[Sequence[Any]] = None) -> Callable[..., Any]:
    """`fn` as an event handler that shows `text` (a sentence saying what it does) while it runs.

    `inputs` are the event's inputs, as given to the listener: they fix how many arguments Gradio
    passes before the progress tracker."""
    n = _input_count(inputs)
    params = [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(n)]
    params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))

    def split(args: tuple) -> tuple:
        # Gradio passes the tracker after the n inputs; a direct call (a test, another handler) may not.
        if len(args) > n and callable(args[n]):
            args[n](0, desc=text)  # 0, not None: Gradio shows no text at all for None
            return args[:n]
        return args

    if inspect.isgeneratorfunction(fn):
        def wrapper(*args: Any):
            yield from fn(*split(args))
    else:
        def wrapper(*args: Any):
            return fn(*split(args))

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(fn, "__name__", "handler")  # Gradio names the API endpoint after it
    wrapper.__doc__ = fn.__doc__
    wrapper.shows = text  # type: ignore[attr-defined]  # what it says, for the tests
    wrapper.wrapped = fn  # type: ignore[attr-defined]
    return wrapper


def listen(trigger: Callable[..., Any], text: str, fn: Callable[..., Any], inputs: Any = None, outputs: Any = None,
           **kwargs: Any) -> Any:
    """`trigger(shows(text, fn, inputs), inputs, outputs, **kwargs)`: one listener with its sentence."""
    return trigger(shows(text, fn, inputs), inputs, outputs, **kwargs)

