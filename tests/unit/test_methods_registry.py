"""The method registry, the meta skeleton, and validation against a model (no weights loaded)."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from backend.core.config import METHOD_NAMES, MethodConfig, RunConfig
from backend.core.precision import available_precisions
from backend.training.checks import check_run
from backend.methods import (
    METHODS, always_mergeable, apply_method, build_meta_model,
    count_parameters, exact_counts, get_method, linear_layer_names, register, target_shortcuts,
    validate_for_model,
)

FIRST_CUT = ["full", "last_layers", "lora", "qlora", "dora", "rslora", "loraplus"]


def llama(hidden=4096, layers=32, heads=32, kv=32, inter=11008, vocab=32000, max_pos=4096) -> LlamaConfig:
    return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                       max_position_embeddings=max_pos)


def cfg_for(name: str, **method) -> RunConfig:
    return RunConfig(method=MethodConfig(name=name, **method))


def test_first_cut_methods_are_registered_with_config_names():
    assert set(FIRST_CUT) <= set(METHODS)
    assert set(METHODS) <= set(METHOD_NAMES)


@pytest.mark.parametrize("name", FIRST_CUT)
def test_each_method_has_actionable_help_and_known_params(name):
    spec = METHODS[name]
    assert 40 < len(spec.help) < 320 and spec.help.count(". ") <= 2
    assert all(p in MethodConfig.model_fields for p in spec.params)
    ok, reason = spec.can_merge(cfg_for(name))
    assert isinstance(ok, bool) and (ok or reason)


def test_register_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        register("lora", can_merge=always_mergeable)


def test_register_refuses_params_that_are_not_config_fields(monkeypatch):
    from backend.core import catalog

    fake = catalog.MethodInfo("zz_test", "x", "x", "x", params=("rank_typo",), uses_peft=True, quantized=False)
    monkeypatch.setitem(catalog.METHODS, "zz_test", fake)
    with pytest.raises(ValueError, match="unknown MethodConfig fields"):
        register("zz_test", can_merge=always_mergeable)
    assert "zz_test" not in METHODS


def test_register_refuses_a_name_the_catalog_does_not_have():
    with pytest.raises(ValueError, match="not in backend.core.catalog"):
        register("zz_not_in_catalog", can_merge=always_mergeable)
    assert "zz_not_in_catalog" not in METHODS


def test_every_catalog_method_is_registered_and_nothing_else():
    from backend.core import catalog
    from backend.core.config import METHOD_NAMES

    assert list(METHODS) == list(catalog.METHODS) == list(METHOD_NAMES)
    assert all(METHODS[n].info is catalog.METHODS[n] for n in METHODS)


def test_unregistered_method_is_a_sentence():
    with pytest.raises(ValueError, match="not available yet; choose one of: full"):
        get_method("no_such_method")


def test_meta_model_has_no_storage_and_lists_llama_linear_layers():
    model = build_meta_model(llama(layers=2))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert linear_layer_names(model) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_linear_layers_of_gpt2_include_conv1d_and_exclude_head():
    names = linear_layer_names(GPT2Config(n_layer=2, n_embd=64, n_head=4))
    assert names == ["c_attn", "c_proj", "c_fc"]
    assert "lm_head" not in names


def test_shortcuts_pick_q_and_v_or_the_fused_projection():
    sep = target_shortcuts(["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert sep == {"attention only": ["q_proj", "k_proj", "v_proj", "o_proj"], "Q and V": ["q_proj", "v_proj"],
                   "all linear": "all-linear"}
    fused = target_shortcuts(["c_attn", "c_proj", "c_fc"], ["c_attn", "c_proj"])
    assert fused["Q and V"] == ["c_attn"]


def test_lora_r8_on_qkvo_of_a_7b_shape_is_the_seed_figure():
    # Seed worked example: 2 * d * r per matrix * 4 matrices * 32 layers = 8,388,608.
    cfg = cfg_for("lora", r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainable, total = count_parameters(apply_method(build_meta_model(llama()), cfg))
    assert trainable == 8_388_608
    assert total > 6_700_000_000


def test_full_trains_everything_and_last_layers_the_top_blocks():
    small = llama(hidden=64, layers=4, heads=4, kv=4, inter=128, vocab=100)
    full_t, full_total = count_parameters(apply_method(build_meta_model(small), cfg_for("full")))
    assert full_t == full_total
    model = apply_method(build_meta_model(small), cfg_for("last_layers", num_layers=2))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.layers.2.", "model.layers.3.", "model.norm.")) for n in names)
    assert "model.norm.weight" in names


def test_exact_counts_are_cached_and_ignore_unshown_fields():
    small = llama(hidden=64, layers=2, heads=4, kv=4, inter=128, vocab=100)
    a = exact_counts(cfg_for("lora", r=4), small)
    b = exact_counts(RunConfig(method=MethodConfig(name="lora", r=4, num_layers=1),
                               train={"batch_size": 1}), small)
    assert a == b and a[0] == 2 * (2 * 64 * 4 + (64 * 4 + 4 * 64))  # q and v, 2 layers


def test_dora_counts_a_magnitude_vector_per_target():
    small = llama(hidden=64, layers=2, heads=4, kv=4, inter=128, vocab=100)
    lora = exact_counts(cfg_for("lora", r=4), small)[0]
    dora = exact_counts(cfg_for("dora", r=4), small)[0]
    assert dora - lora == 2 * (64 + 64)  # one per output feature of q_proj and v_proj, per layer


def test_validation_names_missing_targets_and_lists_the_real_ones():
    errors = validate_for_model(cfg_for("lora", target_modules=["q_proj", "query"]), llama(layers=1))
    msg = errors["method.target_modules"]
    assert "'query'" in msg and "q_proj, k_proj" in msg and "'q_proj'" not in msg


def test_validation_refuses_a_sequence_longer_than_the_model_reads():
    cfg = RunConfig(data={"max_length": 8192})
    errors = validate_for_model(cfg, llama(layers=1, max_pos=2048))
    assert "at most 2048 tokens" in errors["data.max_length"]


def test_validation_refuses_more_layers_than_the_model_has():
    errors = validate_for_model(cfg_for("last_layers", num_layers=5), llama(layers=2))
    assert "has 2 layers" in errors["method.num_layers"]


def test_validation_refuses_a_model_that_is_not_a_causal_lm():
    from transformers import T5Config

    errors = validate_for_model(cfg_for("lora"), T5Config())
    assert "'t5' is not a causal language model" in errors["model"]


def test_precision_choices_follow_the_hardware():
    avail = available_precisions()
    assert "fp32" in avail
    if not torch.cuda.is_available():
        assert avail == ["fp32", "bf16"]
        cfg = RunConfig(train={"precision": "fp16"})
        errors = validate_for_model(cfg, llama(layers=1))
        assert "needs a CUDA GPU" in errors["train.precision"] and "fp32, bf16" in errors["train.precision"]


def test_valid_config_has_no_problems():
    cfg = RunConfig(train={"precision": "fp32"}, method={"name": "lora", "compute_dtype": "fp32"})
    assert validate_for_model(cfg, llama(layers=1)) == {}


def test_check_run_reports_ranges_and_a_missing_model_as_fields(tmp_path):
    _, errors = check_run({"method": {"r": 0, "alpha": 0}, "train": {"learning_rate": 0, "batch_size": 0}})
    assert {"method.r", "method.alpha", "train.learning_rate", "train.batch_size"} <= set(errors)
    _, errors = check_run({"model": str(tmp_path / "missing")})
    assert "model" in errors and "neither" in errors["model"]
    (tmp_path / "empty").mkdir()
    _, errors = check_run({"model": str(tmp_path / "empty")})
    assert "no config.json" in errors["model"]


def test_objective_and_method_mismatch_is_reported_before_training(tiny_model_dir):
    from backend.core.config import RunConfig
    from backend.core.models import load_model_config
    from backend.training.checks import run_problems

    cfg = RunConfig.model_validate({"model": str(tiny_model_dir), "objective": "dpo",
                                    "method": {"name": "prompt_tuning"}})
    errors = run_problems(cfg, load_model_config(str(tiny_model_dir)))
    assert "method.name" in errors
    assert "method.name" in check_run(cfg.model_dump())[1]


def test_data_checks_find_a_mapping_mismatch_and_an_objective_mismatch_without_a_model(tmp_path):
    import json as _json

    from backend.core.config import validate_config
    from backend.training.checks import data_problems, start_problems

    csv = tmp_path / "capitals.csv"
    csv.write_text("Question,Answer\nCapital of France?,Paris\nCapital of Peru?,Lima\n")
    # The sample's mapping on the user's CSV: refused before the start, at the mapping field.
    cfg = validate_config({"model": str(tmp_path / "never-loaded"),
                           "data": {"path": str(csv), "mapping": {"prompt": "instruction", "completion": "output"}}})
    problems = data_problems(cfg)
    assert "does not have" in problems["data.mapping"] and "Question" in problems["data.mapping"]
    assert start_problems(cfg).startswith("The mapping names column(s)")
    # Prompt/answer rows cannot train DPO.
    dpo = validate_config({"data": {"path": str(csv)}, "objective": "dpo"})
    assert "prompt/chosen/rejected pairs" in data_problems(dpo)["objective"]
    missing = validate_config({"data": {"path": str(tmp_path / "gone.jsonl")}})
    assert "does not exist" in data_problems(missing)["data.path"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(_json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    assert data_problems(validate_config({"data": {"path": str(pairs)}, "objective": "dpo"})) == {}
    assert data_problems(validate_config({"data": {"path": str(csv), "template": "nope"}}))["data.template"]
