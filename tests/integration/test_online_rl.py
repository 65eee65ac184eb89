"""RLHF on the tiny model, through the training subprocess's code path (in-process): a reward model
trained by the studio scores GRPO's sampled answers; RLOO trains on pattern and reference rewards.
Only the adapter moves, the chart events carry the rewards, and the saved adapter reloads to the
same logits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.runs import rundir
from backend.core.config import RunConfig
from backend.core.models import load_causal_lm

from tests.samples import small_copy

pytestmark = pytest.mark.timeout(600)


def config(model_dir, data: Path, objective: str, alignment: dict, steps: int = 2) -> RunConfig:
    return RunConfig.model_validate({
        "model": str(model_dir), "objective": objective, "early_stopping": {"patience": None},
        "method": {"name": "lora", "r": 4, "dropout": 0.0},
        "alignment": {"num_generations": 2, "max_completion_length": 8, **alignment},
        "data": {"path": str(data), "validation_split": 0.0, "max_length": 128},
        "train": {"max_steps": steps, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "gradient_checkpointing": False, "learning_rate": 1e-2, "warmup_ratio": 0.0,
                  "scheduler": "constant"}})


def train(workspace: Path, cfg: RunConfig) -> tuple[Path, list[dict]]:
    from backend.training.run import run

    run_dir = rundir.create_run(workspace, cfg)
    assert run(run_dir) == 0, rundir.read_status(run_dir).get("error")
    return run_dir, rundir.read_events(run_dir)[0]


def test_grpo_learns_from_a_studio_reward_model_and_only_the_adapter_moves(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    ws = tmp_path / "ws"
    reward_cfg = config(tiny_model_dir, small_copy(tmp_path, "preference.jsonl"), "reward", {})
    reward_run, _ = train(ws, reward_cfg)

    prompts = small_copy(tmp_path, "instructions.jsonl", 8)
    cfg = config(tiny_model_dir, prompts, "grpo", {"reward_model": str(reward_run), "reward_reference": True},
                 steps=3)
    run_dir, events = train(ws, cfg)

    alignment = [e for e in events if e["type"] == "alignment"]
    assert [e["step"] for e in alignment] == [1, 2, 3]
    assert all("reward" in e and "rewards/reward_model/mean" in e and "rewards/reference_overlap/mean" in e
               for e in alignment)
    # A reward model's scores differ between answers, so the group-relative advantage is not zero.
    assert all(e["reward_std"] > 0 for e in alignment)
    assert any(e["grad_norm"] > 0 for e in events if e["type"] == "train")
    assert all(e["tokens_per_s"] > 0 for e in events if e["type"] == "train" and e["step"] > 1)  # the speed readout

    adapter = rundir.adapter_dir(run_dir)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B moved off zero

    ids = torch.arange(5, 25).unsqueeze(0)
    base = load_causal_lm(str(tiny_model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
        after = tuned(input_ids=ids).logits
        again = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir), dtype=torch.float32),
                                          str(adapter)).eval()(input_ids=ids).logits
    assert not torch.allclose(before, after)
    assert torch.allclose(after, again, atol=1e-6)


def test_rloo_trains_on_pattern_and_reference_rewards(tiny_model_dir, tmp_path):
    prompts = small_copy(tmp_path, "instructions.jsonl", 8)
    cfg = config(tiny_model_dir, prompts, "rloo", {"reward_pattern": r"\s", "reward_reference": True})
    run_dir, events = train(tmp_path / "ws", cfg)
    alignment = [e for e in events if e["type"] == "alignment"]
    assert len(alignment) == 2
    assert all("rewards/pattern/mean" in e and "rewards/reference_overlap/mean" in e for e in alignment)
    assert (rundir.adapter_dir(run_dir) / "adapter_model.safetensors").exists()
    assert rundir.read_status(run_dir)["state"] == "completed"


def test_grpo_on_plain_text_fails_with_a_sentence(tiny_model_dir, tmp_path):
    from backend.training.run import run

    data = tmp_path / "corpus.txt"
    data.write_text("Plain text with no prompts at all.\n" * 6)
    cfg = config(tiny_model_dir, data, "grpo", {"reward_reference": True})
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    assert run(run_dir) == 1
    error = rundir.read_status(run_dir)["error"]
    assert "plain text" in error and "Dataset tab" in error


def test_grpo_refuses_a_reward_run_that_is_not_a_reward_model(tiny_model_dir, tmp_path):
    from backend.objectives.validate import validate_objective

    ws = tmp_path / "ws"
    sft_run = rundir.create_run(ws, config(tiny_model_dir, tmp_path / "x.jsonl", "sft", {}))
    (sft_run / "adapter").mkdir()
    cfg = config(tiny_model_dir, tmp_path / "x.jsonl", "grpo", {"reward_model": str(sft_run)})
    problems = validate_objective(cfg)
    assert "not a reward model" in problems["alignment.reward_model"]


@pytest.fixture()
def tiny_reward_model(tiny_model_dir, tmp_path) -> Path:
    """A randomly initialised one-output scorer on the tiny model's config: scores that differ per answer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    conf = AutoConfig.from_pretrained(str(tiny_model_dir), num_labels=1)
    torch.manual_seed(0)
    out = tmp_path / "scorer"
    AutoModelForSequenceClassification.from_config(conf).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


@pytest.mark.parametrize("method,kl", [("qlora", 0.0), ("full", 0.04), ("lora", 0.04)])
def test_grpo_with_qlora_full_and_a_kl_penalty(tiny_model_dir, tiny_reward_model, tmp_path, method, kl):
    prompts = small_copy(tmp_path, "instructions.jsonl", 8)
    cfg = config(tiny_model_dir, prompts, "grpo", {"reward_model": str(tiny_reward_model), "kl_coef": kl})
    cfg.method.name = method
    cfg.method.compute_dtype = "fp32"
    run_dir, events = train(tmp_path / "ws", cfg)
    alignment = [e for e in events if e["type"] == "alignment"]
    assert len(alignment) == 2 and all(("kl" in e) == (kl > 0) for e in alignment)
    adapter = rundir.adapter_dir(run_dir)
    assert not (adapter / "ref").exists()  # the KL reference copy is not part of what was trained
    if method == "full":
        base = dict(load_causal_lm(str(tiny_model_dir), dtype=torch.float32).named_parameters())
        tuned = dict(load_causal_lm(str(adapter), dtype=torch.float32).named_parameters())
        assert any(not torch.equal(base[n], tuned[n]) for n in base)
    else:
        assert (adapter / "adapter_model.safetensors").exists()


def test_grpo_stops_on_request_and_resumes_from_its_checkpoint(tiny_model_dir, tiny_reward_model, tmp_path):
    from backend.training.run import run

    prompts = small_copy(tmp_path, "instructions.jsonl", 8)
    cfg = config(tiny_model_dir, prompts, "grpo", {"reward_model": str(tiny_reward_model)}, steps=3)
    cfg.train.save_steps = 1
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    rundir.request_stop(run_dir)  # honoured at the end of the first step
    assert run(run_dir) == 0 and rundir.read_status(run_dir)["state"] == "stopped"
    assert rundir.last_checkpoint(run_dir).name == "checkpoint-1"
    rundir.clear_stop_request(run_dir)
    assert run(run_dir, resume=True) == 0
    status = rundir.read_status(run_dir)
    assert status["state"] == "completed" and status["step"] == 3
    assert [e["step"] for e in rundir.read_events(run_dir)[0] if e["type"] == "alignment"] == [1, 2, 3]


def test_score_command_ranks_answers_and_measures_pair_accuracy(tiny_reward_model, tmp_path, capsys):
    import json

    from backend.cli import main

    code = main(["score", str(tiny_reward_model), "--prompt", "What is 2+2?", "--answer", "4", "--answer",
                 "five", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [s["answer"] for s in out["scores"]] == ["4", "five"]
    assert all(isinstance(s["score"], float) for s in out["scores"])

    code = main(["score", str(tiny_reward_model), "--data", str(small_copy(tmp_path, "preference.jsonl", 6)),
                 "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["pairs"] == 6 and 0.0 <= result["accuracy"] <= 1.0

    code = main(["score", str(tiny_reward_model), "--data", str(small_copy(tmp_path, "instructions.jsonl")),
                 "--json"])
    assert code == 2 and "prompt/chosen/rejected" in json.loads(capsys.readouterr().out)["error"]
