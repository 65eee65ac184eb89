"""A LoRA adapter as a GGUF adapter file (llama.cpp's `--lora` format), checked in llama.cpp.

    export_lora_gguf(src, out_file, progress=None, keep_base=False) -> {"out", "bytes", "checked", ...}

For users who keep one base GGUF and swap adapters (`llama-cli -m base.gguf --lora adapter.gguf`,
Ollama's `ADAPTER` line). The file holds, per adapted weight `blk.N.attn_q.weight`, the pair
`...weight.lora_a` (PEFT's lora_A, rank x in) and `...weight.lora_b` (lora_B, out x rank), plus
`adapter.lora.alpha`; llama.cpp scales the product by alpha / rank as PEFT does. Q and K rows are
reordered for llama.cpp's rope exactly as the base's Q and K weights are (`gguf_write`), so the
pair must be applied to a base converted the same way: the check converts the base to f16 with
this exporter, applies the adapter in llama.cpp and compares with the merged model in transformers.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from backend.core.errors import UserError
from backend.core.io import read_json
from backend.export import llamacpp_lib
from backend.export.gguf import check_out_path, check_texts, locate_source, model_dir_of, write_f16_gguf
from backend.export.gguf_check import check_export, load_models, reference
from backend.export.gguf_write import architecture_of
from backend.export.merge import merge_adapter

Progress = Optional[Callable[[float, str], None]]
_SUFFIXES = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}


def _say(progress: Progress, fraction: float, message: str) -> None:
    if progress:
        progress(fraction, message)


def lora_alpha(acfg: dict[str, Any]) -> float:
    """The alpha llama.cpp needs so that its alpha / rank equals PEFT's scaling; refuse what it cannot hold."""
    if (acfg.get("peft_type") or "").upper() != "LORA":
        raise UserError(f"A LoRA GGUF holds LoRA adapters only; this adapter is {acfg.get('peft_type')}. "
                        "Export the merged model as GGUF instead (--format gguf).")
    if acfg.get("use_dora"):
        raise UserError("This is a DoRA adapter: llama.cpp's LoRA format has no place for its magnitude vectors. "
                        "Export the merged model as GGUF instead (--format gguf).")
    if acfg.get("modules_to_save"):
        raise UserError(f"The adapter also trains whole modules ({', '.join(acfg['modules_to_save'])}), which a "
                        "LoRA GGUF cannot carry. Export the merged model as GGUF instead (--format gguf).")
    if (acfg.get("bias") or "none") != "none":
        raise UserError("The adapter trains biases, which a LoRA GGUF cannot carry. Export the merged model as "
                        "GGUF instead (--format gguf).")
    if acfg.get("rank_pattern") or acfg.get("alpha_pattern"):
        raise UserError("The adapter uses per-module ranks or alphas; a LoRA GGUF has one alpha for all of them. "
                        "Export the merged model as GGUF instead (--format gguf).")
    r, alpha = int(acfg["r"]), float(acfg.get("lora_alpha") or acfg["r"])
    # rsLoRA scales by alpha / sqrt(r); llama.cpp by alpha / r.
    return alpha * math.sqrt(r) if acfg.get("use_rslora") else alpha


def _gguf_pairs(adapter_dir: Path, config: Any) -> list[tuple[str, Any]]:
    """(gguf tensor name, float32 array) for every lora_A / lora_B in the adapter."""
    import gguf
    from safetensors.torch import load_file

    from backend.export.gguf_write import _to_rope_pairs

    arch_name, permute = architecture_of(config)
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    path = adapter_dir / "adapter_model.safetensors"
    if not path.exists():
        raise UserError(f"{adapter_dir} has no adapter_model.safetensors; a LoRA GGUF is written from safetensors "
                        "adapters (the studio saves them so).")
    out = []
    for key, tensor in sorted(load_file(str(path)).items()):
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise UserError(f"The adapter holds '{key}', which is neither a lora_A nor a lora_B weight, so a LoRA "
                            "GGUF cannot carry it. Export the merged model as GGUF instead (--format gguf).")
        hf = key[:-len(suffix)].removeprefix("base_model.model.") + ".weight"
        base_name = names.get_name(hf, try_suffixes=(".weight",))
        if base_name is None:
            raise UserError(f"The adapted weight '{hf}' has no GGUF counterpart, so llama.cpp could not apply it.")
        w = tensor.float()
        if permute and _SUFFIXES[suffix] == "lora_b" and (".attn_q." in base_name or ".attn_k." in base_name):
            heads = config.num_attention_heads if ".attn_q." in base_name else config.num_key_value_heads
            w = _to_rope_pairs(w, heads)  # B's rows are the weight's output rows
        out.append((f"{base_name}.{_SUFFIXES[suffix]}", w.contiguous().numpy()))
    if not out:
        raise UserError(f"The adapter in {adapter_dir} holds no LoRA weights.")
    return out


def write_lora_gguf(adapter_dir: Path, config: Any, out: Path, name: str) -> int:
    """Write the adapter file; the number of adapted weights."""
    import gguf

    alpha = lora_alpha(read_json(adapter_dir / "adapter_config.json") or {})
    pairs = _gguf_pairs(adapter_dir, config)
    writer = gguf.GGUFWriter(str(out), architecture_of(config)[0])
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for tensor_name, array in pairs:
            # f16 like the base; a vector-free pair (rank x in, out x rank) rounds as the weights do.
            writer.add_tensor(tensor_name, array.astype("float16"))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return len(pairs) // 2


def export_lora_gguf(src: str | Path, out_file: str | Path, progress: Progress = None,
                     keep_base: bool = False) -> dict[str, Any]:
    """Write `out_file` (a LoRA GGUF) checked as base f16 GGUF + adapter in llama.cpp ≈ the merged model.

    With `keep_base` the f16 base GGUF it was checked with is kept beside it (`<stem>-base-f16.gguf`)."""
    from transformers import AutoConfig, AutoTokenizer

    source = locate_source(src)
    if source.kind != "adapter":
        raise UserError(f"{source.path} is a whole model, not an adapter; export it with --format gguf.")
    out = check_out_path(Path(out_file))
    llamacpp_lib.load()
    adapter_dir = source.path / "adapter" if (source.path / "adapter").is_dir() else source.path
    base_dir = Path(model_dir_of(source.base))
    config = AutoConfig.from_pretrained(str(base_dir))
    lora_alpha(read_json(adapter_dir / "adapter_config.json") or {})  # refuse before any heavy work
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    notes: list[str] = []
    try:
        tok = AutoTokenizer.from_pretrained(str(source.tokenizer_dir))
        _say(progress, 0.02, "Writing the adapter as a LoRA GGUF")
        tmp = work / out.name
        adapted = write_lora_gguf(adapter_dir, config, tmp, out.stem)
        base_gguf = work / "base-f16.gguf"
        notes += write_f16_gguf(base_dir, tok, base_gguf, base_dir.name, progress)
        _say(progress, 0.45, f"Merging the adapter into {source.base} for the comparison")
        merged_dir = Path(merge_adapter(source.path, work / "merged")["out"])
        merged, base_model, load_notes = load_models(merged_dir, str(base_dir))
        notes += load_notes
        texts = check_texts(source, tok, notes)
        _say(progress, 0.7, "Checking base GGUF + LoRA GGUF in llama.cpp")
        check = check_export(base_gguf, reference(merged, tok, texts, base_model), tok, "f16", texts, lora=tmp)
        result = {"out": str(out), "format": "lora-gguf", "base": source.base, "adapted_weights": adapted,
                  **check.figures(), "notes": notes + check.notes}
        if check.checked:
            os.replace(tmp, out)
            result["bytes"] = out.stat().st_size
            if keep_base:
                kept = out.with_name(f"{out.stem}-base-f16.gguf")
                os.replace(base_gguf, kept)
                result["base_gguf"] = str(kept)
            result["llama_cpp_command"] = (f"llama-cli -m {result.get('base_gguf', 'BASE.gguf')} --lora {out}")
        else:
            result.update(bytes=0, error=(f"The LoRA GGUF export of {source.path} failed its check in llama.cpp, "
                                          f"so {out.name} was not written: " + "; ".join(check.problems) + "."))
            result["notes"].insert(0, result["error"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(progress, 1.0, result.get("error") or f"Exported {out.name}")
    return result
