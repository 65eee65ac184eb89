"""The Chat tab's Arena handlers, called as Gradio calls them (plain data in, plain data out), with a fake
arena: the columns stream, a vote lands in the votes file once per question, and export writes the file."""
from __future__ import annotations

import json

from backend.inference import arena as votes
from backend.inference.arena_models import DONE, FAILED, Answer
from studio.tabs import chat_arena

SETTINGS = (16, 0.0, 0.9, 50, 1.1, -1)


class FakeArena:
    busy = False

    def __init__(self):
        self.asked = None

    def ask(self, contenders, messages, settings, quantize=False):
        self.asked = (contenders, messages, settings)
        answers = [Answer(c.label) for c in contenders]
        yield answers
        for step in ("Li", "ma"):
            answers[0].text += step
            yield answers
        answers[0].state, answers[0].tokens, answers[0].seconds = DONE, 2, 0.1
        answers[1].state, answers[1].text, answers[1].tokens, answers[1].seconds = DONE, "Quito", 1, 0.1
        if len(answers) > 2:
            answers[2].state, answers[2].error = FAILED, "The adapter does not fit the base model."
        yield answers


def _model(ws, name):
    d = ws / "models" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    return str(d)


def _ask(arena, ws, picks, prompt="Capital of Peru?"):
    picks = list(picks) + [None] * (4 - len(picks))
    return list(chat_arena.on_arena_ask(arena, ws, *picks, prompt, "", False, *SETTINGS))


def test_ask_streams_each_column_and_a_vote_is_recorded_once_then_exported(tmp_path):
    ws = tmp_path / "ws"
    a, b, broken = _model(ws, "a"), _model(ws, "b"), _model(ws, "c")
    arena = FakeArena()
    outs = _ask(arena, ws, [a, b, broken])
    answers_col1 = [o[2 + 4] for o in outs]  # status, round, 4 heads, then the 4 answer boxes
    assert answers_col1[-1] == "Lima" and len(set(answers_col1)) >= 3, answers_col1
    status, rnd = outs[-1][0], outs[-1][1]
    assert "Vote for the better answer" in status
    assert "ft-error" in outs[-1][4] and "does not fit" in outs[-1][4]  # the third column's heading
    assert outs[-1][10]["visible"] and outs[-1][11]["visible"] and outs[-1][12]["visible"]
    assert not outs[-1][13]["visible"]  # the fourth column stays hidden
    assert rnd["answers"] == {a: "Lima", b: "Quito"} and rnd["home"] == str(ws / votes.ARENA_DIR)
    assert arena.asked[1] == [{"role": "user", "content": "Capital of Peru?"}]

    said, rnd = chat_arena.on_arena_vote(0, rnd)
    assert "Vote recorded" in said and rnd["voted"]
    again, _ = chat_arena.on_arena_vote(1, rnd)
    assert "has its vote already" in again
    lines = (ws / votes.ARENA_DIR / votes.VOTES_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["winner"] == a

    said, path = chat_arena.on_arena_export(ws, rnd, None, None, None, None)
    assert "1 preference pair" in said
    assert json.loads(open(path).readline()) == {"prompt": "Capital of Peru?", "chosen": "Lima", "rejected": "Quito"}


def test_no_vote_before_an_answer_and_none_for_a_column_that_failed(tmp_path):
    ws = tmp_path / "ws"
    assert chat_arena.on_arena_vote(0, {})[0] == chat_arena.NOTHING_YET
    outs = _ask(FakeArena(), ws, [_model(ws, "a"), _model(ws, "b"), _model(ws, "c")])
    said, rnd = chat_arena.on_arena_vote(2, outs[-1][1])
    assert "no answer to vote for" in said and not rnd["voted"]
    said, rnd = chat_arena.on_arena_vote(votes.TIE, rnd)
    assert "a tie" in said
    assert "no votes between different answers" in chat_arena.on_arena_export(ws, rnd, None, None, None, None)[0]


def test_too_few_picks_or_no_prompt_is_a_sentence_and_nothing_is_asked(tmp_path):
    ws = tmp_path / "ws"
    arena = FakeArena()
    assert "at least 2 models" in _ask(arena, ws, [_model(ws, "a")])[-1][0]
    assert "Type a question" in _ask(arena, ws, [_model(ws, "b"), _model(ws, "c")], prompt=" ")[-1][0]
    assert arena.asked is None
    assert chat_arena.on_arena_stop(arena) == "Nothing is being answered."
