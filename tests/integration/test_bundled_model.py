"""The bundled default model: converted once from its GGUF, loaded, and answering sensibly."""
import json

import pytest
import torch

from backend.core.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model


@pytest.mark.slow
def test_bundled_model_answers_a_chat_prompt_through_its_own_template(bundled_dir):
    assert (bundled_dir / "model.safetensors").exists()
    assert resolve_model(DEFAULT_MODEL).kind == "bundled"
    tok = load_tokenizer(DEFAULT_MODEL)
    model = load_causal_lm(DEFAULT_MODEL, dtype=torch.float32)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert "<|im_start|>assistant" in tok.decode(enc["input_ids"][0])
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    reply = tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply


def test_converted_directory_is_plain_safetensors_with_chat_template(bundled_dir):
    cfg = json.loads((bundled_dir / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["model_type"] == "llama"
    assert not list(bundled_dir.glob("*.bin"))
    tok = load_tokenizer(str(bundled_dir))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
