"""The Method tab's event handlers, called as Gradio would call them (no browser), on the tiny model."""
from __future__ import annotations

import time

import gradio as gr
import pytest
import yaml

from backend.core.config import validate_config
from studio.context import StudioContext, default_run_config


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    from studio.tabs import method

    ws = tmp_path_factory.mktemp("ws")
    with gr.Blocks() as demo:
        ctx = StudioContext(workspace=ws, run_config=gr.State(default_run_config()))
        method.build(ctx)
    fns = {}
    for bf in demo.fns.values():
        fns.setdefault(bf.fn.__name__, bf)
    return demo, fns, ws


@pytest.fixture(autouse=True)
def tiny_model_readable(tiny_model_dir):
    """The studio reads models only where its policy allows: let it read the test model's folder, as
    `--allow-path` would."""
    from backend.core import access

    access.allow_paths([tiny_model_dir.parent])
    yield
    access.allow_paths([])


def by_id(out: dict) -> dict:
    res = {}
    for comp, value in out.items():
        key = comp.elem_id or ("run_config" if isinstance(comp, gr.State) else type(comp).__name__)
        res[key] = value
    return res


def edit_args(fns, rc, **by_label):
    """Inputs of on_edit at their defaults, with rc and the given widgets (by elem_id or label) changed."""
    inputs = fns["on_edit"].inputs
    values = [c.value for c in inputs]
    values[-1] = rc
    values[0] = rc["model"]  # the model field, as on_inspect would have left it
    for i, c in enumerate(inputs):
        for key, v in by_label.items():
            if key in (c.elem_id, getattr(c, "label", None)):
                values[i] = v
    return values


def test_key_components_carry_elem_ids_for_browser_tests(tab):
    demo, _, _ = tab
    ids = {c.get("props", {}).get("elem_id") for c in demo.get_config_file()["components"]}
    assert {"method-model", "method-name", "method-estimate", "method-fits", "method-errors"} <= ids


def test_inspect_lists_the_linear_layers_and_writes_the_model(tab, tiny_model_dir):
    _, fns, _ = tab
    out = by_id(fns["on_inspect"].fn(str(tiny_model_dir), ["q_proj", "v_proj"], False, default_run_config()))
    assert out["method-targets"]["choices"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"]
    assert "2 layers" in out["method-model-info"] and out["run_config"]["model"] == str(tiny_model_dir)
    assert not out["method-err-model"]["visible"]


def test_inspect_of_a_missing_directory_says_so_at_the_model_field(tab, tmp_path):
    _, fns, _ = tab
    out = by_id(fns["on_inspect"].fn(str(tmp_path / "nope"), [], False, default_run_config()))
    # Outside the folders the studio may read, missing and not allowed get one sentence (backend.core.access).
    assert out["method-err-model"]["visible"] and "cannot be used" in out["method-err-model"]["value"]


def test_bad_values_are_refused_at_their_fields(tab, tiny_model_dir):
    _, fns, _ = tab
    rc = {**default_run_config(), "model": str(tiny_model_dir)}
    out = by_id(fns["on_edit"].fn(*edit_args(fns, rc, **{"Rank (r)": 0, "Batch size": 0, "Learning rate": -1})))
    assert out["method-err-method-r"] == {"__type__": "update", "value": "Rank (r) must be at least 1 (got 0).",
                                          "visible": True}
    assert out["method-err-train-batch_size"]["visible"] and out["method-err-train-learning_rate"]["visible"]
    assert "Rank (r) must be at least 1" in out["method-errors"]
    out = by_id(fns["on_edit"].fn(*edit_args(fns, rc, **{"method-targets": ["q_proj", "query"],
                                                       "Max sequence length": 4096})))
    assert "no linear layer named 'query'" in out["method-err-method-target_modules"]["value"]
    assert "at most 1024 tokens" in out["method-err-data-max_length"]["value"]


def test_switching_method_shows_only_its_fields_and_help(tab, tiny_model_dir):
    _, fns, _ = tab
    rc = {**default_run_config(), "model": str(tiny_model_dir)}
    inputs = fns["on_edit"].inputs
    out = fns["on_edit"].fn(*edit_args(fns, rc, **{"method-name": "last_layers", "Top layers that train": 1}))
    ids = by_id(out)
    assert ids["run_config"]["method"]["name"] == "last_layers" and ids["run_config"]["method"]["num_layers"] == 1
    assert "top N transformer blocks" in ids["method-help"]
    visible = {c.elem_id for c, u in out.items() if isinstance(c, gr.Column) and u.get("visible")}
    assert visible == {"method-col-method-num_layers"}
    assert ids["run_config"]["data"]["path"] == rc["data"]["path"]
    assert len(inputs) > 30


def test_the_estimate_updates_fast_once_the_model_is_inspected(tab, tiny_model_dir):
    _, fns, _ = tab
    rc = {**default_run_config(), "model": str(tiny_model_dir)}
    fns["on_state"].fn(rc, None)  # first call builds and caches the meta skeleton
    rc["train"]["batch_size"] = 2
    start = time.perf_counter()
    out = by_id(fns["on_state"].fn(rc, None))
    assert time.perf_counter() - start < 0.25
    assert len(out["method-estimate"].data) == 6
    assert "Trainable parameters:** 7,168 of" in out["method-estimate-details"]
    out = by_id(fns["on_state"].fn(rc, 24))
    assert out["method-fits"].startswith("✅")


def test_presets_apply_save_and_export(tab, tiny_model_dir):
    _, fns, ws = tab
    rc = {**default_run_config(), "model": str(tiny_model_dir)}
    rc["data"]["path"] = "my.jsonl"
    out = by_id(fns["on_preset"].fn("lora-attention-fast", rc))
    assert out["run_config"]["method"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert out["run_config"]["data"]["path"] == "my.jsonl" and out["method-name"] == "lora"
    saved = by_id(fns["on_save"].fn("Team default", out["run_config"]))
    assert (ws / "presets" / "team-default.yaml").exists() and saved["method-preset"]["value"] == "team-default"
    assert "data" in yaml.safe_load((ws / "presets" / "team-default.yaml").read_text())
    exported = by_id(fns["on_export"].fn(out["run_config"]))
    cfg = validate_config(yaml.safe_load(open(exported["method-export-file"]).read()))
    assert cfg.method.r == 8 and cfg.data.path == "my.jsonl"
