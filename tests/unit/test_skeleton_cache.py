"""The estimator's skeleton: LoRA counts at any rank and target set, counted from the linear layers' shapes,
equal PEFT's; a disk cache serves new processes."""
import dataclasses

import pytest

from backend.core.config import RunConfig
from backend.estimator import skeleton as S


@pytest.fixture()
def model_config(tiny_model_dir):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(str(tiny_model_dir))


def _cfg(model_dir, **method):
    return RunConfig.model_validate({"model": str(model_dir), "method": {"name": "lora", **method}})


@pytest.mark.parametrize("method", [{"r": 8}, {"r": 16, "target_modules": ["q_proj", "v_proj"]},
                                    {"name": "rslora", "r": 4, "target_modules": ["down_proj"]},
                                    {"r": 1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                                    {"r": 32, "target_modules": ["gate_proj", "up_proj", "down_proj"]},
                                    {"r": 12, "target_modules": "all-linear"},
                                    {"r": 4, "target_modules": ["lm_head", "q_proj"]},
                                    {"name": "qlora", "r": 64, "target_modules": ["self_attn.o_proj"]},
                                    {"name": "loraplus", "r": 2, "target_modules": "all-linear"}])
def test_rank_derived_lora_counts_equal_peft_applied_counts(tiny_model_dir, model_config, workspace, method):
    from backend.methods.skeleton import count_parameters

    cfg = _cfg(tiny_model_dir, **method)
    derived = S.derived_lora_shape(model_config, cfg)
    applied = S.shape_of(model_config, cfg)  # PEFT applied to a meta model
    assert derived is not None
    assert dataclasses.asdict(derived) == dataclasses.asdict(applied)
    from backend.methods import apply_method, build_meta_model
    peft_model = apply_method(build_meta_model(model_config), cfg)
    assert derived.trainable_params == count_parameters(peft_model)[0]


def test_a_new_process_reads_the_skeleton_from_disk_without_building(tiny_model_dir, model_config, workspace,
                                                                     monkeypatch):
    cfg = _cfg(tiny_model_dir, r=8)
    S._shape_cached.cache_clear()  # earlier tests' skeletons were kept in another workspace
    S._DERIVED.clear()
    first = S.cached_shape(model_config, cfg)
    assert list((workspace / "cache" / "skeletons").glob("*.json"))
    S._shape_cached.cache_clear()  # as in a fresh process
    S._DERIVED.clear()

    def no_build(*a, **k):
        raise AssertionError("the skeleton was rebuilt instead of read from disk")

    monkeypatch.setattr(S, "shape_of", no_build)  # the probe comes from disk; rank 8 is counted from it
    assert S.cached_shape(model_config, cfg) == first
    S._shape_cached.cache_clear()
    S._DERIVED.clear()


def test_a_target_change_is_counted_without_applying_peft(tiny_model_dir, model_config, workspace, monkeypatch):
    S.cached_shape(model_config, _cfg(tiny_model_dir, r=8))  # the probe skeleton is built once

    def no_build(*a, **k):
        raise AssertionError("PEFT was applied again for a target change")

    monkeypatch.setattr(S, "shape_of", no_build)
    for targets in (["q_proj"], ["k_proj", "down_proj"], "all-linear"):
        for r in (3, 40):
            assert S.cached_shape(model_config, _cfg(tiny_model_dir, r=r, target_modules=targets)).adapter_trainable > 0


def test_a_target_that_is_not_a_linear_layer_is_built(tiny_model_dir, model_config, workspace):
    assert S.derived_lora_shape(model_config, _cfg(tiny_model_dir, target_modules=["embed_tokens"])) is None
