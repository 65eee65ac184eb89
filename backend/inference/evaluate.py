"""The evaluation report: is the adapter better than its base model?

Validation loss and perplexity of the base (adapter disabled) and of the trained
adapter on the run's validation rows (or a file the user names), plus N prompts
answered by both next to the reference. Runs as `ftstudio eval RUN_DIR --json` in a
subprocess of the UI; the result is kept in RUN_DIR/eval.json.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

from backend.core.config import load_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_json
from backend.core.models import load_causal_lm, load_tokenizer
from backend.data.records import load_for_training, load_rows
from backend.data.templates import SftCollator, build_sft_dataset, resolve_template, to_conversation

EVAL_FILE = "eval.json"


def _device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32


def _load_models(cfg, adapter: Path, device: str, dtype):
    """(model, use_adapter context factory, base context factory) for PEFT and full runs alike."""
    import contextlib

    if (adapter / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_causal_lm(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
        model = PeftModel.from_pretrained(base, str(adapter)).to(device).eval()
        # One copy of the weights: the base answers with the adapter switched off.
        return (lambda: model, contextlib.nullcontext), (lambda: model, model.disable_adapter)
    tuned = load_causal_lm(str(adapter), dtype=dtype).to(device).eval()
    base = load_causal_lm(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code).to(device).eval()
    return (lambda: tuned, contextlib.nullcontext), (lambda: base, contextlib.nullcontext)


def _loss(model, dataset, collator, device: str, batch_size: int = 4) -> tuple[float, list[Optional[float]]]:
    """(token-weighted mean loss over graded tokens, each row's own mean loss or None without graded
    tokens): the same labels the trainer used. The per-row losses give the verdict its uncertainty."""
    import torch

    total, count = 0.0, 0
    per_row: list[Optional[float]] = []
    rows = [dataset[i] for i in range(len(dataset))]
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collator(rows[i:i + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            lp = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                reduction="none").view(labels.shape)
            graded = (labels != -100).sum(dim=1)
            sums = lp.sum(dim=1)
            total += float(sums.sum())
            count += int(graded.sum())
            per_row += [float(s) / int(n) if int(n) else None for s, n in zip(sums, graded)]
    if count == 0:
        raise UserError("The evaluation rows have no graded tokens (every label is -100); check the data settings.")
    return total / count, per_row


def _prompt_and_reference(row: dict) -> Optional[tuple[list[dict], str]]:
    msgs = to_conversation(row)
    if not msgs:
        return None
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    return msgs[:last], msgs[last]["content"]


def _generate(model, tokenizer, prompt_text: str, device: str, max_new_tokens: int) -> str:
    import torch

    enc = tokenizer(prompt_text, return_tensors="pt", add_special_tokens=False).to(device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def evaluate_run(run_dir: str | Path, data_path: Optional[str] = None, samples: int = 5,
                 max_new_tokens: int = 48, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a run directory (it has no config.yaml).")
    adapter = run_dir / "adapter"
    if not adapter.is_dir() or not any(adapter.iterdir()):
        raise UserError(f"The run {run_dir.name} has no trained adapter yet; evaluate it once it has completed "
                        "or was stopped (stopping saves the adapter).")
    cfg = load_config(run_dir / "config.yaml")
    started = time.time()
    if data_path:
        rows = load_rows(data_path, mapping=cfg.data.mapping, format=cfg.data.format).rows
        source = data_path
    else:
        _, train_rows, rows = load_for_training(cfg.data, cfg.train.seed)
        source = "validation split"
        if not rows:
            rows, source = train_rows[:64], "first training rows (the run has no validation set)"
    if not rows:
        raise UserError("There are no rows to evaluate on; name a data file.")

    if (adapter / "tokenizer_config.json").exists():  # the run saved the tokenizer it trained with
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    device, dtype = _device_and_dtype()
    progress("loading models")
    (tuned_get, tuned_ctx), (base_get, base_ctx) = _load_models(cfg, adapter, device, dtype)
    dataset = build_sft_dataset(tokenizer, rows, cfg.data.model_copy(update={"packing": False}))
    collator = SftCollator(tokenizer.pad_token_id)

    progress("validation loss")
    result: dict[str, Any] = {}
    with base_ctx():
        base_loss, base_rows = _loss(base_get(), dataset, collator, device)
    adapter_loss, adapter_rows = _loss(tuned_get(), dataset, collator, device)
    for key, loss in (("base", base_loss), ("adapter", adapter_loss)):
        result[key] = {"loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50.0)), 4)}
    # Paired per-row differences (adapter minus base): the verdict's evidence and its uncertainty.
    result["row_differences"] = [round(a - b, 6) for a, b in zip(adapter_rows, base_rows)
                                 if a is not None and b is not None]

    progress("sample answers")
    _, jinja, _ = resolve_template(tokenizer, cfg.data.template)
    out_samples = []
    for row in rows:
        if len(out_samples) >= samples:
            break
        pr = _prompt_and_reference(row)
        if pr is None:
            continue
        prompt_msgs, reference = pr
        if cfg.data.system_prompt and not (prompt_msgs and prompt_msgs[0]["role"] == "system"):
            prompt_msgs = [{"role": "system", "content": cfg.data.system_prompt}] + prompt_msgs
        text = tokenizer.apply_chat_template(prompt_msgs, chat_template=jinja, tokenize=False,
                                             add_generation_prompt=True)
        with base_ctx():
            base_answer = _generate(base_get(), tokenizer, text, device, max_new_tokens)
        adapter_answer = _generate(tuned_get(), tokenizer, text, device, max_new_tokens)
        out_samples.append({"prompt": prompt_msgs[-1]["content"], "reference": reference,
                            "base": base_answer, "adapter": adapter_answer})
    result["samples"] = out_samples
    result["data"] = source
    result["rows"] = len(rows)
    result["seconds"] = round(time.time() - started, 1)
    atomic_write_json(run_dir / EVAL_FILE, result)
    return result
