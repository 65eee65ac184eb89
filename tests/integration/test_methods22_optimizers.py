"""Issue 22's optimizers and learning-rate groups on the tiny model: Lion and Muon take real steps, the
estimator's optimizer bytes equal the states they really hold, a package that is missing is a sentence, and
the embedding learning rate and layer-wise decay reach the optimizer's parameter groups."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from backend.core.config import RunConfig
from backend.core.models import load_model_config
from backend.estimator import estimate
from backend.methods import create_optimizer, decoder_layers, load_trainable_model, validate_for_model
from backend.methods.optimizers import optimizer_states, package_problem
from tests.method_steps import snapshot

pytestmark = pytest.mark.timeout(300)


def run_cfg(model_dir, method: str, optimizer: str = "adamw_torch", **train) -> RunConfig:
    return RunConfig(model=str(model_dir), method={"name": method, "r": 4, "dropout": 0.0},
                     train={"precision": "fp32", "gradient_checkpointing": False, "learning_rate": 1e-3,
                            "optimizer": optimizer, "weight_decay": 0.0, **train})


def steps(model, opt, n: int = 2) -> None:
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(n):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def held_bytes(st: dict) -> int:
    """The tensors one parameter's state keeps; scalars (step counts) aside, GaLore/APOLLO's projection
    matrix included (it sits inside a projector object, not in the state dict itself)."""
    total = 0
    for v in st.values():
        t = v if torch.is_tensor(v) else getattr(v, "ortho_matrix", None)
        if torch.is_tensor(t) and t.ndim > 0:
            total += t.numel() * t.element_size()
    return total


def state_bytes(opt) -> int:
    return sum(held_bytes(st) for st in optimizer_states(opt).values())


def moved_by_steps(model, opt) -> list[bool]:
    """Two real steps; for each parameter, whether they changed it."""
    before = snapshot(model)
    steps(model, opt)
    after = snapshot(model)
    return [not torch.equal(before[n], after[n]) for n in before]


def estimated_optimizer_bytes(cfg, model_dir) -> int:
    return estimate(cfg, gpus=[], model_config=load_model_config(str(model_dir))).terms_bytes["optimizer"]


def two_step_run(model_dir, tmp_path, method: dict, optimizer: str, **train):
    """A real two-step run through training.run (no validation); its run directory."""
    from backend.runs import rundir
    from backend.training.run import run
    from tests.samples import small_copy

    cfg = RunConfig.model_validate({
        "model": str(model_dir), "early_stopping": {"patience": None}, "method": method,
        "data": {"path": str(small_copy(tmp_path, "instructions.jsonl")), "validation_split": 0.0, "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "precision": "fp32",
                  "gradient_checkpointing": False, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                  "scheduler": "constant", "optimizer": optimizer, **train}})
    run_dir = rundir.create_run(tmp_path / "ws", cfg)
    assert run(run_dir) == 0, rundir.read_status(run_dir).get("error")
    events = rundir.read_events(run_dir)[0]
    assert [e["step"] for e in events if e["type"] == "train"] == [1, 2]
    return run_dir


@pytest.mark.parametrize("optimizer,method", [("lion", "lora"), ("lion", "full"), ("muon", "lora"),
                                              ("muon", "full"), ("adamw_torch", "full")])
def test_a_step_moves_the_weights_and_the_estimate_counts_the_real_states(tiny_model_dir, optimizer, method):
    cfg = run_cfg(tiny_model_dir, method, optimizer)
    model = load_trainable_model(cfg)
    opt = create_optimizer(model, cfg) or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    assert any(moved_by_steps(model, opt))
    assert state_bytes(opt) == estimated_optimizer_bytes(cfg, tiny_model_dir)


def test_lion_keeps_half_of_adamw_and_muon_leaves_the_embeddings_to_adamw(tiny_model_dir):
    mc = load_model_config(str(tiny_model_dir))
    opt_bytes = {o: estimate(run_cfg(tiny_model_dir, "full", o), gpus=[], model_config=mc).terms_bytes["optimizer"]
                 for o in ("adamw_torch", "lion", "muon")}
    assert opt_bytes["lion"] * 2 == opt_bytes["adamw_torch"]
    assert opt_bytes["lion"] < opt_bytes["muon"] < opt_bytes["adamw_torch"]
    cfg = run_cfg(tiny_model_dir, "full", "muon")
    model = load_trainable_model(cfg)
    opt = create_optimizer(model, cfg)
    muon, adamw = opt.parts
    emb = model.get_input_embeddings().weight
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert any(p is emb for g in adamw.param_groups for p in g["params"])
    assert all(p.ndim == 2 and p is not emb for g in muon.param_groups for p in g["params"])


@pytest.mark.parametrize("optimizer", ["schedule_free_adamw", "galore_adamw", "apollo_adamw"])
def test_an_optimizer_whose_package_is_missing_is_a_sentence(tiny_model_dir, optimizer):
    from backend.core.catalog import OPTIMIZERS

    cfg = run_cfg(tiny_model_dir, "full", optimizer)
    problems = validate_for_model(cfg, load_model_config(str(tiny_model_dir)))
    if importlib.util.find_spec(OPTIMIZERS[optimizer].package) is None:
        assert "pip install" in problems["train.optimizer"] and package_problem(optimizer)
    else:
        assert "train.optimizer" not in problems


def _lr_of(opt) -> dict[int, float]:
    return {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}


def test_layer_wise_decay_gives_each_block_its_rate(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, "full", layer_lr_decay=0.5)
    model = load_trainable_model(cfg)
    lrs = _lr_of(create_optimizer(model, cfg))
    layers = decoder_layers(model)
    assert len(layers) == 2
    assert {lrs[id(p)] for p in layers[1].parameters()} == {1e-3}        # the top block: the main rate
    assert {lrs[id(p)] for p in layers[0].parameters()} == {5e-4}        # one below: x 0.5
    # The tiny model ties its head to the embeddings: the shared matrix is also the top, so it keeps the main
    # rate; an untied embedding sits below every block (x 0.5 ** 2).
    assert lrs[id(model.get_input_embeddings().weight)] == 1e-3
    assert lrs[id(model.model.norm.weight)] == 1e-3
    # Off (1.0): the Trainer builds its own optimizer, one rate for all.
    assert create_optimizer(model, run_cfg(tiny_model_dir, "full")) is None
    problems = validate_for_model(run_cfg(tiny_model_dir, "lora", layer_lr_decay=0.5),
                                  load_model_config(str(tiny_model_dir)))
    assert "train.layer_lr_decay" in problems


def test_embedding_learning_rate_reaches_the_trained_embedding_copy(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, "longlora", embedding_learning_rate=1e-4)
    model = load_trainable_model(cfg)
    opt = create_optimizer(model, cfg)
    lrs = {n: _lr_of(opt)[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    emb = [n for n in lrs if "embed_tokens" in n]
    assert emb and all(lrs[n] == 1e-4 for n in emb)
    assert all(v == 1e-3 for n, v in lrs.items() if n not in emb) and any("lora_" in n for n in lrs)
    problems = validate_for_model(run_cfg(tiny_model_dir, "loraplus", embedding_learning_rate=1e-4),
                                  load_model_config(str(tiny_model_dir)))
    assert "train.embedding_learning_rate" in problems


@pytest.mark.parametrize("optimizer,method,train", [("muon", "full", {"layer_lr_decay": 0.8}),
                                                    ("lion", "lora", {})])
def test_the_trainer_runs_the_studios_optimizer_and_keeps_its_rates(tiny_model_dir, tmp_path, optimizer, method,
                                                                    train):
    from backend.runs import rundir

    run_dir = two_step_run(tiny_model_dir, tmp_path, {"name": method, "r": 4, "dropout": 0.0}, optimizer,
                           save_steps=1, **train)
    assert (rundir.checkpoints_dir(run_dir) / "checkpoint-2" / "optimizer.pt").is_file()


# The optimizers transformers builds from packages of their own: a real Trainer over the studio's own
# arguments (training_args), so the optimizer class, the projected parameter group and its states are what a
# run gets. The packages are dev dependencies; a machine without one checks the sentence above instead.
PACKAGED = ["schedule_free_adamw", "galore_adamw", "apollo_adamw"]


def _needs_package(optimizer: str) -> None:
    from backend.core.catalog import OPTIMIZERS
    pytest.importorskip(OPTIMIZERS[optimizer].package)


def _trainer_optimizer(model_dir, optimizer, tmp_path):
    from transformers import Trainer

    from backend.training.run import training_args

    cfg = run_cfg(model_dir, "full", optimizer)
    model = load_trainable_model(cfg)
    trainer = Trainer(model=model, args=training_args(cfg, tmp_path, has_eval=False))
    return cfg, model, trainer, trainer.create_optimizer()


@pytest.mark.parametrize("optimizer", PACKAGED)
def test_a_packaged_optimizer_takes_real_steps_and_holds_what_the_estimate_says(tiny_model_dir, tmp_path,
                                                                               optimizer):
    _needs_package(optimizer)
    cfg, model, _, opt = _trainer_optimizer(tiny_model_dir, optimizer, tmp_path)
    assert type(opt).__module__.split(".")[0] == {"schedule_free_adamw": "schedulefree",
                                                  "galore_adamw": "galore_torch",
                                                  "apollo_adamw": "apollo_torch"}[optimizer]
    if hasattr(opt, "train"):
        opt.train()  # schedule-free steps only in training mode (the Trainer's training step does this)
    assert all(moved_by_steps(model, opt))
    assert state_bytes(opt) == estimated_optimizer_bytes(cfg, tiny_model_dir)


@pytest.mark.parametrize("optimizer", ["galore_adamw", "apollo_adamw"])
def test_galore_and_apollo_project_only_the_linear_weights(tiny_model_dir, tmp_path, optimizer):
    _needs_package(optimizer)
    _, model, _, opt = _trainer_optimizer(tiny_model_dir, optimizer, tmp_path)
    steps(model, opt)
    names = {id(p): n for n, p in model.named_parameters()}
    projected = {names[id(p)] for p, st in opt.state.items() if "projector" in st}
    linear = {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert projected == linear & set(names.values())  # the tied head is the embedding: not projected
    q = model.model.layers[0].self_attn.q_proj.weight
    st = opt.state[q]
    full = 2 * q.numel() * q.element_size()
    if optimizer == "galore_adamw":
        # GaLore's rank (128) is capped at the 64 x 64 matrix's side: states of the matrix's own size.
        assert st["exp_avg"].shape == q.shape and st["projector"].ortho_matrix.shape == (64, 64)
    else:
        # APOLLO's random projection keeps its full rank, more than a small matrix needs.
        assert st["exp_avg"].shape == (64, 128) and st["projector"].ortho_matrix.shape == (128, 64)
        assert held_bytes(st) > full


def test_schedule_free_is_saved_at_its_averaged_weights(tiny_model_dir, tmp_path):
    _needs_package("schedule_free_adamw")
    from backend.training.run import settle_schedule_free

    _, model, trainer, opt = _trainer_optimizer(tiny_model_dir, "schedule_free_adamw", tmp_path)
    opt.train()
    steps(model, opt, n=3)
    training_point = snapshot(model)
    assert settle_schedule_free(trainer) is True
    averaged = snapshot(model)
    assert any(not torch.equal(training_point[n], averaged[n]) for n in averaged)
    assert settle_schedule_free(trainer) is False  # already at the averaged weights: nothing moves twice
    assert all(torch.equal(averaged[n], v) for n, v in snapshot(model).items())
    _, _, other, _ = _trainer_optimizer(tiny_model_dir, "adamw_torch", tmp_path / "plain")
    assert settle_schedule_free(other) is False


@pytest.mark.parametrize("optimizer", PACKAGED)
def test_a_run_trains_and_saves_with_a_packaged_optimizer(tiny_model_dir, tmp_path, optimizer, capsys):
    _needs_package(optimizer)
    from backend.runs import rundir

    run_dir = two_step_run(tiny_model_dir, tmp_path, {"name": "full"}, optimizer, save_steps=2)
    assert rundir.read_status(run_dir)["state"] == "completed"
    # The run ends on a training step (no validation), so only schedule-free has weights to switch.
    assert ("averaged ones" in capsys.readouterr().out) == (optimizer == "schedule_free_adamw")
