"""`ftstudio sweep` on the tiny model: two runs through the queue, the losing one pruned by the median
rule, the table marks the winner, and the winner's settings load back as a RunConfig."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend import cli
from backend.core.choices import settings_from
from backend.core.config import save_config
from backend.runs import queue as q
from backend.runs import rundir
from tests.integration.test_train_runner import tiny_config

pytestmark = pytest.mark.timeout(600)


def matching_data(folder: Path) -> tuple[Path, Path]:
    """Validation asks what training teaches, so the run that learns faster has the lower validation loss."""
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    rows = [{"prompt": f"Say the secret word {i % 2}.", "completion": "apple"} for i in range(8)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return train, val


def test_a_two_run_sweep_through_the_queue_prunes_the_loser_and_marks_the_winner(tmp_path, tiny_model_dir, capsys,
                                                                                monkeypatch):
    # The rule judges a run at its latest evaluation. Tiny-model steps are quicker than the queue's poll, so
    # the loser could reach its step-4 evaluation before the step-2 one was read (a clean-clone run did);
    # a second per step keeps two seconds between evaluations, many polls.
    monkeypatch.setenv("FTSTUDIO_FAULT", "slow@1000")
    cfg = tiny_config(tiny_model_dir, tmp_path, patience=None, max_steps=6, eval_steps=2)
    train, val = matching_data(tmp_path)
    cfg = cfg.model_copy(update={"report_to": [], "name": "tiny",
                                 "data": cfg.data.model_copy(update={"path": str(train), "validation_path": str(val)})})
    save_config(cfg, tmp_path / "base.yaml")
    ws = tmp_path / "ws"
    code = cli.main(["sweep", str(tmp_path / "base.yaml"), "--set", "train.learning_rate=0.01,0.000001",
                     "--prune", "median", "--workspace", str(ws), "--json", "--poll", "0.3"])
    out = capsys.readouterr()
    result = json.loads(out.out)
    table = result["sweep"]
    rows = table["rows"]
    assert code == 0, (out.err, rows)
    assert [r["overrides"] for r in rows] == [{"train.learning_rate": 0.01}, {"train.learning_rate": 1e-6}]
    assert rows[0]["state"] == "completed"
    # The slow run's first validation loss was above the fast run's at the same step: stopped there.
    assert rows[1]["state"] == "pruned", (rows[1], out.err)
    assert rows[1]["pruned"]["step"] == 2 and rows[1]["pruned"]["best"] > rows[1]["pruned"]["median"]
    assert "Pruned at step 2" in out.err
    assert [r["winner"] for r in rows] == [True, False] and table["winner"] == 0
    assert rows[0]["best_val_loss"] < rows[1]["best_val_loss"]
    assert rows[0]["seconds"] > 0
    # The runs went through the queue: its entries, marked with the sweep, each ran one after the other.
    entries = [e for e in q.read_queue(ws)["entries"] if e.get("sweep", {}).get("id") == table["id"]]
    assert [e["state"] for e in entries] == ["completed", "stopped"]
    a, b = (rundir.read_status(Path(r["run_dir"])) for r in rows)
    assert rundir.parse_iso(a["ended"]) <= rundir.parse_iso(b["started"])
    # The winner's settings, as the Train tab's "Load this run's settings" reads them.
    loaded = settings_from(rows[0]["run_dir"])
    assert loaded["train"]["learning_rate"] == 0.01 and loaded["name"] == rows[0]["name"]

    # --show prints the same table later, the winner starred.
    assert cli.main(["sweep", "--show", table["id"], "--workspace", str(ws)]) == 0
    shown = capsys.readouterr().out
    assert table["id"] in shown and "★" in shown.splitlines()[2] and "pruned" in shown
