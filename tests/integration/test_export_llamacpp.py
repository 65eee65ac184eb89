"""GGUF exports checked by llama.cpp itself (the prebuilt library of the llama-cpp-py-sync wheel).

The tiny Llama here has hidden size 256 and intermediate size 512, so every weight row is a
multiple of 256 and llama.cpp's k-quants apply as they would to a real model (with 64, llama.cpp
falls back per tensor to q5_0/q8_0 and Q4_K_M would not be tested).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.core.errors import UserError
from backend.export import llamacpp_lib

REPO = Path(__file__).resolve().parents[2]
_WHY = llamacpp_lib.available()
if _WHY:  # loud: the reason is printed in the summary with -rs, and the module is skipped as a whole
    pytest.skip(f"llama.cpp cannot be loaded here, so no GGUF is checked by it: {_WHY}", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny256(bundled_dir) -> Path:
    from tests.tiny import make_tiny_model

    return make_tiny_model(REPO / ".test-cache" / "tiny-llama-256", bundled_dir, hidden=256)


@pytest.fixture(scope="module")
def lora_run(tiny256, tmp_path_factory) -> Path:
    """A run directory as training leaves it, with an adapter whose B matrices are random (trained)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.core.config import RunConfig, save_config

    run = tmp_path_factory.mktemp("runs") / "run-lora"
    run.mkdir()
    data = run / "rows.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{i} + {i} is {2 * i}."}]} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_config(RunConfig(model=str(tiny256), method={"name": "lora", "r": 4},
                          data={"path": str(data), "validation_split": 0.25}), run / "config.yaml")
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(str(tiny256), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                     init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, cfg).save_pretrained(str(run / "adapter"))
    AutoTokenizer.from_pretrained(str(tiny256)).save_pretrained(str(run / "adapter"))
    return run


def test_adapter_exports_f16_q8_0_q4_k_m_from_one_merge_and_llama_cpp_agrees(lora_run, tmp_path, capsys):
    from gguf import GGMLQuantizationType as Q, GGUFReader

    from backend.cli import main
    from backend.export.gguf_check import TOLERANCES

    out = tmp_path / "exports" / "tiny.gguf"
    code = main(["export", str(lora_run), "--format", "gguf", "--quant", "f16,q8_0,q4_k_m", "--out", str(out),
                 "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, [(e["quant"], e["problems"], e["agreement_where_clear"]) for e in result["exports"]]
    assert result["checked"] is True and result["quants"] == ["f16", "q8_0", "q4_k_m"]
    by_quant = {e["quant"]: e for e in result["exports"]}
    for q, e in by_quant.items():
        limits = TOLERANCES[q]
        assert e["checked"] is True and e["checked_by"] == "llama.cpp", (q, e["problems"])
        assert Path(e["out"]) == out.with_name(f"tiny-{q}.gguf") and e["bytes"] == Path(e["out"]).stat().st_size
        assert e["token_agreement"] == 1.0  # tokenization does not depend on the quant
        # The limits hold where the merged model's choice is clear; this random model has many near-ties,
        # so the raw figures (reported too) are lower for the k-quant (top-1 0.65 measured for q4_k_m).
        clear = e["agreement_where_clear"]
        assert clear["top1"] >= limits.top1 and clear["topk"] >= limits.topk, e
        assert clear["greedy"] >= limits.greedy and e["quality_loss"] <= limits.perplexity, e
        assert 0.5 < e["top1_agreement"] <= clear["top1"] and 0.5 < e["topk_agreement"] <= clear["topk"]
        assert e["llama_cpp"]["pre_tokenizer"] == "gpt-2" and e["llama_cpp"]["stops_at"] == ["<|im_end|>"]
        assert e["llama_cpp"]["eos"] == 2 and e["llama_cpp"]["chat_template"] is True
        assert e["adapter_effect"] > 0 and e["perplexity_source"].endswith("validation rows of the run")
        assert Path(e["modelfile"]).exists()
    assert by_quant["f16"]["max_logit_diff"] < by_quant["q8_0"]["max_logit_diff"] < by_quant["q4_k_m"]["max_logit_diff"]
    assert by_quant["f16"]["bytes"] > by_quant["q8_0"]["bytes"] > by_quant["q4_k_m"]["bytes"]
    # llama.cpp's own Q4_K_M mix: Q4_K for most 2-D weights (some Q6_K), norms in F32.
    kinds = {t.tensor_type for t in GGUFReader(by_quant["q4_k_m"]["out"]).tensors}
    assert Q.Q4_K in kinds and Q.F32 in kinds
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["tiny-f16.Modelfile", "tiny-f16.gguf", "tiny-q4_k_m.Modelfile", "tiny-q4_k_m.gguf",
                     "tiny-q8_0.Modelfile", "tiny-q8_0.gguf"]


def test_a_file_llama_cpp_refuses_is_reported_and_not_written(tiny256, tmp_path, monkeypatch):
    """What the export used to write: pre-tokenizer "gpt2", a name llama.cpp does not know."""
    import backend.export.gguf as export
    from backend.export.gguf_tokenizer import describe_tokenizer

    def old_name(tok, n_vocab):
        described = describe_tokenizer(tok, n_vocab)
        described.pre = "gpt2"
        return described

    monkeypatch.setattr(export, "describe_tokenizer", old_name)
    out = tmp_path / "x.gguf"
    res = export.export_gguf(tiny256, out, quant="f16")
    assert res["checked"] is False
    assert "unknown pre-tokenizer type: 'gpt2'" in res["error"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_lora_gguf_on_the_base_gguf_matches_the_merged_model_in_llama_cpp(lora_run, tmp_path, capsys):
    from gguf import GGUFReader

    from backend.cli import main

    out = tmp_path / "adapter.gguf"
    code = main(["export", str(lora_run), "--format", "lora-gguf", "--out", str(out), "--keep-base", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, result
    assert result["checked"] is True and result["adapted_weights"] == 8, result["problems"]
    assert result["token_agreement"] == 1.0 and result["greedy_agreement"] >= 0.95
    assert result["max_logit_diff"] < 0.02 * result["adapter_effect"]  # the adapter is applied, and exactly
    reader = GGUFReader(str(out))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    assert {t.name for t in reader.tensors} >= {"blk.0.attn_q.weight.lora_a", "blk.1.ffn_down.weight.lora_b"}
    assert Path(result["base_gguf"]).exists() and f"--lora {out}" in result["llama_cpp_command"]


def test_lora_gguf_refuses_a_dora_adapter_before_any_work(lora_run, tmp_path):
    from backend.export.gguf_lora import lora_alpha

    with pytest.raises(UserError, match="DoRA"):
        lora_alpha({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True})
    assert lora_alpha({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": True}) == 16.0
