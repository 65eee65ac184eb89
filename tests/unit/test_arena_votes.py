"""Arena votes recorded in the run directory become a preference file the DPO objective accepts."""
from __future__ import annotations

import pytest

from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.inference import arena
from backend.objectives.trainers import build_alignment_datasets
from backend.runs import rundir


def test_votes_export_as_pairs_that_the_dpo_data_check_accepts(tmp_path):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(name="a"))
    arena.record_vote(run_dir, "Capital of Peru?", {"base": "Quito", "adapter": "ANSWER: Lima", "ckpt": "Lima"},
                      "adapter")
    arena.record_vote(run_dir, "2 plus 2?", {"base": "4", "adapter": "4"}, "base")  # same answers: no pair
    arena.record_vote(run_dir, "Colour of grass?", {"base": "green", "adapter": "ANSWER: green"}, "adapter")
    (run_dir / arena.VOTES_FILE).open("a").write('{"half": ')
    out = tmp_path / "prefs.jsonl"
    summary = arena.export_preferences(run_dir, out)
    assert summary == {"path": str(out), "votes": 3, "pairs": 3}
    cfg = RunConfig.model_validate({"objective": "dpo", "data": {"path": str(out), "validation_split": 0.0}})
    train, _ = build_alignment_datasets(cfg)
    assert len(train) == 3
    assert train[0]["chosen"][0]["content"] == "ANSWER: Lima"


def test_a_vote_for_a_model_that_did_not_answer_is_a_sentence(tmp_path):
    with pytest.raises(UserError, match="not one of the models"):
        arena.record_vote(tmp_path, "p", {"base": "x", "adapter": "y"}, "merged")
    with pytest.raises(UserError, match="no votes"):
        arena.export_preferences(tmp_path, tmp_path / "out.jsonl")


def test_a_tie_and_all_bad_are_kept_but_prefer_nothing_and_a_system_prompt_makes_conversational_rows(tmp_path):
    from backend.training.checks import data_problems

    home = tmp_path / "ws" / arena.ARENA_DIR  # made by the first vote
    arena.record_vote(home, "Hi?", {"a": "Hello", "b": "Hey"}, arena.TIE)
    arena.record_vote(home, "Bye?", {"a": "Bye", "b": "See you"}, arena.ALL_BAD)
    with pytest.raises(UserError, match="no votes between different answers"):
        arena.export_preferences(home)
    arena.record_vote(home, "Capital of Peru?", {"a": "Lima", "b": "Quito"}, "a", models={"a": "/m/a", "b": "/m/b"},
                      system="Answer in one word.")
    votes = arena.read_votes(home)
    assert [v["winner"] for v in votes] == [arena.TIE, arena.ALL_BAD, "a"]
    assert votes[-1]["models"] == {"a": "/m/a", "b": "/m/b"} and votes[-1]["system"] == "Answer in one word."
    summary = arena.export_preferences(home)
    assert summary == {"path": str(home / arena.EXPORT_FILE), "votes": 3, "pairs": 1}
    cfg = RunConfig.model_validate({"objective": "dpo", "data": {"path": summary["path"], "validation_split": 0.0}})
    assert data_problems(cfg) == {}
    train, _ = build_alignment_datasets(cfg)
    assert train[0]["prompt"][0] == {"role": "system", "content": "Answer in one word."}
    assert train[0]["chosen"][-1]["content"] == "Lima" and train[0]["rejected"][-1]["content"] == "Quito"


def test_votes_go_to_the_run_of_the_first_pick_from_a_run_else_to_the_workspace(tmp_path):
    ws = tmp_path / "ws"
    run_dir = rundir.create_run(ws, RunConfig(name="r"))
    ckpt = run_dir / "checkpoints" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    assert arena.votes_home(ws, ["", "SmolLM2-135M-Instruct", str(ckpt)]) == run_dir.resolve()
    assert arena.votes_home(ws, ["SmolLM2-135M-Instruct", str(tmp_path / "elsewhere")]) == ws / arena.ARENA_DIR
