"""GGUF export on the tiny model: written with the gguf package, checked by loading it in llama.cpp.

The tiny Llama's random weights attend almost uniformly, so rotary positions (and with them the
Q/K row reorder llama.cpp needs) barely move its logits: a conversion that skipped the reorder
still lands within 1e-2. The `sharp_model` fixture scales Q and K by 8 so attention depends on
position; then a skipped reorder moves logits by ~0.6 while a correct f16 export stays ~1e-3.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from backend.core.errors import UserError
from backend.export import llamacpp_lib

_WHY = llamacpp_lib.available()
if _WHY:  # every export is checked by llama.cpp; without it there is nothing to test here
    pytest.skip(f"llama.cpp cannot be loaded here, so no GGUF is checked by it: {_WHY}", allow_module_level=True)

# f16: each weight keeps 11 significant bits (relative error <= 2**-11); on this 2-layer model
# the logits move by ~7e-4 (measured), so 3e-3 is tight and still 200x below a broken reorder.
F16_TOL = 3e-3
# Q8_0: 8-bit weights with one fp16 scale per block of 32, relative error up to ~0.4% per
# weight; measured 1.5e-2 (plain) to 3.4e-2 (LoRA-merged) here. 8e-2 (about 7% of this model's
# logit scale of ~1.2, below the exporter's own 10%) is looser, and still 7x below a broken reorder.
Q8_TOL = 8e-2


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir, tmp_path_factory) -> Path:
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("sharp") / "tiny-sharp"
    shutil.copytree(tiny_model_dir, out)
    weights = load_file(str(out / "model.safetensors"))
    for name in weights:
        if "q_proj" in name or "k_proj" in name:
            weights[name] = weights[name] * 8.0
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _lora_run(root: Path, base_dir: Path, trained: bool) -> Path:
    """A run directory as training leaves it: config.yaml + adapter/ (+ tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.core.config import RunConfig, save_config

    run = root / ("run-trained" if trained else "run-untrained")
    run.mkdir(parents=True)
    save_config(RunConfig(model=str(base_dir), method={"name": "lora", "r": 4}), run / "config.yaml")
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    # PEFT's default init leaves B = 0 (an untrained adapter); init_lora_weights=False makes B random.
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=not trained, task_type="CAUSAL_LM")
    get_peft_model(base, cfg).save_pretrained(str(run / "adapter"))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(run / "adapter"))
    return run


def test_f16_export_via_cli_round_trips_logits_tightly(sharp_model, tmp_path, capsys):
    from backend.cli import main

    out = tmp_path / "exports" / "tiny.gguf"
    code = main(["export", str(sharp_model), "--format", "gguf", "--quant", "f16", "--out", str(out), "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, result
    assert result["checked"] is True
    assert result["out"] == str(out) and result["bytes"] == out.stat().st_size > 0
    assert 0 <= result["max_logit_diff"] < F16_TOL
    modelfile = Path(result["modelfile"])
    assert modelfile.parent == out.parent and modelfile.read_text().startswith("# Ollama")
    assert "FROM ./tiny.gguf" in modelfile.read_text()
    assert result["ollama_command"] == f"ollama create tiny -f {modelfile}"
    assert result["stop"] == ["<|im_end|>"] and result["modelfile_template_ok"] is True

    from gguf import GGUFReader

    fields = GGUFReader(str(out)).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert fields["tokenizer.ggml.padding_token_id"].contents() == 2
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert fields["llama.attention.head_count_kv"].contents() == 2


def test_trained_adapter_run_exports_q8_0_within_looser_tolerance(sharp_model, tmp_path):
    from gguf import GGMLQuantizationType as Q, GGUFReader

    from backend.export.gguf import export_gguf

    run = _lora_run(tmp_path, sharp_model, trained=True)
    seen: list[float] = []
    res = export_gguf(run, tmp_path / "out" / "trained.gguf", quant="q8_0", progress=lambda f, m: seen.append(f))
    assert res["checked"] is True, res["problems"]
    assert res["base"] == str(sharp_model)
    assert 0 < res["max_logit_diff"] < Q8_TOL
    types = {t.name: (len(t.shape), t.tensor_type) for t in GGUFReader(res["out"]).tensors}
    assert {q for dims, q in types.values() if dims == 2} == {Q.Q8_0}  # 34 bytes per 32 weights
    assert {q for dims, q in types.values() if dims == 1} == {Q.F32}   # norms stay exact
    # The fine-tuning shows through the quantization: the GGUF is far from the base, near the merge.
    assert res["adapter_effect"] > 10 * res["max_logit_diff"]
    assert res["base_logit_diff"] > 10 * res["max_logit_diff"]
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["trained.Modelfile", "trained.gguf"]


def test_untrained_adapter_is_reported_and_nothing_is_replaced(sharp_model, tmp_path, capsys):
    from backend.cli import main

    run = _lora_run(tmp_path, sharp_model, trained=False)
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    out.write_bytes(b"an earlier export the user keeps")
    code = main(["export", str(run), "--format", "gguf", "--out", str(out), "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1
    assert result["checked"] is False
    assert result["adapter_effect"] == 0.0
    assert "equal the untrained base" in result["error"]
    assert out.read_bytes() == b"an earlier export the user keeps"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.gguf"]


def test_llama3_rope_scaling_is_written_as_llama_cpp_rope_freqs(sharp_model, tmp_path):
    import numpy as np
    from gguf import GGUFReader

    from backend.export.gguf import export_gguf

    model_dir = tmp_path / "llama31-like"
    shutil.copytree(sharp_model, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    # Llama 3.1's scaling, with the original context shrunk to 16 so short prompts feel it: without
    # the factors the logits move by ~0.46 here, 700x the f16 error.
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    res = export_gguf(model_dir, tmp_path / "r.gguf")
    assert res["checked"] is True, res["problems"]
    assert res["max_logit_diff"] < F16_TOL
    freqs = next(t for t in GGUFReader(res["out"]).tensors if t.name == "rope_freqs.weight")
    factors = np.asarray(freqs.data)
    assert factors.shape == (8,)  # head_dim 16 -> 8 rotary frequencies
    assert factors[0] == pytest.approx(1.7359, abs=1e-3) and np.allclose(factors[1:], 8.0, atol=1e-5)


def test_other_rope_scaling_is_refused(sharp_model, tmp_path):
    from backend.export.gguf import export_gguf

    model_dir = tmp_path / "yarn"
    shutil.copytree(sharp_model, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="'linear' rotary scaling"):
        export_gguf(model_dir, tmp_path / "y.gguf")
    assert not (tmp_path / "y.gguf").exists()


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import GPT2Config

    from backend.export.gguf import export_gguf

    model_dir = tmp_path / "gpt2-tiny"
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(model_dir)
    with pytest.raises(UserError) as err:
        export_gguf(model_dir, tmp_path / "x.gguf")
    message = str(err.value)
    assert "'gpt2'" in message and "Llama" in message and "Mistral" in message and "Qwen2" in message
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_quant_is_a_sentence_and_cli_exit_2(tiny_model_dir, tmp_path, capsys):
    from backend.cli import main
    from backend.export.gguf import export_gguf

    with pytest.raises(UserError, match=r"Unknown GGUF quantization 'q3_k_s'.*f16, q8_0, q6_k, q5_k_m, q4_k_m"):
        export_gguf(tiny_model_dir, tmp_path / "x.gguf", quant="q3_k_s")
    code = main(["export", str(tiny_model_dir), "--quant", "q3", "--out", str(tmp_path / "x.gguf"), "--json"])
    assert code == 2
    assert "Unknown GGUF quantization" in json.loads(capsys.readouterr().out)["error"]
    code = main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.gguf"), "--json"])
    assert code == 2 and "does not exist" in json.loads(capsys.readouterr().out)["error"]


def test_not_enough_disk_space_stops_before_writing(tiny_model_dir, tmp_path, monkeypatch):
    from collections import namedtuple

    import backend.export.gguf as export

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(UserError, match=r"Not enough disk space .* GB is needed and 0.00 GB is free"):
        export.export_gguf(tiny_model_dir, out)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]


def test_export_right_after_a_merge_does_not_merge_again(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 24 item 16: the export takes the Merge tab's folder of the same adapter and says so."""
    from backend.export import gguf
    from backend.export.merge import merge_adapter

    monkeypatch.setenv("FTSTUDIO_WORKSPACE", str(tmp_path))
    run = _lora_run(tmp_path / "runs", tiny_model_dir, trained=True)
    merged = merge_adapter(run, tmp_path / "merged" / "run-trained")["out"]

    def must_not_merge(*args, **kwargs):
        raise AssertionError("the export merged again")

    monkeypatch.setattr(gguf, "merge_adapter", must_not_merge)
    seen: list[str] = []
    res = gguf.export_gguf(run, tmp_path / "exports" / "t.gguf", quant="f16", progress=lambda f, m: seen.append(m))
    assert res["checked"] is True, res.get("problems")
    assert any(m.startswith(f"Reusing the merged folder {merged}") for m in seen)
    assert any(n.startswith(f"Reusing the merged folder {merged}") for n in res["notes"])
