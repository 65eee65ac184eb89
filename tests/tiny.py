"""A tiny Llama built from a config with the default model's tokenizer: trains in seconds on CPU."""
from __future__ import annotations

from pathlib import Path


def make_tiny_model(out_dir: Path, tokenizer_dir: Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists():
        return out_dir
    # The suite runs in two pytest-xdist workers: one builds the model, the other waits for it; the folder
    # appears whole (written beside it, then renamed) so a reader never sees half a model.
    from backend.core.locks import file_lock
    with file_lock(out_dir.with_name(out_dir.name + ".lock"), make_parents=True):
        if (out_dir / "model.safetensors").exists():
            return out_dir
        staging = out_dir.with_name(out_dir.name + ".partial")
        import shutil
        shutil.rmtree(staging, ignore_errors=True)
        _build_tiny(staging, tokenizer_dir, layers, hidden, seed)
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    return out_dir


def _build_tiny(out_dir: Path, tokenizer_dir: Path, layers: int, hidden: int, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
