"""`ftstudio eval`: a run trained on a fixed answer format beats its base and answers in that format."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.runs import rundir
from backend.core.config import RunConfig
from backend.core.errors import UserError
from backend.inference.evaluate import evaluate_run

pytestmark = pytest.mark.timeout(600)


def _format_data(folder: Path) -> tuple[Path, Path]:
    rows = [{"instruction": f"Question number {i}?", "input": "", "output": "ANSWER: yes"} for i in range(16)]
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[12:]))
    return train, val


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evalrun")
    train, val = _format_data(folder)
    cfg = RunConfig.model_validate({
        "model": str(tiny_model_dir), "name": "format",
        "method": {"name": "full"},
        "data": {"path": str(train), "validation_path": str(val), "max_length": 48},
        "train": {"max_steps": 40, "batch_size": 4, "gradient_accumulation": 1, "learning_rate": 0.003,
                  "precision": "fp32", "gradient_checkpointing": False, "eval_steps": 20, "warmup_ratio": 0.0,
                  "scheduler": "constant"},
        "early_stopping": {"patience": None}, "report_to": [],
    })
    run_dir = rundir.create_run(folder / "ws", cfg)
    r = subprocess.run([sys.executable, "-m", "backend.training.run", str(run_dir)], capture_output=True, text=True,
                       timeout=500)
    assert r.returncode == 0, (run_dir / "train.log").read_text()[-3000:] if (run_dir / "train.log").exists() else r.stderr[-3000:]
    assert rundir.read_status(run_dir)["state"] == "completed"
    return run_dir


def test_the_trained_model_carries_a_card_with_the_runs_own_figures(trained_run):
    from backend.runs.model_card import parse_front_matter

    text = (trained_run / "adapter" / "README.md").read_text()
    fm = parse_front_matter(text)
    assert fm["library_name"] == "transformers" and fm["pipeline_tag"] == "text-generation" and "full" in fm["tags"]
    events, _ = rundir.read_events(trained_run)
    losses = [e["loss"] for e in events if e["type"] == "train" and e.get("loss") is not None]
    vals = [e["val_loss"] for e in events if e["type"] == "eval" and e.get("val_loss") is not None]
    assert f"| final train loss | {losses[-1]:.4g} |" in text and f"| best train loss | {min(losses):.4g} |" in text
    assert f"| best validation loss | {min(vals):.4g} |" in text and "| steps | 40 |" in text
    assert "| training rows | 12 |" in text and "| validation rows | 4 |" in text


def test_eval_cli_shows_adapter_loss_below_base_and_answers_in_the_taught_format(trained_run):
    r = subprocess.run([sys.executable, "-m", "backend.cli", "eval", str(trained_run), "--samples", "2",
                        "--max-new-tokens", "6", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["adapter"]["loss"] < report["base"]["loss"]
    assert report["adapter"]["perplexity"] < report["base"]["perplexity"]
    assert len(report["samples"]) == 2
    for s in report["samples"]:
        assert s["reference"] == "ANSWER: yes"
        assert s["adapter"].startswith("ANSWER")
        assert not s["base"].startswith("ANSWER")
    assert json.loads((trained_run / "eval.json").read_text())["adapter"] == report["adapter"]


def test_eval_of_a_run_without_adapter_is_a_sentence(tmp_path, tiny_model_dir):
    run_dir = rundir.create_run(tmp_path / "ws", RunConfig(model=str(tiny_model_dir)))
    with pytest.raises(UserError, match="has no trained adapter yet"):
        evaluate_run(run_dir)
    r = subprocess.run([sys.executable, "-m", "backend.cli", "eval", str(run_dir), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no trained adapter" in json.loads(r.stdout)["error"]
