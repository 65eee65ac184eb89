"""The speed-switch policy (backend.core.kernels) and how training applies it, on CPU.

The machines are made up: a CPU, and CUDA cards with and without the kernel packages, so every
branch of "auto" is checked here without a GPU.
"""
from __future__ import annotations

import pytest

from backend.core import catalog, kernels
from backend.core.config import ConfigError, RunConfig, validate_config
from backend.core.kernels import KernelMachine, by_switch, kernel_problems, load_kwargs, select_kernels

CPU = KernelMachine(cuda=False)
BARE_GPU = KernelMachine(cuda=True, capability=(9, 0))
FAST_GPU = KernelMachine(cuda=True, capability=(9, 0), packages=frozenset(kernels.PACKAGES))
TURING = KernelMachine(cuda=True, capability=(7, 5), packages=frozenset(kernels.PACKAGES))


def cfg(**train) -> RunConfig:
    method = train.pop("method", "lora")
    return RunConfig.model_validate({"method": {"name": method}, "train": train})


def test_every_switch_defaults_to_auto_and_is_off_on_a_cpu_with_a_sentence():
    c = cfg()
    assert (c.train.liger_kernel, c.train.attention, c.train.fused_adamw, c.train.torch_compile) == ("auto",) * 4
    choices = select_kernels(c, CPU)
    assert [x.switch for x in choices] == list(kernels.SWITCHES)
    for x in choices:
        assert not x.on and not x.problem
        assert x.reason.endswith(".") and len(x.reason.split()) > 4
    assert "CUDA" in by_switch(choices)["liger_kernel"].reason
    assert kernel_problems(c, CPU) == {}


def test_auto_turns_on_what_a_gpu_with_the_packages_has():
    s = by_switch(select_kernels(cfg(), FAST_GPU))
    assert s["liger_kernel"].on and s["fused_adamw"].on and s["attention"].on
    assert s["attention"].value == "flash_attention_2"
    assert s["fused_adamw"].value == "adamw_torch_fused"
    assert not s["torch_compile"].on and "opt-in" in s["torch_compile"].reason  # never on by itself


def test_auto_says_which_package_is_missing_on_a_bare_gpu():
    s = by_switch(select_kernels(cfg(), BARE_GPU))
    assert not s["liger_kernel"].on and "liger-kernel is not installed" in s["liger_kernel"].reason
    assert not s["attention"].on and "flash-attn is not installed" in s["attention"].reason
    assert s["fused_adamw"].on  # torch's own kernel needs no package


@pytest.mark.parametrize("machine, settings, needle", [
    (FAST_GPU, {"precision": "fp32"}, "bf16 or fp16"),
    (TURING, {}, "Ampere"),
    (FAST_GPU, {"method": catalog.METHOD.prefix_tuning}, "virtual tokens"),
])
def test_auto_keeps_flash_attention_off_where_it_is_not_known_correct(machine, settings, needle):
    att = by_switch(select_kernels(cfg(**settings), machine))["attention"]
    assert not att.on and not att.problem and needle in att.reason


def test_methods_that_cannot_take_a_switch_keep_it_off_with_the_reason():
    s = by_switch(select_kernels(cfg(method=catalog.METHOD.adapter_houlsby), FAST_GPU))
    assert not s["liger_kernel"].on and "adapters" in s["liger_kernel"].reason
    s = by_switch(select_kernels(cfg(method=catalog.METHOD.loraplus), FAST_GPU))
    assert not s["fused_adamw"].on and "own optimizer" in s["fused_adamw"].reason
    s = by_switch(select_kernels(cfg(optimizer=catalog.OPTIMIZER.adamw_8bit), FAST_GPU))
    assert not s["fused_adamw"].on and "adamw_8bit" in s["fused_adamw"].reason
    s = by_switch(select_kernels(cfg(method=catalog.METHOD.longlora), FAST_GPU))
    assert not s["attention"].on and "S²-Attn" in s["attention"].reason


def test_asking_for_a_switch_this_machine_cannot_run_is_a_problem_at_its_field():
    c = cfg(liger_kernel="on", attention="flash_attention_2", fused_adamw="on")
    problems = kernel_problems(c, CPU)
    assert set(problems) == {"train.liger_kernel", "train.attention", "train.fused_adamw"}
    assert kernel_problems(c, FAST_GPU) == {}
    assert "train.torch_compile" in kernel_problems(cfg(torch_compile="on", method=catalog.METHOD.qlora), FAST_GPU)
    assert kernel_problems(cfg(torch_compile="on"), CPU) == {}  # compile runs on a CPU too


def test_off_is_off_everywhere():
    c = cfg(liger_kernel="off", fused_adamw="off", torch_compile="off", attention="sdpa")
    s = by_switch(select_kernels(c, FAST_GPU))
    assert not s["liger_kernel"].on and not s["fused_adamw"].on and not s["torch_compile"].on
    assert s["attention"].value == "sdpa"


def test_attention_takes_a_hub_kernel_repo_and_refuses_anything_else():
    c = cfg(attention="kernels-community/flash-attn2")
    att = by_switch(select_kernels(c, FAST_GPU))["attention"]
    assert att.on and att.value == "kernels-community/flash-attn2"
    assert "kernels package" in kernel_problems(c, BARE_GPU)["train.attention"]
    with pytest.raises(ConfigError) as e:
        validate_config({"train": {"attention": "fast please"}})
    assert "train.attention" in e.value.fields and "owner/name" in e.value.fields["train.attention"]


def test_the_loader_names_an_attention_only_when_one_was_chosen():
    assert load_kwargs(cfg(), CPU) == {}  # transformers' own default (sdpa, or eager for a model without it)
    assert load_kwargs(cfg(), FAST_GPU) == {"attn_implementation": "flash_attention_2"}
    assert load_kwargs(cfg(attention="eager"), CPU) == {"attn_implementation": "eager"}
    assert load_kwargs(cfg(attention="flash_attention_2"), CPU) == {}  # a problem: refused before loading
    assert load_kwargs(cfg(method=catalog.METHOD.longlora), FAST_GPU) == {}


def test_the_methods_with_their_own_optimizer_are_the_registrys():
    from backend.methods.registry import get_method

    own = {n for n in catalog.METHODS if get_method(n).optimizer is not None}
    assert own == set(kernels.OWN_OPTIMIZER_METHODS)


def test_trainer_arguments_follow_the_choices():
    from backend.training.kernels import trainer_kwargs

    assert trainer_kwargs(select_kernels(cfg(), CPU)) == {}
    kw = trainer_kwargs(select_kernels(cfg(torch_compile="on"), FAST_GPU))
    assert kw["use_liger_kernel"] is True and kw["torch_compile"] is True
    # TRL's chunked LM head computes the loss: Liger's fused cross-entropy must stay off.
    assert kw["liger_kernel_config"]["fused_linear_cross_entropy"] is False
    assert kw["optim"] == "adamw_torch_fused"


def test_a_run_refuses_a_switch_it_cannot_have_with_a_sentence():
    from backend.core.errors import UserError
    from backend.training.kernels import choices_for_run

    with pytest.raises(UserError) as e:
        choices_for_run(cfg(liger_kernel="on"), CPU)
    assert "Liger" in str(e.value) and "auto" in str(e.value)


def test_sft_config_gets_the_fused_optimizer_and_liger_on_a_gpu(monkeypatch, tmp_path):
    from backend.training.run import training_args

    monkeypatch.setattr(kernels, "this_machine", lambda: FAST_GPU)
    args = training_args(cfg(), tmp_path, has_eval=False)
    assert args.use_liger_kernel is True and str(args.optim.value if hasattr(args.optim, "value") else args.optim) \
        == "adamw_torch_fused"
    monkeypatch.setattr(kernels, "this_machine", lambda: CPU)
    args = training_args(cfg(), tmp_path, has_eval=False)
    assert args.use_liger_kernel is False and not args.torch_compile
    assert str(getattr(args.optim, "value", args.optim)) == "adamw_torch"


def test_the_checks_show_a_switch_problem_at_its_field(monkeypatch):
    from backend.training import checks

    monkeypatch.setattr(checks, "validate_for_model", lambda c, m: {})
    monkeypatch.setattr(checks, "validate_objective", lambda c: {})
    monkeypatch.setattr(kernels, "this_machine", lambda: CPU)
    found = checks.run_problems(cfg(liger_kernel="on"), model_config=None)
    assert "CUDA" in found["train.liger_kernel"]


def test_a_named_attention_reaches_the_loaded_model(tiny_model_dir):
    from backend.methods import load_trainable_model

    c = RunConfig.model_validate({"model": str(tiny_model_dir), "method": {"name": "lora"},
                                  "train": {"attention": "eager", "precision": "fp32"}})
    model = load_trainable_model(c)
    assert model.config._attn_implementation == "eager"


def test_this_machine_is_probed_without_importing_the_kernel_packages():
    import sys

    kernels.installed_packages.cache_clear()
    kernels.this_machine.cache_clear()
    m = kernels.this_machine()
    assert isinstance(m.packages, frozenset) and m.packages <= set(kernels.PACKAGES)
    assert "liger_kernel" not in sys.modules and "flash_attn" not in sys.modules
    assert kernels.planned_machine("cuda").cuda and not kernels.planned_machine("cpu").cuda
