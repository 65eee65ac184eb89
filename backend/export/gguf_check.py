"""Check an exported GGUF for behaviour: load it back with transformers and compare with the source.

Three questions, each answered by running the models rather than by trusting the writer:
1. Does the GGUF compute the same logits as the model it came from (within the quantization's
   tolerance)?
2. When we know the untrained base: is the GGUF the fine-tuned model, not the base? (An adapter
   that was never trained, or got lost on the way, leaves logits equal to the base's.)
3. Does the GGUF's tokenizer carry the same chat template and special tokens, and split the
   fixed prompts into the same ids?
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional
from backend.core.models import ModelError, resolve_model
from backend.export.gguf_tokenizer import READER_UNKNOWN_PRE

PROMPTS = (
    "The capital of France is",
    "def add(a, b):\n    return a +",
    "Once upon a time, a small robot found a",
    "In 2024, 12345 people said:  'héllo wörld' \u2014 ok?",  # digits, runs of spaces, non-ASCII
)
# Relative to the largest |logit| of the source on the prompts. f16 rounds each weight to 11
# significant bits (relative error <= 2**-11 ~ 5e-4), which stays well under 1% of the logit
# scale (bf16 sources convert exactly: 0.0 measured on SmolLM2-135M). Q8_0 keeps 8 bits per weight
# with one scale per 32 weights (up to ~0.4% per weight); measured 3.6% on SmolLM2-135M (30 layers),
# so 10% leaves room for deeper models. A broken conversion (rows in the wrong rope order, a
# tensor under the wrong name) moves logits by a large part of the scale itself.
TOLERANCE = {"f16": 0.01, "q8_0": 0.10}
# Logits this close to the base's mean the fine-tuning changed nothing (exact ties are typical:
# a LoRA whose B matrices are still zero merges to the base bit for bit).
UNCHANGED = 1e-6


@dataclass
class CheckResult:
    checked: bool
    max_logit_diff: float
    tolerance: float
    logit_scale: float
    base_diff: Optional[float] = None        # max |gguf - base|
    adapter_effect: Optional[float] = None   # max |source - base|
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _reuse_gguf_reader() -> Iterator[None]:
    """transformers parses the file's header once for the config, once for the weights and once for
    the tokenizer; with a 50k-150k string vocabulary each parse takes seconds. Within the check the
    file does not change, so one parsed reader per path is shared."""
    import gguf

    original, cache = gguf.GGUFReader, {}

    def cached(path: Any, *args: Any, **kwargs: Any):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(path, *args, **kwargs)
        return cache[key]

    gguf.GGUFReader = cached
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _prompts(tok: Any) -> list[str]:
    prompts = list(PROMPTS)
    if getattr(tok, "chat_template", None):
        with contextlib.suppress(Exception):
            prompts.append(tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                                   add_generation_prompt=True, tokenize=False))
    return prompts


def _logits(model: Any, batches: list[list[int]]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float() for ids in batches]


def _max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _load(path: str, gguf_file: Optional[str] = None):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {"use_safetensors": True}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    return model.eval()


def _apply_rope_freqs(model: Any, gguf_path: Path) -> bool:
    """Divide the reloaded model's rotary frequencies by the file's `rope_freqs`, as llama.cpp does.

    transformers' GGUF reader ignores that tensor (Llama 3.1+ rotary scaling), so without this the
    comparison would test transformers' default rope instead of what llama.cpp and Ollama run."""
    import gguf
    import torch

    tensor = next((t for t in gguf.GGUFReader(str(gguf_path)).tensors if t.name == "rope_freqs.weight"), None)
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if tensor is None or rotary is None:
        return False
    factors = torch.from_numpy(gguf.dequantize(tensor.data, tensor.tensor_type).copy()).reshape(-1)
    rotary.inv_freq = rotary.original_inv_freq / factors.to(rotary.original_inv_freq.dtype)
    return True


def _tokenizer_problems(ref: Any, got: Any, prompts: list[str], pre: Optional[str] = None) -> list[str]:
    problems: list[str] = []
    if (getattr(ref, "chat_template", None) or None) != (getattr(got, "chat_template", None) or None):
        problems.append("the chat template in the GGUF differs from the adapter's tokenizer")
    for name in ("bos_token", "eos_token", "pad_token"):
        want = getattr(ref, name, None)
        if want is not None and getattr(got, name, None) != want:
            problems.append(f"the GGUF's {name.replace('_', ' ')} is {getattr(got, name, None)!r}, "
                            f"the tokenizer's is {want!r}")

    for text in prompts:
        if pre in READER_UNKNOWN_PRE and any(c.isdigit() for c in text):
            continue  # transformers cannot rebuild this split; llama.cpp applies it
        if ref(text)["input_ids"] != got(text)["input_ids"]:
            problems.append(f"the GGUF tokenizer splits {text[:40]!r} into different tokens")
            break
    return problems


def check_export(gguf_path: Path, source_dir: Path, ref_tok: Any, quant: str,
                 base: Optional[str] = None, progress: Any = None, pre: Optional[str] = None) -> CheckResult:
    """Compare the GGUF with `source_dir` (and with `base`, a model reference, when given)."""
    from transformers import AutoTokenizer

    prompts = _prompts(ref_tok)
    batches = [ref_tok(p)["input_ids"] for p in prompts]
    if progress:
        progress(0.75, "Checking: logits of the source model")
    source = _logits(_load(str(source_dir)), batches)
    scale = max(1.0, max(float(x.abs().max()) for x in source))
    base_logits, notes = None, []
    if base:
        if progress:
            progress(0.8, "Checking: logits of the untrained base model")
        try:
            base_logits = _logits(_load(resolve_model(base).source), batches)
        except (ModelError, OSError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            notes.append(f"The base model {base} could not be loaded ({reason}), so the export was not compared "
                         "with it; only with the merged model.")
        if base_logits is not None and [x.shape for x in base_logits] != [x.shape for x in source]:
            base_logits = None  # a resized vocabulary: positions no longer line up one to one
            notes.append(f"The base model {base} has a different vocabulary size, so the export was not "
                         "compared with it; only with the merged model.")
    if progress:
        progress(0.85, "Checking: loading the GGUF back with transformers")
    with _reuse_gguf_reader():
        got_tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        reloaded = _load(str(gguf_path.parent), gguf_path.name)
        _apply_rope_freqs(reloaded, gguf_path)
        exported = _logits(reloaded, batches)
        del reloaded
    tol = TOLERANCE[quant] * scale
    result = CheckResult(True, _max_diff(exported, source), tol, scale, notes=notes)
    if result.max_logit_diff > tol:
        result.problems.append(
            f"the GGUF's logits differ from the source model's by up to {result.max_logit_diff:.4g} "
            f"(tolerance for {quant}: {tol:.4g})")
    if base_logits is not None:
        result.adapter_effect = _max_diff(source, base_logits)
        result.base_diff = _max_diff(exported, base_logits)
        if result.adapter_effect <= UNCHANGED * scale:
            result.problems.append("the exported weights equal the untrained base model's: the adapter "
                                   "changes nothing (was it trained? a LoRA whose B matrices are still zero "
                                   "merges to the base)")
        elif result.base_diff <= result.max_logit_diff:
            result.problems.append("the GGUF behaves like the untrained base model rather than the fine-tuned "
                                   "one: the adapter was lost in the export")
    result.problems += _tokenizer_problems(ref_tok, got_tok, prompts, pre)
    result.checked = not result.problems
    return result
