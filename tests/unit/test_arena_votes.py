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
