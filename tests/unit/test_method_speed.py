"""The Method tab's speed switches: their fields and the line saying what is on here and why."""
from __future__ import annotations

from backend.core import kernels
from backend.core.config import RunConfig
from studio.tabs.method_speed import SPEED_FIELDS, speed_text
from studio.tabs.method_fields import field_info, label_of


def rc(**train) -> dict:
    return RunConfig.model_validate({"train": train}).model_dump(mode="json")


def test_each_switch_is_a_config_field_with_a_label_and_a_description():
    for path in SPEED_FIELDS:
        assert field_info(path).description and label_of(path)


def test_on_a_cpu_every_switch_is_off_with_its_reason(monkeypatch):
    monkeypatch.setattr(kernels, "this_machine", lambda: kernels.KernelMachine(cuda=False))
    text = speed_text(rc())
    assert text.count("**off**") == 4 and "this machine has none" in text


def test_a_gpu_with_the_packages_shows_them_on_and_a_switch_asked_for_that_cannot_run(monkeypatch):
    gpu = kernels.KernelMachine(cuda=True, capability=(9, 0), packages=frozenset(kernels.PACKAGES))
    monkeypatch.setattr(kernels, "this_machine", lambda: gpu)
    text = speed_text(rc())
    assert "Liger kernels: **on**" in text and "Attention: **on** (flash_attention_2)" in text
    monkeypatch.setattr(kernels, "this_machine", lambda: kernels.KernelMachine(cuda=False))
    assert "Liger kernels: **cannot run here**" in speed_text(rc(liger_kernel="on"))


def test_a_config_with_errors_shows_no_speed_line():
    bad = rc()
    bad["train"]["attention"] = "not an attention"
    assert speed_text(bad) == ""


def test_the_method_tab_builds_with_the_switches_and_their_reasons(tmp_path):
    import gradio as gr

    from studio.context import StudioContext, default_run_config
    from studio.tabs import method

    built = {}
    real = method.speed_layout

    def spy(v, rc0):
        real(v, rc0)
        built["view"] = v

    method.speed_layout = spy
    try:
        with gr.Blocks():
            method.build(StudioContext(workspace=tmp_path, run_config=gr.State(default_run_config())))
    finally:
        method.speed_layout = real
    v = built["view"]
    assert all(p in v.widgets for p in SPEED_FIELDS)
    assert v.speed_md is not None and v.speed_md in v.state_outputs
