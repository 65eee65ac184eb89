"""Merging, combining and exporting adapters on the tiny model (CPU, seconds)."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from backend.core.errors import UserError


def make_lora_run(root: Path, base_dir: Path, name: str = "run-a", r: int = 4, seed: int = 1,
                  method: str = "lora", targets=("q_proj", "v_proj")) -> Path:
    """A finished-looking run dir: config.yaml + adapter/ with non-zero LoRA B weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.core.config import RunConfig, save_config

    run = root / "runs" / name
    run.mkdir(parents=True)
    save_config(RunConfig(model=str(base_dir), method={"name": method, "r": r}), run / "config.yaml")
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    # init_lora_weights=False makes B random too, so the adapter changes the outputs.
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(str(run / "adapter"))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(run / "adapter"))
    return run


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 42, 317, 5000, 12, 99, 7]])


def _peft_logits(base_dir: Path, adapter_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    base_logits = _logits(base, IDS)
    return base_logits, _logits(PeftModel.from_pretrained(base, str(adapter_dir)).eval(), IDS)


def test_merged_model_logits_equal_adapter_logits(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.export.merge import merge_adapter

    run = make_lora_run(tmp_path, tiny_model_dir)
    seen = []
    res = merge_adapter(run, tmp_path / "merged", progress=lambda f, m: seen.append(f))
    out = Path(res["out"])
    assert res["bytes"] > 0 and res["base"] == str(tiny_model_dir)
    assert not (out / "adapter_config.json").exists()
    assert seen[-1] == 1.0 and len(seen) >= 3
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base_logits, adapter_logits = _peft_logits(tiny_model_dir, run / "adapter")
    assert not torch.allclose(base_logits, adapter_logits, atol=1e-3), "the adapter must change the outputs"
    torch.testing.assert_close(_logits(merged, IDS), adapter_logits, atol=1e-4, rtol=1e-4)
    assert AutoTokenizer.from_pretrained(str(out)).chat_template


def test_merge_accepts_an_adapter_folder_and_refuses_a_foreign_output(tiny_model_dir, tmp_path):
    from backend.export.merge import merge_adapter

    run = make_lora_run(tmp_path, tiny_model_dir)
    res = merge_adapter(run / "adapter", tmp_path / "m")
    assert (Path(res["out"]) / "config.json").exists()
    merge_adapter(run / "adapter", tmp_path / "m")  # its own earlier output may be replaced
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds other files"):
        merge_adapter(run, busy)
    assert (busy / "notes.txt").read_text() == "mine"


def test_qlora_run_merges_into_16bit_base_and_says_so(tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    from backend.export.merge import merge_adapter

    run = make_lora_run(tmp_path, tiny_model_dir, method="qlora")
    res = merge_adapter(run, tmp_path / "merged")
    assert any("16-bit" in n for n in res["notes"])
    cfg = AutoConfig.from_pretrained(res["out"])
    assert str(cfg.dtype).endswith("bfloat16")
    assert getattr(cfg, "quantization_config", None) is None


@pytest.mark.parametrize("method", ["linear", "ties", "dare_linear", "dare_ties"])
def test_combinations_produce_loadable_adapters(tiny_model_dir, tmp_path, method):
    from backend.export.merge import combine_adapters

    a = make_lora_run(tmp_path, tiny_model_dir, "a", seed=1)
    b = make_lora_run(tmp_path, tiny_model_dir, "b", seed=2)
    res = combine_adapters([a, b], [0.6, 0.4], method=method, density=0.5, out_dir=tmp_path / "combo")
    out = Path(res["out"])
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    assert (out / "adapter_model.safetensors").exists()
    base_logits, combo_logits = _peft_logits(tiny_model_dir, out)
    assert torch.isfinite(combo_logits).all()
    assert not torch.allclose(base_logits, combo_logits, atol=1e-4)


def test_combined_adapter_can_be_merged_into_a_full_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from backend.export.merge import combine_adapters

    a = make_lora_run(tmp_path, tiny_model_dir, "a", seed=1)
    b = make_lora_run(tmp_path, tiny_model_dir, "b", seed=2, r=8)  # different ranks: re-factored by SVD
    res = combine_adapters([a, b], [1.0, 1.0], method="ties", density=0.7, out_dir=tmp_path / "full", merge=True)
    assert res["method"] == "ties_svd" and res["notes"]
    assert not (Path(res["out"]) / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(res["out"])


def test_combining_adapters_of_different_bases_is_refused(tiny_model_dir, tmp_path):
    from backend.export.merge import combine_adapters

    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)
    a = make_lora_run(tmp_path, tiny_model_dir, "a")
    b = make_lora_run(tmp_path, other, "b")
    with pytest.raises(UserError, match="share one base model"):
        combine_adapters([a, b], [0.5, 0.5], method="linear", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bad_adapter_folders_give_sentences(tmp_path):
    from backend.export.merge import merge_adapter

    with pytest.raises(UserError, match="is not a folder"):
        merge_adapter(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no adapter_config.json"):
        merge_adapter(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("peft_type,method,words", [
    ("PROMPT_TUNING", "prompt_tuning", "virtual tokens"),
    ("LORA", "adapter_houlsby", "cannot be folded"),
])
def test_unmergeable_methods_say_why(tiny_model_dir, tmp_path, peft_type, method, words):
    from backend.core.config import RunConfig, save_config
    from backend.export.merge import can_merge, locate_adapter, merge_adapter

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    save_config(RunConfig(model=str(tiny_model_dir), method={"name": method}), run / "config.yaml")
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type}))
    ok, reason = can_merge(locate_adapter(run))
    assert not ok and words in reason
    with pytest.raises(UserError, match=words):
        merge_adapter(run, tmp_path / "out")


def test_export_zip_and_sizes(tiny_model_dir, tmp_path):
    from backend.export.merge import export_zip, sizes

    run = make_lora_run(tmp_path, tiny_model_dir)
    z = export_zip(run, tmp_path / "dl" / "adapter.zip")
    names = zipfile.ZipFile(z).namelist()
    assert "adapter/adapter_config.json" in names and "adapter/adapter_model.safetensors" in names
    s = sizes(run)
    assert 0 < s["adapter_bytes"] < s["merged_bytes"]


def test_ui_merge_runs_in_a_subprocess_and_streams_progress(tiny_model_dir, tmp_path):
    from backend.export.merge import merge_command, run_merge_subprocess

    run = make_lora_run(tmp_path, tiny_model_dir)
    events = list(run_merge_subprocess(merge_command([str(run)], str(tmp_path / "merged"))))
    assert any("progress" in e for e in events)
    assert events[-1]["result"]["out"] == str((tmp_path / "merged").resolve())
    bad = list(run_merge_subprocess(merge_command([str(tmp_path / "nope")], str(tmp_path / "m2"))))
    assert "is not a folder" in bad[-1]["error"]


def test_pickers_list_runs_with_adapters_and_merged_models(tiny_model_dir, tmp_path):
    from backend.inference.chat import chat_choices, split_choice
    from backend.export.merge import adapter_runs, merge_adapter
    from backend.runs.rundir import write_status

    done = make_lora_run(tmp_path, tiny_model_dir, "20250101-000000-done")
    write_status(done, state="completed", method="lora", best_val_loss=0.5)
    (tmp_path / "runs" / "20250101-000001-running").mkdir()
    write_status(tmp_path / "runs" / "20250101-000001-running", state="failed")
    assert [d for _, d in adapter_runs(tmp_path)] == [str(done)]
    merge_adapter(done, tmp_path / "merged" / "m1")
    values = [v for _, v in chat_choices(tmp_path)]
    assert str(done) in values and str(tmp_path / "merged" / "m1") in values
    assert split_choice(str(done)) == (None, str(done))
    assert split_choice(str(tmp_path / "merged" / "m1")) == (str(tmp_path / "merged" / "m1"), None)


def test_bottleneck_adapter_folder_is_refused_with_the_reason(tmp_path):
    from backend.export.merge import locate_adapter
    from backend.methods.adapters import CONFIG_FILE

    (tmp_path / CONFIG_FILE).write_text("{}")
    with pytest.raises(UserError, match="bottleneck adapters.*cannot be merged"):
        locate_adapter(tmp_path)


def test_export_reuses_a_merged_folder_of_the_same_adapter_and_only_that(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 24 item 16: a GGUF export right after a merge takes the merged folder (same adapter bytes,
    base and merge settings) instead of merging again; a changed adapter is merged anew."""
    from safetensors.torch import load_file, save_file

    from backend.export import gguf
    from backend.export.merge import find_merged, locate_adapter, merge_adapter

    monkeypatch.setenv("FTSTUDIO_WORKSPACE", str(tmp_path / "elsewhere"))  # found through the run's workspace
    run = make_lora_run(tmp_path, tiny_model_dir, "20250101-000000-a")
    merged = Path(merge_adapter(run, tmp_path / "merged" / "a")["out"])
    calls: list[str] = []

    def no_merge(*args, **kwargs):
        calls.append(str(args[0]))
        return {"out": str(tmp_path / "fresh"), "notes": []}

    monkeypatch.setattr(gguf, "merge_adapter", no_merge)
    seen, notes = [], []
    got = gguf._merged_model(gguf.locate_source(run), tmp_path, lambda f, m: seen.append(m), notes)
    assert got == merged and calls == []
    assert any(f"Reusing the merged folder {merged}" in m for m in seen) and notes[0].startswith("Reusing")
    # The same folder picked as the adapter folder itself is the same merge.
    assert find_merged(locate_adapter(run / "adapter")) == merged

    # Other adapter bytes (a retrained run in the same place): merged again, not reused.
    weights_file = run / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(weights_file))
    save_file({k: v * 2 for k, v in weights.items()}, str(weights_file))
    assert find_merged(locate_adapter(run)) is None
    assert gguf._merged_model(gguf.locate_source(run), tmp_path, None, []) == tmp_path / "fresh"
    assert calls == [str(run)]
