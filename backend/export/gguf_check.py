"""Check an exported GGUF with llama.cpp itself against the model it came from (run in transformers).

The runtime users run (llama.cpp; Ollama embeds it) loads the file, and its answers are compared
with the merged model's:
1. tokenization: the same ids for a fixed set of strings (ASCII, accents, emoji, code, digits,
   the chat template's special markers), with and without the tokenizer's own special tokens;
2. metadata as llama.cpp reads it: the chat template, BOS/EOS and the turn-end token that stops
   generation;
3. the model: greedy continuations of training-format prompts (does llama.cpp pick the token the
   merged model picked, at every step), next-token top-k agreement over all positions, the
   largest logit difference, and the perplexity on validation rows next to the merged model's;
4. when the untrained base is known: that the file is the fine-tuned model, not the base.
Thresholds are per quantization (`TOLERANCES`); the figures are reported either way.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from backend.core.errors import UserError
from backend.core.models import ModelError, resolve_model
from backend.export.llamacpp import LlamaModel
from backend.export.llamacpp_lib import LlamaCppMissing

TOKEN_STRINGS = (
    "The capital of France is Paris.",
    "héllo wörld, naïve café, Ærøskøbing, São Paulo, Zürich",
    "emoji: 🎉🚀 👍🏽 ❤️ 🇫🇷",
    "def add(a, b):\n    return a + b  # sum\n\n\tif x != 0: print(f\"{x!r}\")",
    "In 2024, 12345 people said:  'ok'   \u2014 3.14159, 1e-9, 0x1F",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "   leading spaces, trailing spaces   \n\n\nnewlines",
)
PROMPTS = (
    "The capital of France is",
    "def add(a, b):\n    return a +",
    "Once upon a time, a small robot found a",
)
FREE_TEXTS = (  # perplexity when there are no validation rows (a plain model folder)
    "The quick brown fox jumps over the lazy dog. It was a sunny day and the birds were singing.",
    "Water boils at 100 degrees Celsius at sea level. At higher altitudes it boils at lower temperatures.",
)
TOP_K = 5
GREEDY_TOKENS = 12


@dataclass(frozen=True)
class Tolerance:
    """The limits one quantization must meet (measured on the bundled SmolLM2-135M and the tiny test model)."""
    logit: float        # largest |logit difference| as a fraction of the merged model's largest |logit|
    top1: float         # fraction of positions where llama.cpp's most likely token is the merged model's (*)
    topk: float         # mean overlap of the top-5 token sets (*)
    greedy: float       # fraction of greedy continuation steps where llama.cpp picks the same token (*)
    # (*) near-ties within the file's own rounding count as agreeing (CheckResult.decided)
    perplexity: float   # allowed perplexity increase, as a fraction of the merged model's


# Measured with llama.cpp on the bundled SmolLM2-135M (whose 576-wide rows are no multiple of 256,
# so llama.cpp's k-quants fall back to q5/q8 blocks for many tensors: its q5_k_m loses more than
# its q4_k_m there) and on the tiny test model; a broken conversion (wrong rope order, a tensor
# under the wrong name, a wrong tokenizer) misses these by far: perplexity many times higher,
# top-1 agreement near zero.
TOLERANCES = {
    "f16": Tolerance(logit=0.02, top1=0.99, topk=0.99, greedy=0.99, perplexity=0.02),
    "q8_0": Tolerance(logit=0.10, top1=0.95, topk=0.95, greedy=0.95, perplexity=0.05),
    "q6_k": Tolerance(logit=0.30, top1=0.90, topk=0.90, greedy=0.85, perplexity=0.15),
    "q5_k_m": Tolerance(logit=0.45, top1=0.85, topk=0.85, greedy=0.80, perplexity=0.35),
    "q4_k_m": Tolerance(logit=0.50, top1=0.80, topk=0.80, greedy=0.80, perplexity=0.35),
}
# Logits this close to the base's mean the fine-tuning changed nothing (exact ties are typical:
# a LoRA whose B matrices are still zero merges to the base bit for bit).
UNCHANGED = 1e-6


@dataclass
class CheckTexts:
    """What the check runs: training-format prompts and graded validation sequences."""
    prompts: list[list[int]]
    graded: list[tuple[list[int], list[int]]]   # (input_ids, labels with -100 for ungraded)
    source: str                                  # where the graded rows came from, for the report


@dataclass
class CheckResult:
    checked: bool
    quant: str
    tolerance: float
    max_logit_diff: float
    logit_scale: float
    token_agreement: float
    top1_agreement: float
    topk_agreement: float
    greedy_agreement: float
    perplexity: float
    merged_perplexity: float
    perplexity_source: str
    # The same agreements, counting a token the merged model ranks within this file's own rounding
    # (twice the RMS logit difference at that position) of its choice as agreeing: on a near-tie
    # the quantization may legitimately pick either. The limits apply to these.
    decided: dict[str, float] = field(default_factory=dict)
    llama_cpp: dict[str, Any] = field(default_factory=dict)
    base_diff: Optional[float] = None        # max |gguf - base|
    adapter_effect: Optional[float] = None   # max |source - base|
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def quality_loss(self) -> float:
        """Perplexity increase over the merged model, as a fraction."""
        return self.perplexity / self.merged_perplexity - 1.0

    def figures(self) -> dict[str, Any]:
        def num(x: Optional[float], digits: int = 4) -> Optional[float]:
            return None if x is None or math.isnan(x) else round(x, digits)

        return {"checked": self.checked, "checked_by": "llama.cpp", "quant": self.quant,
                "token_agreement": round(self.token_agreement, 4),
                "top1_agreement": round(self.top1_agreement, 4),
                "topk_agreement": round(self.topk_agreement, 4), "top_k": TOP_K,
                "greedy_agreement": round(self.greedy_agreement, 4),
                "agreement_where_clear": {k: round(v, 4) for k, v in self.decided.items()},
                "max_logit_diff": num(self.max_logit_diff, 6), "tolerance": num(self.tolerance, 6),
                "perplexity": num(self.perplexity), "merged_perplexity": num(self.merged_perplexity),
                "quality_loss": num(self.quality_loss, 5), "perplexity_source": self.perplexity_source,
                "llama_cpp": self.llama_cpp, "base_logit_diff": self.base_diff,
                "adapter_effect": self.adapter_effect, "problems": list(self.problems)}


def default_texts(tok: Any) -> CheckTexts:
    """Prompts and graded texts for a model without validation rows: fixed, chat-formatted when it can."""
    prompts = [tok(p, add_special_tokens=True)["input_ids"] for p in PROMPTS]
    if getattr(tok, "chat_template", None):
        for conv in ([{"role": "user", "content": "What is 2 + 2?"}],
                     [{"role": "system", "content": "You answer briefly."},
                      {"role": "user", "content": "Name a colour."}]):
            with contextlib.suppress(Exception):
                text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
                prompts.append(tok(text, add_special_tokens=False)["input_ids"])
    graded = []
    for text in FREE_TEXTS:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        graded.append((ids, list(ids)))
    return CheckTexts(prompts, graded, "built-in sentences (no validation rows: not a run)")


def special_strings(tok: Any) -> list[str]:
    """The tokenizer's special markers, alone and inside a chat-formatted string."""
    out = []
    markers = [t for t in (getattr(tok, "all_special_tokens", None) or []) if t]
    if markers:
        out.append("".join(markers))
    if getattr(tok, "chat_template", None):
        with contextlib.suppress(Exception):
            out.append(tok.apply_chat_template(
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"},
                 {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}],
                add_generation_prompt=True, tokenize=False))
    return out


def _hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _hf_greedy(model: Any, ids: list[int], n: int, stop: set[int]) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, num_beams=1,
                             pad_token_id=next(iter(stop), 0), eos_token_id=sorted(stop) or None)
    return [int(t) for t in out[0][len(ids):]]


def _load_hf(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()


def _nll(logits: np.ndarray, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of the graded next tokens, and their count."""
    total, count = 0.0, 0
    for i in range(len(ids) - 1):
        target = labels[i + 1]
        if target < 0:
            continue
        row = logits[i].astype(np.float64)
        top = row.max()
        total += float(top + math.log(np.exp(row - top).sum()) - row[target])
        count += 1
    return total, count


def _topk(row: np.ndarray, k: int) -> set[int]:
    return set(np.argpartition(-row, k)[:k].tolist())


def _tokenization(tok: Any, gg: LlamaModel, strings: list[str]) -> tuple[float, list[str]]:
    problems, same = [], 0
    for text in strings:
        want = tok(text, add_special_tokens=False)["input_ids"]
        got = gg.tokenize(text, add_special=False, parse_special=True)
        if want == got:
            same += 1
        elif len(problems) < 3:
            at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            problems.append(f"llama.cpp splits {text[:40]!r} into different tokens (from token {at}: "
                            f"{got[at:at + 4]} in llama.cpp, {want[at:at + 4]} in transformers)")
    want = tok("Hello", add_special_tokens=True)["input_ids"]
    got = gg.tokenize("Hello", add_special=True, parse_special=True)
    if want != got:
        problems.append(f"llama.cpp adds different special tokens around a prompt ({got} where transformers "
                        f"gives {want}): the BOS/EOS flags in the GGUF are wrong")
    return same / len(strings), problems


def _metadata(tok: Any, gg: LlamaModel, turn_end: Optional[str]) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    special = gg.special()
    template = gg.chat_template()
    want_template = getattr(tok, "chat_template", None) or None
    if (template or None) != want_template:
        problems.append("the chat template llama.cpp reads from the GGUF differs from the tokenizer's"
                        if want_template else "the GGUF carries a chat template the tokenizer does not have")
    for key, attr in (("eos", "eos_token_id"), ("bos", "bos_token_id")):
        want = getattr(tok, attr, None)
        if want is not None and special[key] != want:
            problems.append(f"llama.cpp reads {key.upper()} as token {special[key]}, the tokenizer's is {want}")
    stops = []
    for marker in filter(None, (turn_end, getattr(tok, "eos_token", None))):
        ids = tok(marker, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            stops.append(marker)
            if not gg.is_end_of_generation(ids[0]):
                problems.append(f"llama.cpp does not stop generating at {marker!r}: the answer would run on")
    info = {"pre_tokenizer": gg.meta("tokenizer.ggml.pre"), "chat_template": bool(template),
            "bos": special["bos"], "eos": special["eos"], "eot": special["eot"], "add_bos": special["add_bos"],
            "stops_at": list(dict.fromkeys(stops))}
    return info, problems


def _turn_end(tok: Any) -> Optional[str]:
    from backend.export.gguf_tokenizer import TURN_END_TOKENS

    template = getattr(tok, "chat_template", None) or ""
    return next((m for m in TURN_END_TOKENS if m in template), None)


@dataclass
class Reference:
    """The merged model's side of the comparison, computed once for all the quants of one export."""
    sequences: list[list[int]]                # greedy prompts + continuation, then graded rows
    greedy_at: list[tuple[int, list[int]]]    # (prompt length, continuation) per prompt
    labels: list[list[int]]                   # per graded row
    logits: list[np.ndarray]
    base_logits: Optional[list[np.ndarray]]   # the untrained base, on the prompt sequences only
    turn_end: Optional[str]


def reference(source: Any, tok: Any, texts: CheckTexts, base: Any = None) -> Reference:
    turn_end = _turn_end(tok)
    stop = {i for i in (getattr(tok, "eos_token_id", None),) if i is not None}
    if turn_end:
        stop.add(tok.convert_tokens_to_ids(turn_end))
    sequences, greedy_at = [], []
    for ids in texts.prompts:
        cont = _hf_greedy(source, ids, GREEDY_TOKENS, stop)
        sequences.append(ids + cont)
        greedy_at.append((len(ids), cont))
    base_logits = [_hf_logits(base, ids) for ids in sequences] if base is not None else None
    sequences += [ids for ids, _ in texts.graded]
    return Reference(sequences, greedy_at, [labels for _, labels in texts.graded],
                     [_hf_logits(source, ids) for ids in sequences], base_logits, turn_end)


def compare_with_llama_cpp(gg: LlamaModel, ref: Reference, tok: Any, texts: CheckTexts, quant: str) -> CheckResult:
    """All the figures for one loaded GGUF against the merged model (and the base, when known)."""
    limits = TOLERANCES[quant]
    token_agreement, problems = _tokenization(tok, gg, list(TOKEN_STRINGS) + special_strings(tok))
    info, meta_problems = _metadata(tok, gg, ref.turn_end)
    problems += meta_problems

    diff, scale, top1, topk, positions = 0.0, 1.0, 0, 0.0, 0
    top1_tied, topk_tied = 0, 0.0
    greedy_same = greedy_total = greedy_tied = 0
    nll_hf = nll_gg = 0.0
    count = 0
    base_diff = adapter_effect = 0.0
    for n, (ids, want) in enumerate(zip(ref.sequences, ref.logits)):
        got = gg.logits(ids)
        if got.shape[1] != want.shape[1]:
            problems.append(f"llama.cpp's vocabulary has {got.shape[1]} tokens, the merged model's {want.shape[1]}")
            break
        scale = max(scale, float(np.abs(want).max()))
        diff = max(diff, float(np.abs(want - got).max()))
        margins = 2.0 * np.sqrt(((got - want) ** 2).mean(axis=1))
        for i in range(len(ids)):
            positions += 1
            pick, best = int(got[i].argmax()), int(want[i].argmax())
            top1 += int(pick == best)
            top1_tied += int(want[i][pick] >= want[i][best] - margins[i])
            mine, theirs = _topk(want[i], TOP_K), _topk(got[i], TOP_K)
            topk += len(mine & theirs) / TOP_K
            kth = min(want[i][t] for t in mine)
            topk_tied += sum(1 for t in theirs if want[i][t] >= kth - margins[i]) / TOP_K
        if n < len(ref.greedy_at):
            start, cont = ref.greedy_at[n]
            for j, token in enumerate(cont):
                at = start - 1 + j
                pick = int(got[at].argmax())
                greedy_total += 1
                greedy_same += int(pick == token)
                greedy_tied += int(want[at][pick] >= want[at][token] - margins[at])
            if ref.base_logits is not None:
                adapter_effect = max(adapter_effect, float(np.abs(want - ref.base_logits[n]).max()))
                base_diff = max(base_diff, float(np.abs(got - ref.base_logits[n]).max()))
        else:
            labels = ref.labels[n - len(ref.greedy_at)]
            a, c = _nll(want, ids, labels)
            b, _ = _nll(got, ids, labels)
            nll_hf, nll_gg, count = nll_hf + a, nll_gg + b, count + c
        del got

    count = max(count, 1)
    result = CheckResult(
        checked=False, quant=quant, tolerance=limits.logit * scale, max_logit_diff=diff, logit_scale=scale,
        token_agreement=token_agreement, top1_agreement=top1 / max(positions, 1),
        topk_agreement=topk / max(positions, 1), greedy_agreement=greedy_same / max(greedy_total, 1),
        decided={"top1": top1_tied / max(positions, 1), "topk": topk_tied / max(positions, 1),
                 "greedy": greedy_tied / max(greedy_total, 1)},
        perplexity=math.exp(min(nll_gg / count, 50.0)), merged_perplexity=math.exp(min(nll_hf / count, 50.0)),
        perplexity_source=texts.source, llama_cpp=info, problems=problems)
    for name, key, least in (("top-1", "top1", limits.top1), (f"top-{TOP_K}", "topk", limits.topk),
                             ("greedy continuation", "greedy", limits.greedy)):
        if result.decided[key] < least:
            result.problems.append(f"llama.cpp's {name} agreement with the merged model is "
                                   f"{result.decided[key]:.1%} where the merged model's choice is clear "
                                   f"(at least {least:.0%} expected for {quant})")
    if diff > result.tolerance:
        result.problems.append(f"llama.cpp's logits differ from the merged model's by up to {diff:.4g} "
                               f"(tolerance for {quant}: {result.tolerance:.4g})")
    if result.quality_loss > limits.perplexity:
        result.problems.append(f"the perplexity in llama.cpp is {result.perplexity:.4g} against the merged model's "
                               f"{result.merged_perplexity:.4g} (+{result.quality_loss:.1%}; at most "
                               f"+{limits.perplexity:.0%} expected for {quant})")
    if ref.base_logits is not None:
        result.adapter_effect, result.base_diff = adapter_effect, base_diff
        if adapter_effect <= UNCHANGED * scale:
            result.problems.append("the exported weights equal the untrained base model's: the adapter "
                                   "changes nothing (was it trained? a LoRA whose B matrices are still zero "
                                   "merges to the base)")
        elif adapter_effect > 2 * diff and base_diff <= diff:
            result.problems.append("the GGUF behaves like the untrained base model rather than the fine-tuned "
                                   "one: the adapter was lost in the export")
        elif adapter_effect <= 2 * diff:
            result.notes.append(f"The fine-tuning moves logits by at most {adapter_effect:.3g}, no more than the "
                                f"{quant} rounding ({diff:.3g}), so this export cannot be told apart from the base "
                                "model by its logits; a higher-precision export keeps the fine-tuning visible.")
    result.checked = not result.problems
    return result


def load_models(source_dir: Path, base: Optional[str]) -> tuple[Any, Any, list[str]]:
    """The merged model and (when it loads and lines up) the untrained base, in transformers."""
    source = _load_hf(str(source_dir))
    notes: list[str] = []
    ref = None
    if base:
        try:
            ref = _load_hf(resolve_model(base).source)
        except (ModelError, OSError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            notes.append(f"The base model {base} could not be loaded ({reason}), so the export was not compared "
                         "with it; only with the merged model.")
        if ref is not None and ref.config.vocab_size != source.config.vocab_size:
            ref = None  # a resized vocabulary: positions no longer line up one to one
            notes.append(f"The base model {base} has a different vocabulary size, so the export was not "
                         "compared with it; only with the merged model.")
    return source, ref, notes


def n_ctx_for(texts: CheckTexts) -> int:
    longest = max([len(p) + GREEDY_TOKENS for p in texts.prompts] + [len(ids) for ids, _ in texts.graded])
    return max(256, 64 * math.ceil(longest / 64))


def check_export(gguf_path: Path, ref: Reference, tok: Any, quant: str, texts: CheckTexts,
                 lora: Optional[Path] = None) -> CheckResult:
    """Load `gguf_path` (plus a LoRA GGUF) in llama.cpp and compare it with the loaded merged model."""
    try:
        gg = LlamaModel(gguf_path, n_ctx=n_ctx_for(texts), lora=lora)
    except LlamaCppMissing:
        raise
    except UserError as e:  # llama.cpp refuses the file: a failed export, not bad input
        return refused(quant, str(e).rstrip("."))
    with gg:
        return compare_with_llama_cpp(gg, ref, tok, texts, quant)


def refused(quant: str, problem: str) -> CheckResult:
    nan = float("nan")
    return CheckResult(False, quant, nan, nan, nan, 0.0, 0.0, 0.0, 0.0, nan, nan, "",
                       decided={"top1": 0.0, "topk": 0.0, "greedy": 0.0}, problems=[problem])
