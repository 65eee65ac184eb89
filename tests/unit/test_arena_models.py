"""The arena's models: picks resolved (and refused) one by one, one worker per base, every answer streamed,
a failing model's sentence in its own column while the others answer, and Stop ending the round."""
from __future__ import annotations

import json
import threading
import time

import pytest

from backend.core.errors import UserError
from backend.inference import arena_models
from backend.inference.arena_models import DONE, FAILED, STOPPED, Arena, Contender, plan


class FakeClient:
    """ChatClient's surface: load, stream (a few chunks), stop, shutdown; records what it was asked."""
    made: list["FakeClient"] = []

    def __init__(self, chunks=("Hel", "lo", "!"), fail_load=None, gate=None, delay=0.0):
        self.chunks, self.fail_load, self.gate, self.delay = chunks, fail_load or set(), gate, delay
        self.loads, self.stopped, self.closed = [], threading.Event(), False
        self.last_done = None
        FakeClient.made.append(self)

    def load(self, model, adapter, quantize=False):
        self.loads.append((model, adapter))
        if (model or adapter) in self.fail_load:
            raise UserError(f"{model or adapter} does not fit.")
        return {}

    def stream(self, messages, settings=None, use_adapter=True):
        who = self.loads[-1][1] or self.loads[-1][0]
        for i, chunk in enumerate(self.chunks):
            if self.stopped.is_set():
                break
            if self.gate is not None and i == 1:
                self.gate.wait(5)
            time.sleep(self.delay)  # a model's pace: the arena shows each chunk as it comes
            yield f"{chunk}"
        self.last_done = {"stopped": self.stopped.is_set(), "tokens": len(self.chunks), "who": who}

    def stop(self):
        self.stopped.set()

    def shutdown(self):
        self.closed = True


def _model_dir(root, name):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return d


def _adapter_dir(root, name, base):
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(base)}))
    (d / "adapter_model.safetensors").write_bytes(b"")
    return d


def test_plan_groups_an_adapter_with_its_base_and_keeps_a_bad_pick_as_its_own_sentence(tmp_path):
    base, other = _model_dir(tmp_path, "base"), _model_dir(tmp_path, "other")
    adapter = _adapter_dir(tmp_path, "adapter", base)
    found = plan(None, [str(base), str(adapter), "", None, str(tmp_path / "missing")][:4] + [str(other)])
    assert [c.choice for c in found] == [str(base), str(adapter), str(other)]
    assert found[0].base == found[1].base == str(base.resolve())
    assert found[1].adapter == str(adapter) and found[1].model is None
    assert found[2].base == str(other.resolve()) and not any(c.error for c in found)

    bad = plan(None, [str(base), str(tmp_path / "missing")])
    assert bad[0].error is None and "neither the bundled model" in bad[1].error


def test_plan_refuses_too_few_too_many_and_the_same_model_twice(tmp_path):
    with pytest.raises(UserError, match="at least 2"):
        plan(None, ["a", ""])
    with pytest.raises(UserError, match="at most 4"):
        plan(None, ["a", "b", "c", "d", "e"])
    with pytest.raises(UserError, match="picked twice"):
        plan(None, ["a", "a"])


def test_plan_in_the_studio_applies_its_path_policy_per_pick(tmp_path):
    ws = tmp_path / "ws"
    inside = _model_dir(ws, "models/mine")
    outside = _model_dir(tmp_path, "outside")
    found = plan(ws, [str(inside), str(outside)])
    assert found[0].error is None
    assert "cannot be used" in found[1].error


def test_one_worker_per_base_every_answer_streams_and_a_failing_load_stays_in_its_column():
    FakeClient.made.clear()
    arena = Arena(client_factory=lambda: FakeClient(fail_load={"broken-adapter"}, delay=0.2))
    picks = [Contender("base", "b", model="B", base="B"), Contender("tuned", "t", adapter="good-adapter", base="B"),
             Contender("broken", "x", adapter="broken-adapter", base="B"), Contender("other", "o", model="O", base="O")]
    snapshots = [[(a.state, a.text) for a in s] for s in arena.ask(picks, [{"role": "user", "content": "hi"}])]
    assert arena.workers == 2 and len(FakeClient.made) == 2  # B's three picks share one worker
    final = snapshots[-1]
    assert final[0] == (DONE, "Hello!") and final[1] == (DONE, "Hello!") and final[3] == (DONE, "Hello!")
    assert final[2][0] == FAILED
    texts_of_base = {s[0][1] for s in snapshots}
    assert len(texts_of_base) >= 3, f"the first answer did not stream: {texts_of_base}"
    shared = next(c for c in FakeClient.made if ("B", None) in c.loads)
    assert shared.loads == [("B", None), (None, "good-adapter"), (None, "broken-adapter")]


def test_a_pick_that_cannot_be_resolved_answers_nothing_and_its_sentence_is_kept():
    arena = Arena(client_factory=FakeClient)
    picks = [Contender("a", "a", model="A", base="A"), Contender("gone", "g", error="gone is missing.")]
    final = list(arena.ask(picks, []))[-1]
    assert final[0].state == DONE and final[0].usable
    assert final[1].state == FAILED and final[1].error == "gone is missing." and not final[1].usable


def test_a_new_round_ends_the_workers_of_bases_it_no_longer_uses():
    FakeClient.made.clear()
    arena = Arena(client_factory=FakeClient)
    list(arena.ask([Contender("a", "a", model="A", base="A"), Contender("b", "b", model="B", base="B")], []))
    first = {tuple(c.loads[0]): c for c in FakeClient.made}
    list(arena.ask([Contender("a", "a", model="A", base="A"), Contender("c", "c", model="C", base="C")], []))
    assert first[("B", None)].closed and not first[("A", None)].closed
    arena.shutdown()
    assert all(c.closed for c in FakeClient.made) and arena.workers == 0


def test_stop_ends_the_round_and_a_second_round_meanwhile_is_a_sentence():
    gate = threading.Event()
    arena = Arena(client_factory=lambda: FakeClient(chunks=("a", "b", "c"), gate=gate))
    picks = [Contender("x", "x", model="X", base="X"), Contender("y", "y", adapter="Y", base="X")]
    rounds = arena.ask(picks, [])
    next(rounds)
    assert arena.busy
    with pytest.raises(UserError, match="still answering"):
        next(arena.ask(picks, []))
    arena.stop()
    gate.set()
    final = list(rounds)[-1]
    assert [a.state for a in final] == [STOPPED, STOPPED]
    assert not arena.busy


def test_labels_follow_the_chat_picker_and_are_unique(tmp_path, monkeypatch):
    monkeypatch.setattr(arena_models, "chat_choices", lambda ws: [("run: r1", "/ws/runs/r1"), ("same", "/x"),
                                                                  ("same", "/y")])
    assert arena_models.labels_for(tmp_path, ["/ws/runs/r1", "/x", "/y", "typed/path"]) == \
        ["run: r1", "same", "same (2)", "typed/path"]


def test_a_stop_that_arrives_just_before_the_reply_begins_is_sent_again_once_it_streams():
    arena = None

    class LateStop(FakeClient):
        def stream(self, messages, settings=None, use_adapter=True):
            arena._stop.set()     # Stop pressed after the load, as the worker starts the reply ...
            self.stopped.clear()  # ... which clears the worker's flag: that stop is lost
            yield from super().stream(messages, settings, use_adapter)

    arena = Arena(client_factory=lambda: LateStop(chunks=("a", "b", "c", "d")))
    final = list(arena.ask([Contender("x", "x", model="X", base="X"), Contender("gone", "g", error="gone.")], []))[-1]
    assert final[0].state == STOPPED and len(final[0].text) < 4
