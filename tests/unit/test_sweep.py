"""Sweeps without training: the grid, the sentences for bad fields and values, the median stopping rule,
the queue's look at sweep entries (pruning), and the comparison table read from hand-written run dirs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.runs import queue as q
from backend.runs import rundir, sweep
from backend.runs.sweep import SweepAxis, median_rule, parse_set, plan_sweep
from backend.runs.sweep_queue import queue_sweep


def base(**train) -> RunConfig:
    return RunConfig.model_validate({"name": "tiny", "train": {"max_steps": 4, **train}})


# ---- grid -----------------------------------------------------------------------------------------

def test_parse_set_reads_numbers_yaml_would_keep_as_text():
    axis = parse_set("train.learning_rate=1e-4, 3e-4")
    assert axis == SweepAxis("train.learning_rate", (1e-4, 3e-4))
    assert parse_set("method.r=8,16").values == (8, 16)
    assert parse_set("train.scheduler=cosine,linear").values == ("cosine", "linear")
    assert parse_set("train.gradient_checkpointing=true,false").values == (True, False)


def test_grid_is_every_combination_with_names_and_the_values_set():
    runs = plan_sweep(base(), [parse_set("train.learning_rate=1e-4,3e-4"), parse_set("method.r=8,16,32")])
    assert len(runs) == 6
    assert [r.overrides for r in runs[:3]] == [{"train.learning_rate": 1e-4, "method.r": r} for r in (8, 16, 32)]
    assert runs[0].name == "lr=0.0001 r=8 · tiny"
    assert len({r.name for r in runs}) == 6
    for r in runs:
        assert r.config.train.learning_rate == r.overrides["train.learning_rate"]
        assert r.config.method.r == r.overrides["method.r"]
        assert r.config.train.max_steps == 4 and r.config.name == r.name  # the rest of the base is kept
    # An int for a float field is the same value as the config stores it.
    assert plan_sweep(base(), [parse_set("train.epochs=1,2")])[1].config.train.epochs == 2.0


@pytest.mark.parametrize("sets, words", [
    (["train.learnig_rate=1e-4,3e-4"], ["train.learnig_rate is not a setting", "Did you mean train.learning_rate?"]),
    (["train=1,2"], ["train is a section", "train.epochs"]),
    (["method.target_modules=q_proj,v_proj"], ["holds a list"]),
    (["train.learning_rate=fast,slow"], ["train.learning_rate=fast cannot be used", "number"]),
    (["train.learning_rate=1e-4,5"], ["train.learning_rate=5 cannot be used", "at most 1"]),
    (["method.r=8,0"], ["method.r=0 cannot be used", "greater than or equal to 1"]),
    (["train.scheduler=cosine,wavy"], ["train.scheduler=wavy cannot be used"]),
    (["train.learning_rate=1e-4,0.0001"], ["lists the same value twice"]),
    (["train.learning_rate=1e-4"], ["only one run"]),
    (["train.learning_rate=1e-4,,3e-4"], ["empty entry"]),
    (["method.r=8,16", "method.r=32"], ["method.r is given twice"]),
    (["train.seed=1,2", "method.r=8,16", "train.epochs=1,2", "train.warmup_ratio=0,0.1"], ["at most 3 fields"]),
    (["train.seed=" + ",".join(map(str, range(9))), "method.r=" + ",".join(map(str, range(1, 6)))],
     ["would train 45 runs", "at most 32"]),
])
def test_bad_fields_and_values_are_sentences(sets, words):
    with pytest.raises(UserError) as e:
        plan_sweep(base(), [parse_set(s) for s in sets])
    for w in words:
        assert w in str(e.value)


def test_a_field_the_method_does_not_use_is_refused():
    full = RunConfig.model_validate({"method": {"name": "full"}})
    with pytest.raises(UserError, match="method.r does not change a full run"):
        plan_sweep(full, [parse_set("method.r=8,16")])
    # Sweeping the method itself makes r count for the LoRA runs.
    assert len(plan_sweep(full, [parse_set("method.name=full,lora"), parse_set("method.r=8,16")])) == 4


def test_a_sweep_needs_a_validation_set():
    no_val = RunConfig.model_validate({"data": {"validation_split": 0.0}})
    with pytest.raises(UserError, match="no validation set"):
        plan_sweep(no_val, [parse_set("train.learning_rate=1e-4,3e-4")])


def test_bad_set_syntax():
    with pytest.raises(UserError, match="not FIELD=VALUES"):
        parse_set("train.learning_rate")


# ---- the median rule --------------------------------------------------------------------------------

def test_median_rule_stops_a_run_worse_than_the_median_of_the_others_at_the_same_step():
    others = [[(2, 1.0), (4, 0.8)], [(2, 1.2), (4, 0.9)], [(2, 2.0), (4, 1.5)]]
    verdict = median_rule([(2, 1.5), (4, 1.3)], others)
    assert verdict == {"step": 4, "best": 1.3, "median": 0.9, "compared": 3}
    assert median_rule([(2, 1.1), (4, 0.85)], others) is None  # better than the median: keeps training
    assert median_rule([(2, 0.9)], [[(2, 0.9)]]) is None  # a tie is not losing
    # At step 2 the others' best up to step 2 counts, not their later (better) values.
    assert median_rule([(2, 1.1)], [[(2, 1.0), (4, 0.1)], [(2, 1.2), (4, 0.1)], [(2, 1.3), (4, 0.1)]]) is None
    # Runs that have not reached the step do not count; with none, there is no verdict.
    assert median_rule([(2, 9.0), (4, 9.0)], [[(2, 1.0)]]) is None
    assert median_rule([], others) is None
    # Its best so far counts, not its latest value.
    assert median_rule([(2, 0.5), (4, 3.0)], [[(2, 1.0), (4, 0.9)]]) is None


# ---- the queue's look, and the table -----------------------------------------------------------------

def fake_run(ws: Path, name: str, state: str, curve: list[tuple[int, float]], pid=None, peak=None) -> Path:
    run_dir = rundir.create_run(ws, RunConfig.model_validate({"name": name}))
    for step, loss in curve:
        rundir.append_event(run_dir, {"type": "train", "step": step, "loss": loss + 0.1,
                                      **({"gpu_mem_peak": peak} if peak else {})})
        rundir.append_event(run_dir, {"type": "eval", "step": step, "val_loss": loss})
    fields = {"state": state, "started": "2026-01-01T00:00:00+00:00", "ended": "2026-01-01T00:01:30+00:00"}
    if state == "completed":
        fields["best_val_loss"] = min(v for _, v in curve)
        fields["best_step"] = min(curve, key=lambda p: p[1])[0]
    if pid:
        fields["pid"] = pid
    rundir.write_status(run_dir, **fields)
    return run_dir


def test_queue_look_records_run_dirs_prunes_the_loser_and_the_table_marks_the_winner(tmp_path, monkeypatch):
    import os
    ws = tmp_path / "ws"
    record = queue_sweep(ws, base(), [parse_set("train.learning_rate=1e-4,3e-4,1e-3")], prune="median")
    entries = q.read_queue(ws)["entries"]
    assert [e["sweep"] for e in entries] == [{"id": record["id"], "index": i} for i in range(3)]
    assert [r["entry"] for r in record["runs"]] == [e["id"] for e in entries]
    # Two runs ended; the third trains (this test process stands in for its trainer) and loses.
    a = fake_run(ws, "a", "completed", [(2, 1.0), (4, 0.7)], peak=3 * 2**30)
    b = fake_run(ws, "b", "completed", [(2, 1.1), (4, 0.8)])
    c = fake_run(ws, "c", "running", [(2, 1.6)], pid=os.getpid())
    rundir.write_status(c, pid_start=rundir.process_start_time(os.getpid()))
    for e, d, state in zip(entries, (a, b, c), ("completed", "completed", "running")):
        e.update(run_dir=str(d), state=state)
    stopped: list[Path] = []
    events = sweep.watch_queue(ws, entries, stop=stopped.append)
    assert stopped == [c]
    assert events[0]["kind"] == "run_pruned" and "median 1.0500" in events[0]["message"]
    assert sweep.watch_queue(ws, entries, stop=stopped.append) == []  # pruned once only
    rundir.write_status(c, state="stopped")

    table = sweep.comparison(ws, record["id"])
    rows = table["rows"]
    assert [r["run_dir"] for r in rows] == [str(a), str(b), str(c)]
    assert [r["state"] for r in rows] == ["completed", "completed", "pruned"]
    assert [r["winner"] for r in rows] == [True, False, False] and table["winner"] == 0
    assert rows[0]["best_val_loss"] == 0.7 and rows[0]["best_step"] == 4 and rows[0]["seconds"] == 90
    assert rows[0]["peak_memory"] == 3 * 2**30 and rows[1]["peak_memory"] is None
    assert rows[2]["best_val_loss"] == 1.6  # from its events: a pruned run has no best in its status
    assert table["note"].startswith("Winner: lr=0.0001")


def test_the_table_reads_the_eval_report_and_the_winner_follows_the_loss(tmp_path):
    ws = tmp_path / "ws"
    record = queue_sweep(ws, base(), [parse_set("method.r=4,8")])
    entries = q.read_queue(ws)["entries"]
    a = fake_run(ws, "a", "completed", [(2, 0.9)])
    b = fake_run(ws, "b", "completed", [(2, 0.5)])
    (b / "eval.json").write_text(json.dumps({"adapter": {"loss": 0.55}, "base": {"loss": 2.0},
                                             "headline": {"metric": "exact_match", "adapter": 0.75, "base": 0.1}}))
    for e, d in zip(entries, (a, b)):
        e.update(run_dir=str(d), state="completed")
    assert sweep.watch_queue(ws, entries) == []  # no pruning asked: records only
    rows = sweep.comparison(ws, record["id"])["rows"]
    assert [r["winner"] for r in rows] == [False, True]
    assert rows[1]["eval_loss"] == 0.55 and rows[1]["metric"] == "exact_match" and rows[1]["metric_value"] == 0.75


def test_waiting_and_unstarted_runs_have_no_winner(tmp_path):
    ws = tmp_path / "ws"
    record = queue_sweep(ws, base(), [parse_set("method.r=4,8")])
    table = sweep.comparison(ws, record["id"], q.read_queue(ws)["entries"])
    assert [r["state"] for r in table["rows"]] == ["queued", "queued"]
    assert table["winner"] is None and "still to finish" in table["note"]
    assert sweep.list_sweeps(ws)[0]["id"] == record["id"]
    with pytest.raises(UserError, match="not a sweep id"):
        sweep.load_sweep(ws, "../etc")


def test_entries_of_a_deleted_sweep_record_are_left_alone(tmp_path):
    ws = tmp_path / "ws"
    record = queue_sweep(ws, base(), [parse_set("method.r=4,8")], prune="median")
    (ws / "sweeps" / f"{record['id']}.json").unlink()
    entries = q.read_queue(ws)["entries"]
    assert sweep.watch_queue(ws, entries, stop=lambda d: pytest.fail("nothing to stop")) == []


# ---- the command line, without training -----------------------------------------------------------

def test_cli_bad_field_is_exit_2_with_the_sentence_and_queues_nothing(tmp_path, capsys):
    from backend import cli
    from backend.core.config import save_config
    save_config(base(), tmp_path / "base.yaml")
    ws = tmp_path / "ws"
    code = cli.main(["sweep", str(tmp_path / "base.yaml"), "--set", "train.learnig_rate=1e-4,3e-4",
                     "--workspace", str(ws), "--json"])
    out = capsys.readouterr()
    assert code == 2 and "Did you mean train.learning_rate?" in json.loads(out.out)["error"]
    assert not (ws / "queue.json").exists() and not (ws / "sweeps").exists()
    code = cli.main(["sweep", str(tmp_path / "base.yaml"), "--set", "train.learning_rate=1e-4,3e-4",
                     "--set", "method.r=8,16", "--print-config", "--workspace", str(ws)])
    printed = capsys.readouterr().out
    assert code == 0 and printed.count("# lr=") == 4 and "learning_rate: 0.0003" in printed
    assert not (ws / "queue.json").exists()
    assert cli.main(["sweep", "--show", "sweep-20260101-000000", "--workspace", str(ws)]) == 2


def test_the_text_table_stars_the_winner():
    from backend.commands.sweep import table_text
    rows = [{"name": "lr=0.1 · t", "state": "completed", "best_val_loss": 0.5, "best_step": 4, "eval_loss": None,
             "metric": None, "seconds": 75, "peak_memory": None, "run_id": "r1", "winner": True},
            {"name": "lr=1 · t", "state": "pruned", "best_val_loss": 0.9, "best_step": 2, "eval_loss": 0.8,
             "metric": "exact_match", "metric_value": 0.5, "seconds": 20, "peak_memory": 2**30, "run_id": "r2",
             "winner": False}]
    text = table_text({"id": "sweep-x", "rows": rows, "note": "Winner: lr=0.1."})
    lines = text.splitlines()
    assert lines[2].startswith("★  lr=0.1") and "0.5000 @ 4" in lines[2] and "1:15" in lines[2]
    assert "pruned" in lines[3] and "exact_match 0.5" in lines[3] and "1.00 GB" in lines[3]
