"""The model card: hub front matter that parses, and figures that are the run's own numbers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from backend.core.config import RunConfig, save_config
from backend.core.io import atomic_write_json
from backend.runs import events as ev, rundir
from backend.runs.model_card import card_facts, parse_front_matter, render_card, write_card

TRAIN_LOSSES = [(1, 2.5), (2, 2.1), (3, 1.7), (4, 1.9)]
EVALS = [(2, 2.2), (4, 2.05)]


def make_run(root: Path, model: str = "smollm2-135m-instruct", with_eval: bool = True) -> Path:
    run = root / "runs" / "20260101-120000-support-bot"
    run.mkdir(parents=True)
    save_config(RunConfig.model_validate({
        "model": model, "name": "support bot", "method": {"name": "lora", "r": 8, "alpha": 16},
        "data": {"path": "/data/tickets.jsonl", "validation_path": "/data/tickets-val.jsonl", "max_length": 256},
        "train": {"learning_rate": 1e-4, "max_steps": 4, "batch_size": 2}}), run / rundir.CONFIG_FILE)
    rundir.write_status(run, state="completed", train_rows=120, validation_rows=12, step=4)
    for step, loss in TRAIN_LOSSES:
        rundir.append_event(run, {"type": ev.TRAIN, "step": step, "loss": loss, "epoch": None, "lr": 1e-4,
                                  "grad_norm": 1.0, "tokens_per_s": None, "tokens_seen": None})
    for step, loss in EVALS:
        rundir.append_event(run, {"type": ev.EVAL, "step": step, "val_loss": loss, "epoch": None,
                                  "best_val_loss": None, "best_step": None})
    rundir.append_event(run, {"type": ev.TRAIN_END, "step": 4, "epoch": None, "train_loss": 2.05})
    atomic_write_json(run / rundir.META_FILE, {"versions": {"torch": "2.13.0", "peft": "0.21.0"}})
    if with_eval:
        atomic_write_json(run / "eval.json", {"base": {"loss": 3.1, "perplexity": 22.2},
                                              "adapter": {"loss": 2.0, "perplexity": 7.39},
                                              "rows": 12, "data": "/data/tickets-val.jsonl", "samples": []})
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return run


def test_front_matter_parses_and_names_the_hub_base_library_license_and_tags(tmp_path):
    run = make_run(tmp_path)
    text = write_card(run / "adapter", run).read_text()
    fm = parse_front_matter(text)
    assert fm == yaml.safe_load(text.split("---\n")[1])
    assert fm["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert fm["library_name"] == "peft" and fm["license"] == "apache-2.0"
    assert fm["pipeline_tag"] == "text-generation"
    assert {"fine-tune-studio", "lora", "sft", "peft"} <= set(fm["tags"])


def test_the_figures_are_the_runs_metrics(tmp_path):
    run = make_run(tmp_path)
    text = render_card(card_facts(run), "adapter")
    curve = card_facts(run)["curve"]
    assert curve == {"steps": 4, "final_train_loss": 1.9, "best_train_loss": 1.7, "best_train_step": 3,
                     "final_val_loss": 2.05, "best_val_loss": 2.05, "best_val_step": 4, "evaluations": 2,
                     "mean_train_loss": 2.05}
    for line in ("| steps | 4 |", "| final train loss | 1.9 |", "| best train loss | 1.7 |",
                 "| best validation loss | 2.05 |", "| training rows | 120 |", "| validation rows | 12 |",
                 "| base | 3.1 | 22.2 |", "| tuned | 2 | 7.39 |", "| learning rate | 0.0001 |", "| r | 8 |"):
        assert line in text, line
    assert "`tickets.jsonl`, validation on `tickets-val.jsonl`" in text
    assert "LoRA" in text and "## Intended use" in text and "Fine-Tune Studio 0.1.0" in text
    assert "torch 2.13.0" in text


def test_without_an_evaluation_the_card_has_no_evaluation_section(tmp_path):
    run = make_run(tmp_path, with_eval=False)
    assert "## Evaluation" not in render_card(card_facts(run))


@pytest.mark.parametrize("kind, library", [("merged", "transformers"), ("gguf", "gguf")])
def test_merged_and_gguf_cards_say_what_they_are(tmp_path, kind, library):
    run = make_run(tmp_path)
    text = render_card(card_facts(run), kind, peft_adapter=False)
    assert parse_front_matter(text)["library_name"] == library
    assert ("merged model" if kind == "merged" else "GGUF model") in text


def test_a_local_base_is_named_in_the_body_but_not_as_a_hub_base_model(tmp_path):
    run = make_run(tmp_path, model=str(tmp_path))
    fm = parse_front_matter(render_card(card_facts(run)))
    assert "base_model" not in fm and "license" not in fm
    assert str(tmp_path) in render_card(card_facts(run))


def test_an_adapter_without_a_run_still_gets_a_card(tmp_path):
    text = render_card(card_facts(None, base="HuggingFaceTB/SmolLM2-135M-Instruct"), "adapter")
    assert parse_front_matter(text)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "## Intended use" in text
