"""OFT and BOFT (issue 22): after real training steps each adapted linear's weight has changed but is an
orthogonal transform of the original (its singular values are the base's; BOFT's after its per-output scale),
and the studio's merge gives the unmerged adapter's logits."""
from __future__ import annotations

import re
import pytest
import torch

from backend.core.config import RunConfig, save_config
from backend.core.models import load_causal_lm, load_model_config
from backend.methods import count_parameters, load_trainable_model, validate_for_model
from tests.method_steps import snapshot, train_steps

pytestmark = pytest.mark.timeout(300)
PROBE = torch.arange(10, 30).unsqueeze(0)
TARGETS = ["q_proj", "v_proj", "down_proj"]  # inputs of 64 and 128 features on the tiny model
TRAINS = {"oft": r".*\.(q_proj|v_proj|down_proj)\.oft_R\.default\.weight$",
          "boft": r".*\.(q_proj|v_proj|down_proj)\.boft_[Rs]\.default$"}


def run_cfg(model_dir, name: str, **method) -> RunConfig:
    return RunConfig(model=str(model_dir),
                     method={"name": name, "oft_block_size": 8, "target_modules": TARGETS, **method},
                     train={"precision": "fp32", "gradient_checkpointing": False, "learning_rate": 2e-2,
                            "weight_decay": 0.0})


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


def effective_weight(module) -> torch.Tensor:
    """The adapted linear as one matrix, read from its forward: module(I) = I W_eff^T (the layers have no bias)."""
    eye = torch.eye(module.in_features)
    with torch.no_grad():
        return module(eye).T


def adapted(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "oft_R") or hasattr(m, "boft_R")}


@pytest.mark.parametrize("name,settings,tol", [
    ("oft", {"oft_cayley_neumann": False}, 1e-5),   # the exact Cayley transform: orthogonal to float precision
    ("oft", {}, 1e-3),                               # the Neumann series: orthogonal up to its truncation
    ("boft", {}, 1e-5),
])
def test_trained_weights_are_rotations_of_the_base_and_merge_keeps_the_logits(tiny_model_dir, tmp_path, name,
                                                                               settings, tol):
    from backend.estimator import estimate
    from backend.export.merge import merge_adapter

    cfg = run_cfg(tiny_model_dir, name, **settings)
    assert validate_for_model(cfg, load_model_config(cfg.model)) == {}
    model = load_trainable_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.match(TRAINS[name], n) for n in trainable), sorted(trainable)[:4]
    assert estimate(cfg).trainable_params == count_parameters(model)[0]

    before = snapshot(model)
    train_steps(model, cfg, steps=3)
    after = snapshot(model)
    assert {n for n in trainable if not torch.equal(before[n], after[n])} == trainable

    base = load_causal_lm(str(tiny_model_dir), dtype=torch.float32)
    layers = adapted(model)
    assert len(layers) == 2 * len(TARGETS)  # two blocks
    for path, module in layers.items():
        original = base.get_submodule(path.removeprefix("base_model.model.")).weight.detach()
        w = effective_weight(module)
        if name == "boft":  # BOFT also scales each output feature; the rotation is what remains
            w = w / module.boft_s["default"].detach()
        assert (w - original).abs().max() > 1e-3, path  # the weight really moved...
        # ...but only by a rotation of its input: the same singular values (its norm, too).
        torch.testing.assert_close(torch.linalg.svdvals(w), torch.linalg.svdvals(original), atol=tol, rtol=tol)

    # The studio's merge (a run directory, as the Merge tab passes it) folds the rotation into the weights.
    trained = logits(model)
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    model.save_pretrained(str(run / "adapter"))
    res = merge_adapter(run, tmp_path / "merged")
    merged = load_causal_lm(res["out"], dtype=torch.float32)
    assert not any("oft" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), trained, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits(base), trained, atol=1e-3)  # the merged model is not just the base


def test_a_block_size_that_does_not_divide_the_widths_is_a_sentence_with_one_that_does(tiny_model_dir):
    mc = load_model_config(str(tiny_model_dir))
    for name in ("oft", "boft"):
        problems = validate_for_model(run_cfg(tiny_model_dir, name, oft_block_size=24), mc)
        sentence = problems["method.oft_block_size"]
        assert "24" in sentence and "a block size of 16 fits" in sentence, sentence
    assert "method.oft_block_size" not in validate_for_model(run_cfg(tiny_model_dir, "oft", oft_block_size=32), mc)


def trainer_run(tmp_path, model_dir, method: dict) -> "Path":
    """A real run through the training entry point (our SFT batches, the Trainer, the saved adapter)."""
    import json

    from backend.runs import rundir
    from backend.training.run import run

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "completion": "apple pie"}) + "\n" for i in range(8)))
    cfg = RunConfig.model_validate({
        "model": str(model_dir), "method": method,
        "early_stopping": {"patience": None}, "data": {"path": str(data), "validation_split": 0.0, "max_length": 32},
        "train": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "learning_rate": 1e-2, "eval_steps": 50}})
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    assert run(run_dir) == 0, rundir.read_status(run_dir).get("error")
    losses = [e["loss"] for e in rundir.read_events(run_dir)[0] if e["type"] == "train"]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    return run_dir


@pytest.mark.parametrize("name", ["oft", "boft"])
def test_the_trainer_trains_and_saves_an_adapter_that_reloads(tiny_model_dir, tmp_path, name):
    from peft import PeftModel

    from backend.runs import rundir

    run_dir = trainer_run(tmp_path, tiny_model_dir, {"name": name, "oft_block_size": 8})  # with checkpointing
    reloaded = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir), dtype=torch.float32),
                                         str(rundir.adapter_dir(run_dir)))
    assert logits(reloaded).isfinite().all()
    assert not torch.allclose(logits(reloaded), logits(load_causal_lm(str(tiny_model_dir), dtype=torch.float32)),
                              atol=1e-4)


def test_gpt2_style_conv1d_layers_are_refused_with_a_sentence():
    from transformers import GPT2Config

    cfg = RunConfig(method={"name": "oft", "oft_block_size": 8, "target_modules": "all-linear"})
    problems = validate_for_model(cfg, GPT2Config(n_layer=2, n_embd=64, n_head=4))
    assert "Conv1D" in problems["method.target_modules"] and "LoRA" in problems["method.target_modules"]
