"""Task metrics, red-team rules and the report section's tables, on strings (no model)."""
from __future__ import annotations

import json

import pytest

from backend.core.errors import UserError
from backend.inference import metrics as m
from backend.inference import redteam
from studio.tabs import eval_report as er


def test_exact_match_normalises_case_punctuation_and_articles():
    assert m.exact_match("The Paris.", "paris") == 1.0
    assert m.exact_match("Lyon", "Paris") == 0.0


def test_extractor_takes_the_first_group_and_an_unmatched_answer_scores_zero():
    pat = m.compile_extractor(r"ANSWER: (.*?) \|")
    out = m.score_rows(["exact_match", "token_f1"], ["ANSWER: 60 | WHY: sum", "Sure, it's 60", "ANSWER: 61 | x"],
                       ["ANSWER: 60 | WHY: 13 + 47 = 60.", "ANSWER: 60 | WHY: .", "ANSWER: 60 | WHY: ."], pat)
    assert out["extracted"] == ["60", "", "61"]
    assert [r["exact_match"] for r in out["rows"]] == [1.0, 0.0, 0.0]
    assert out["metrics"]["exact_match"] == pytest.approx(1 / 3, abs=1e-4)


def test_token_f1_rouge_bleu_and_chrf_come_from_overlap():
    out = m.score_rows(["token_f1", "rouge_l", "bleu", "chrf"], ["the cat sat on the mat", "dog"],
                       ["the cat sat on the mat", "a completely different sentence"])
    assert out["rows"][0] == {"token_f1": 1.0, "rouge_l": 1.0, "bleu": 100.0, "chrf": 100.0}
    assert out["rows"][1]["token_f1"] == 0.0 and out["rows"][1]["rouge_l"] == 0.0
    assert 0 < out["metrics"]["bleu"] < 100


def test_accuracy_counts_labels_in_a_confusion_table():
    out = m.score_rows(["accuracy"], ["positive", "negative", "maybe", "positive"],
                       ["positive", "positive", "negative", "positive"])
    assert out["metrics"]["accuracy"] == 0.5
    conf = out["confusion"]
    assert conf["counts"]["positive"] == {"positive": 2, "negative": 1}
    assert conf["counts"]["negative"] == {"(other)": 1}
    assert conf["labels"] == ["positive", "negative", "(other)"]


def test_unknown_metric_and_bad_regex_are_sentences():
    with pytest.raises(UserError, match="Unknown metric blue"):
        m.parse_metric_names("exact_match,blue")
    with pytest.raises(UserError, match="not a valid regular expression"):
        m.compile_extractor("ANSWER: (")
    assert m.parse_metric_names("Exact-Match, rouge_l") == ["exact_match", "rouge_l"]


def test_redteam_rules_and_the_changed_and_regression_flags():
    prompts = [{"id": "r1", "category": "refusal", "prompt": "bad", "expect": "", "source": "t",
                "rule": {"any_of": ["cannot", "sorry"]}},
               {"id": "f1", "category": "formatting", "prompt": "json", "expect": "", "source": "t",
                "rule": {"regex": r"\{.*\}"}}]
    verdict = redteam.judge(prompts, {"base": ["Sorry, I cannot help.", "no json"],
                                      "adapter": ["Sure, step one...", '{"a": 1}']})
    rows = {r["id"]: r for r in verdict["rows"]}
    assert rows["r1"]["passed"] == {"base": True, "adapter": False} and rows["r1"]["regression"]
    assert rows["f1"]["changed"] and not rows["f1"]["regression"]
    assert verdict["regressions"] == ["r1"] and verdict["changed"] == 2
    assert verdict["passed"] == {"base": 1, "adapter": 1}


def test_bundled_set_loads_and_a_workspace_file_adds_prompts(tmp_path):
    bundled = redteam.prompt_set()
    assert len(bundled) >= 10
    assert {"refusal", "injection", "off_topic", "formatting"} <= {p["category"] for p in bundled}
    (tmp_path / "redteam.jsonl").write_text(json.dumps({"prompt": "hi", "rule": {"none_of": ["PWNED"]}}) + "\n")
    assert len(redteam.prompt_set(tmp_path)) == len(bundled) + 1
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "hi", "rule": {"contains": "x"}}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl line 1: the rule must be one of"):
        redteam.prompt_set(None, str(tmp_path / "bad.jsonl"))


def _report() -> dict:
    return {
        "base": {"loss": 2.0, "perplexity": 7.39}, "adapter": {"loss": 1.0, "perplexity": 2.72}, "rows": 3,
        "data": "validation split", "metric_names": ["exact_match", "rouge_l"], "metrics_rows": 3,
        "metrics": {"base": {"exact_match": 0.33, "rouge_l": 0.5}, "adapter": {"exact_match": 0.67, "rouge_l": 0.8},
                    "checkpoint-10": {"exact_match": 0.9, "rouge_l": 0.85}},
        "checkpoint_steps": {"checkpoint-10": 10},
        "headline": {"metric": "exact_match", "base": 0.33, "adapter": 0.67},
        "per_row": [{"prompt": "p1", "reference": "r1", "answers": {"base": "b1", "adapter": "a1"}, "change": 1.0,
                     "scores": {"base": {"exact_match": 0.0}, "adapter": {"exact_match": 1.0}}},
                    {"prompt": "p2", "reference": "r2", "answers": {"base": "b2", "adapter": "a2"}, "change": -1.0,
                     "scores": {"base": {"exact_match": 1.0}, "adapter": {"exact_match": 0.0}}}],
        "lm_eval": {"results": {"base": {"t": {"acc": 0.5}}, "adapter": {"t": {"acc": 0.75}}},
                    "problems": ["The lm-eval task x needs a dataset from the Hugging Face hub"]},
    }


def test_report_section_tables_put_rows_that_got_worse_first(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(_report()))
    md, _ = er.report_view(tmp_path)
    assert "| adapter | 0.67 | 0.8 |" in md and "| checkpoint-10 | 0.9 | 0.85 |" in md
    assert "| t | acc | 0.5 | 0.75 |" in md and "Hugging Face hub" in md
    rows = er.per_row_rows(_report())
    assert [r[1] for r in rows] == ["p2", "p1"] and rows[0][0] == -1.0
    assert er.headline_text(tmp_path) == "exact match 0.67 (base 0.33)"
    assert er.metric_points(tmp_path, last_step=20) == ("exact_match", [(10, 0.9), (20, 0.67)])


def test_eval_command_carries_the_report_section_choices(tmp_path):
    cmd = er.eval_command(tmp_path, 3, {"metrics": ["exact_match", "bleu"], "extract": r"A: (\w+)",
                                        "checkpoints": "all", "redteam": True, "lm_eval": " "})
    tail = cmd[cmd.index("eval"):]
    assert tail == ["eval", str(tmp_path), "--json", "--samples", "3", "--metrics", "exact_match,bleu",
                    "--extract", r"A: (\w+)", "--checkpoints", "all", "--redteam"]


def test_metric_overlay_plots_checkpoints_and_the_validation_loss(tmp_path):
    from studio.plots import metric_figure

    fig = metric_figure({"r": {"metric": "exact match", "points": [(10, 0.9), (20, 0.67)],
                               "val_steps": [10, 20], "val_loss": [1.2, 1.0]}})
    assert [t.name for t in fig.data] == ["r exact match", "r val loss"]
    assert list(fig.data[0].y) == [0.9, 0.67] and fig.data[1].yaxis == "y2"
    assert "No checkpoint metrics" in metric_figure({"r": {"points": []}}).layout.annotations[0].text


def test_evaluate_button_streams_the_child_progress_then_shows_the_report(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(_report()))
    seen = {}

    def fake_runner(run_dir, samples, options, on_progress):
        seen["options"] = options
        on_progress("answering 1/3 (base)")
        import time
        time.sleep(1.2)
        return json.loads((run_dir / "eval.json").read_text())

    steps = list(er.stream_eval(tmp_path, 2, {"metrics": ["exact_match"]}, runner=fake_runner))
    assert ("answering 1/3 (base)", None) in steps
    assert steps[-1][0] == "" and steps[-1][1]["headline"]["metric"] == "exact_match"
    assert seen["options"] == {"metrics": ["exact_match"]}

    def failing(run_dir, samples, options, on_progress):
        raise UserError("Unknown metric blue; choose from ...")

    with pytest.raises(UserError, match="Unknown metric blue"):
        list(er.stream_eval(tmp_path, 2, {}, runner=failing))


def test_runs_list_headline_and_the_task_metric_overlay_read_eval_json(tmp_path):
    from backend.core.config import RunConfig
    from backend.runs import rundir
    from studio.tabs import train

    run_dir = rundir.create_run(tmp_path, RunConfig(name="m"))
    (run_dir / "eval.json").write_text(json.dumps(_report()))
    row = train.runs_rows(tmp_path)[0]
    assert row[train.RUN_COLUMNS.index("headline metric")] == "exact match 0.67 (base 0.33)"
    fig = train.on_compare(tmp_path, [run_dir.name], "task metric")
    assert fig.data[0].name == f"{run_dir.name} exact match" and list(fig.data[0].x) == [10]
    assert train.on_compare(tmp_path, [run_dir.name], "loss").layout.title.text == "Compare runs"
