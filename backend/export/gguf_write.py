"""Write a transformers Llama-family checkpoint as a GGUF file with the `gguf` package.

Our own conversion, following the GGUF conventions that llama.cpp readers (Ollama, LM Studio,
transformers' GGUF loader) expect:
- tensor names come from the gguf package's own HF -> GGUF name map;
- llama.cpp's `llama` graph applies rotary embeddings to interleaved pairs, while transformers
  rotates the two halves of each head, so Q and K rows of Llama/Mistral are reordered per head
  (pairs (i, i + d/2) become adjacent). Qwen2 uses the half-rotation in llama.cpp too: no reorder;
- 1-D tensors (norms, biases) stay float32, as llama.cpp's converter keeps them;
- Llama 3.1+ rotary scaling becomes llama.cpp's `rope_freqs` tensor (one divisor per frequency);
- Q8_0 packs 32 weights as one fp16 scale + 32 int8 (34 bytes); rows whose length is not a
  multiple of 32 fall back to f16. The export itself writes f16 only and has llama.cpp's own
  quantizer make Q8_0 and the k-quants from it (`backend.export.llamacpp.quantize`).
Tensors are streamed from the safetensors files one at a time, so memory stays near one tensor.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from backend.core.errors import UserError
from backend.export.gguf_tokenizer import GGUFTokenizer, write_tokenizer

# model_type -> (gguf architecture, whether Q/K rows are reordered for llama.cpp's rope)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
SUPPORTED_TEXT = "Llama (including SmolLM2), Mistral and Qwen2"
_SKIP_SUFFIXES = ("rotary_emb.inv_freq",)
_METADATA_ALLOWANCE = 32 * 2**20  # header, vocabulary, merges and alignment padding


@dataclass(frozen=True)
class TensorPlan:
    hf_name: str
    file: Optional[Path]   # None for a tensor computed here (rope_freqs)
    gguf_name: str
    shape: tuple[int, ...]
    qtype: Any             # gguf.GGMLQuantizationType
    nbytes: int
    data: Any = None       # the computed tensor, when file is None


def architecture_of(config: Any) -> tuple[str, bool]:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(f"GGUF export supports {SUPPORTED_TEXT} models; this model is '{model_type}'. "
                        "Use the merged model folder with transformers instead, or convert it with llama.cpp.")
    rope_type = _rope_type(config)
    if rope_type not in (None, "default") and not (rope_type == "llama3" and ARCHITECTURES[model_type][1]):
        raise UserError(f"This model uses '{rope_type}' rotary scaling, which this GGUF exporter does not "
                        "write (it writes Llama 3's; others would make the exported model answer differently). "
                        "Use the merged model folder "
                        "with transformers, or convert it with llama.cpp's convert_hf_to_gguf.py.")
    return ARCHITECTURES[model_type]


def _rope_type(config: Any) -> Optional[str]:
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_type", "default") if isinstance(rope, dict) else "default"


def rope_factors(config: Any):
    """Llama 3.1+ rotary scaling as llama.cpp stores it: one divisor per rotary frequency.

    transformers computes the scaled inverse frequencies itself; llama.cpp divides its default
    frequencies by the `rope_freqs` tensor, so that tensor is the ratio of the two.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if _rope_type(config) != "llama3":
        return None
    import torch

    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    default = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    return (default / scaled.to(torch.float64)).to(torch.float32).numpy()


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir} holds no .safetensors weights; save the model with safe_serialization=True "
                        "(the studio's merge does) and export again.")
    return files


def _qtype_for(shape: tuple[int, ...], quant: str):
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    if len(shape) == 1:
        return Q.F32
    if quant == "q8_0" and shape[-1] % GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return Q.Q8_0
    return Q.F16


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def plan_tensors(model_dir: Path, config: Any, quant: str) -> list[TensorPlan]:
    """Which tensor goes where, at which type and size: read from the safetensors headers only."""
    import gguf
    from safetensors import safe_open

    arch_name, _ = architecture_of(config)
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plans: list[TensorPlan] = []
    for file in _weight_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith(_SKIP_SUFFIXES) or (tied and hf_name == "lm_head.weight"):
                    continue
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UserError(f"The weight '{hf_name}' in {file.name} has no GGUF counterpart for a "
                                    f"{arch_name} model, so the export would drop it. This checkpoint is not a "
                                    f"plain {SUPPORTED_TEXT} model.")
                shape = tuple(f.get_slice(hf_name).get_shape())
                qtype = _qtype_for(shape, quant)
                plans.append(TensorPlan(hf_name, file, gguf_name, shape, qtype, _nbytes(shape, qtype)))
    factors = rope_factors(config)
    if factors is not None:
        # First, because _iter_tensors yields computed tensors before those read from files.
        plans.insert(0, TensorPlan("(llama3 rope scaling)", None, "rope_freqs.weight", tuple(factors.shape),
                                   gguf.GGMLQuantizationType.F32, factors.nbytes, factors))
    return plans


def estimate_bytes(plans: list[TensorPlan]) -> int:
    return sum(p.nbytes + 32 for p in plans) + _METADATA_ALLOWANCE


def _to_rope_pairs(w, n_heads: int):
    """Reorder each head's rows from transformers' half-split rope layout to llama.cpp's pairs."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _tensor_data(plan: TensorPlan, tensor, config: Any, permute: bool):
    import torch
    from gguf import GGMLQuantizationType as Q, quants

    w = tensor.to(torch.float32)
    if permute and (".attn_q." in plan.gguf_name or ".attn_k." in plan.gguf_name):
        heads = config.num_attention_heads if ".attn_q." in plan.gguf_name else config.num_key_value_heads
        w = _to_rope_pairs(w, heads)
    array = w.contiguous().numpy()
    if plan.qtype == Q.F32:
        return array
    if plan.qtype == Q.F16:
        return array.astype("float16")
    return quants.quantize(array, plan.qtype)


def _iter_tensors(plans: list[TensorPlan]) -> Iterator[tuple[TensorPlan, Any]]:
    from safetensors import safe_open

    by_file: dict[Path, list[TensorPlan]] = {}
    for p in plans:
        if p.file is None:
            yield p, None
            continue
        by_file.setdefault(p.file, []).append(p)
    order = {p.hf_name: i for i, p in enumerate(plans)}
    for file, group in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for p in sorted(group, key=lambda p: order[p.hf_name]):
                yield p, f.get_tensor(p.hf_name)


def _write_hparams(writer: Any, config: Any, name: str, n_vocab: int, quant: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    theta = theta or getattr(config, "rope_theta", None) or 10000.0
    writer.add_name(name)
    writer.add_type("model")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_rope_dimension_count(int(head_dim))
    if head_dim * heads != config.hidden_size:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(n_vocab))
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_gguf(model_dir: Path, config: Any, tokenizer: GGUFTokenizer, plans: list[TensorPlan], out: Path,
               quant: str, name: str, progress: Optional[Callable[[float, str], None]] = None) -> None:
    """Write `out` (a path the caller replaces into place afterwards)."""
    import gguf
    import numpy as np

    arch_name, permute = architecture_of(config)
    n_vocab = next((p.shape[0] for p in plans if p.gguf_name == "token_embd.weight"), None)
    if n_vocab is None:
        raise UserError(f"{model_dir} has no token embedding weight, so it is not a complete model.")
    writer = gguf.GGUFWriter(str(out), arch_name)
    try:
        _write_hparams(writer, config, name, n_vocab, quant)
        write_tokenizer(writer, tokenizer)
        for p in plans:
            writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, (plan, tensor) in enumerate(_iter_tensors(plans)):
            data = plan.data if plan.file is None else _tensor_data(plan, tensor, config, permute)
            if data.nbytes != plan.nbytes:
                raise RuntimeError(f"{plan.gguf_name}: {data.nbytes} bytes written, {plan.nbytes} planned")
            writer.write_tensor_data(data)
            if progress and (i % 16 == 0 or i == len(plans) - 1):
                progress(0.2 + 0.5 * (i + 1) / len(plans), f"Writing {plan.gguf_name}")
        writer.flush()
    finally:
        writer.close()
