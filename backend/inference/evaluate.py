"""The evaluation report: is the adapter better than its base model, at the user's task?

On the run's validation rows (or a file the user names): validation loss and perplexity of the base
(adapter disabled) and of the trained adapter; task metrics (backend.inference.metrics) on greedy answers
of the base, the adapter and any checkpoint, side by side and per row; the red-team set
(backend.inference.redteam); and lm-evaluation-harness tasks (backend.inference.harness). Runs as
`ftstudio eval RUN_DIR --json` in a subprocess of the UI; the result is kept in RUN_DIR/eval.json, where
a section not recomputed (say the lm-eval figures when only the metrics ran again) is kept.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from backend.core.config import load_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_json, read_json
from backend.core.models import load_causal_lm, load_tokenizer, resolve_model
from backend.data.records import load_for_training, load_rows
from backend.data.templates import SftCollator, build_sft_dataset, resolve_template, to_conversation
from backend.inference import harness, metrics as task_metrics, redteam
from backend.inference.generation import greedy_answers, render_prompts
from backend.runs.rundir import usable_checkpoints

EVAL_FILE = "eval.json"
BASE, ADAPTER = "base", "adapter"
# Sections a later evaluation keeps when it does not compute them again.
TASK_KEYS = ("metrics", "metric_names", "headline", "extract", "per_row", "confusion", "checkpoint_steps",
             "metrics_data", "metrics_rows")
SECTIONS = {"metrics": TASK_KEYS, "redteam": ("redteam",), "lm_eval": ("lm_eval",)}


def _device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32


class Models:
    """The base, the adapter and checkpoints of one run, loaded once, used one at a time.

    A PEFT run holds one copy of the base weights: the base answers with the adapter switched off and
    each checkpoint is a further named adapter. A full run's adapter/ and checkpoints are whole models;
    checkpoints are loaded when used and dropped after."""

    def __init__(self, cfg, adapter: Path, device: str, dtype) -> None:
        self.cfg, self.adapter, self.device, self.dtype = cfg, adapter, device, dtype
        self.peft = (adapter / "adapter_config.json").exists()
        base = load_causal_lm(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
        if self.peft:
            from peft import PeftModel

            from backend.methods.tokens import fit_base_to_adapter  # rows for the tokens the run added
            self.model = PeftModel.from_pretrained(fit_base_to_adapter(base, adapter), str(adapter)).to(device).eval()
            self.base = None
        else:
            self.base = base.to(device).eval()
            self.model = load_causal_lm(str(adapter), dtype=dtype).to(device).eval()
        self.checkpoints: dict[str, Path] = {}

    def add_checkpoint(self, label: str, path: Path) -> None:
        if self.peft:
            if not (path / "adapter_config.json").exists():
                raise UserError(f"The checkpoint {path.name} holds no adapter; it cannot be evaluated.")
            self.model.load_adapter(str(path), adapter_name=label.replace("-", "_"))
        self.checkpoints[label] = path

    @contextlib.contextmanager
    def use(self, label: str) -> Iterator[Any]:
        if label == BASE:
            if self.peft:
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.base
        elif label == ADAPTER:
            if self.peft:
                self.model.set_adapter("default")
            yield self.model
        elif self.peft:
            self.model.set_adapter(label.replace("-", "_"))
            try:
                yield self.model
            finally:
                self.model.set_adapter("default")
        else:
            model = load_causal_lm(str(self.checkpoints[label]), dtype=self.dtype).to(self.device).eval()
            try:
                yield model
            finally:
                del model


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


def parse_checkpoints(value: Any, run_dir: Path) -> list[tuple[str, int, Path]]:
    """'all', '30,60' or a list of steps -> [(label, step, folder)] of the run's usable checkpoints."""
    if not value:
        return []
    found = {step: path for step, path in usable_checkpoints(run_dir)}
    if str(value).strip().lower() == "all":
        steps = sorted(found)
    else:
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        try:
            steps = [int(str(s).strip().removeprefix("checkpoint-")) for s in items if str(s).strip()]
        except ValueError:
            raise UserError(f"Checkpoints are 'all' or step numbers separated by commas (got {value!r}).") from None
        missing = [s for s in steps if s not in found]
        if missing:
            have = ", ".join(str(s) for s in sorted(found)) or "none"
            raise UserError(f"The run {run_dir.name} has no usable checkpoint at step {', '.join(map(str, missing))} "
                            f"(it has: {have}).")
    return [(f"checkpoint-{s}", s, found[s]) for s in steps]


def _eval_rows(cfg, data_path: Optional[str]) -> tuple[list[dict], str]:
    if data_path:
        return load_rows(data_path, mapping=cfg.data.mapping, format=cfg.data.format).rows, data_path
    _, train_rows, rows = load_for_training(cfg.data, cfg.train.seed)
    if not rows:
        return train_rows[:64], "first training rows (the run has no validation set)"
    return rows, "validation split"


def task_section(models: Models, labels: list[str], names: list[str], extract: Optional[str],
                 prompts: list[list[dict]], references: list[str], texts: list[str], tokenizer, device: str,
                 max_new_tokens: int, batch_size: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Answers of each model to every held-out prompt, scored; per-row results with the headline change."""
    pattern = task_metrics.compile_extractor(extract)
    answers, scored = {}, {}
    for label in labels:
        with models.use(label) as model:
            answers[label] = greedy_answers(
                model, tokenizer, texts, device, max_new_tokens, batch_size,
                progress=lambda done, total, lab=label: progress(f"answering {done}/{total} ({lab})"))
        scored[label] = task_metrics.score_rows(names, answers[label], references, pattern)
    head = names[0]
    per_row = []
    for i, ref in enumerate(references):
        scores = {lab: scored[lab]["rows"][i] for lab in labels}
        per_row.append({"prompt": prompts[i][-1]["content"] if prompts[i] else "", "reference": ref,
                        "answers": {lab: answers[lab][i] for lab in labels},
                        "extracted": {lab: scored[lab]["extracted"][i] for lab in labels} if pattern else None,
                        "scores": scores, "change": task_metrics.row_change(head, scores[BASE], scores[ADAPTER])})
    out: dict[str, Any] = {
        "metrics": {lab: scored[lab]["metrics"] for lab in labels}, "metric_names": names, "extract": extract,
        "headline": {"metric": head, BASE: scored[BASE]["metrics"][head], ADAPTER: scored[ADAPTER]["metrics"][head]},
        "per_row": per_row,
    }
    if "accuracy" in names:
        out["confusion"] = {lab: scored[lab]["confusion"] for lab in labels}
    return out


def redteam_section(models: Models, tokenizer, jinja: Optional[str], prompts: list[dict[str, Any]], device: str,
                    max_new_tokens: int, batch_size: int, progress: Callable[[str], None]) -> dict[str, Any]:
    texts = render_prompts(tokenizer, jinja, [[{"role": "user", "content": p["prompt"]}] for p in prompts])
    answers = {}
    for label in (BASE, ADAPTER):
        with models.use(label) as model:
            answers[label] = greedy_answers(
                model, tokenizer, texts, device, max_new_tokens, batch_size,
                progress=lambda done, total, lab=label: progress(f"red-team prompts {done}/{total} ({lab})"))
    return redteam.judge(prompts, answers, base=BASE)


def lm_eval_section(cfg, adapter: Path, tasks: list[str], merged: Optional[str], limit: Optional[int],
                    device: str, batch_size: int, progress: Callable[[str], None]) -> dict[str, Any]:
    base_src = resolve_model(cfg.model).source
    tokenizer = str(adapter) if (adapter / "tokenizer_config.json").exists() else None
    specs: dict[str, dict[str, Any]] = {BASE: {"pretrained": base_src, "tokenizer": tokenizer}}
    if (adapter / "adapter_config.json").exists():
        specs[ADAPTER] = {"pretrained": base_src, "peft": str(adapter), "tokenizer": tokenizer}
    else:
        specs[ADAPTER] = {"pretrained": str(adapter)}
    if merged:
        if not (Path(merged) / "config.json").exists():
            raise UserError(f"{merged} is not a merged model folder (it has no config.json).")
        specs["merged"] = {"pretrained": str(Path(merged).resolve())}
    return harness.run_harness(specs, tasks, limit=limit, batch_size=batch_size, device=device, progress=progress)


def _merge_previous(run_dir: Path, result: dict[str, Any], computed: set[str]) -> dict[str, Any]:
    old = read_json(run_dir / EVAL_FILE, None)
    if isinstance(old, dict):
        for section, keys in SECTIONS.items():
            if section not in computed:
                result.update({k: old[k] for k in keys if k in old})
    return result


def evaluate_run(run_dir: str | Path, data_path: Optional[str] = None, samples: int = 5,
                 max_new_tokens: int = 48, progress: Callable[[str], None] = lambda s: None,
                 metrics: Optional[list[str]] = None, extract: Optional[str] = None,
                 checkpoints: Any = None, batch_size: int = 8, limit: Optional[int] = None,
                 redteam_set: bool = False, redteam_file: Optional[str] = None,
                 workspace: Optional[Path] = None, lm_eval_tasks: Optional[list[str]] = None,
                 lm_eval_limit: Optional[int] = None, merged: Optional[str] = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a run directory (it has no config.yaml).")
    adapter = run_dir / "adapter"
    if not adapter.is_dir() or not any(adapter.iterdir()):
        raise UserError(f"The run {run_dir.name} has no trained adapter yet; evaluate it once it has completed "
                        "or was stopped (stopping saves the adapter).")
    cfg = load_config(run_dir / "config.yaml")
    # Every argument is checked before a model loads, so a typo costs no minutes.
    names = task_metrics.parse_metric_names(metrics) if metrics else []
    task_metrics.compile_extractor(extract)
    chosen_ckpts = parse_checkpoints(checkpoints, run_dir)
    rt_prompts = redteam.prompt_set(workspace if workspace is not None else run_dir.parent.parent,
                                    redteam_file) if (redteam_set or redteam_file) else []
    tasks = harness.parse_tasks(lm_eval_tasks) if lm_eval_tasks else []
    if tasks:
        harness.require_lm_eval()
        harness.resolve_tasks(tasks)
    started = time.time()
    rows, source = _eval_rows(cfg, data_path)
    if limit:
        rows = rows[:max(1, int(limit))]
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
    models = Models(cfg, adapter, device, dtype)
    for label, _, path in chosen_ckpts:
        models.add_checkpoint(label, path)
    dataset = build_sft_dataset(tokenizer, rows, cfg.data.model_copy(update={"packing": False}))
    collator = SftCollator(tokenizer.pad_token_id)

    progress("validation loss")
    result: dict[str, Any] = {}
    losses: dict[str, list] = {}
    for label in (BASE, ADAPTER):
        with models.use(label) as model:
            loss, per_row = _loss(model, dataset, collator, device)
        losses[label] = per_row
        result[label] = {"loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50.0)), 4)}
    # Paired per-row differences (adapter minus base): the verdict's evidence and its uncertainty.
    result["row_differences"] = [round(a - b, 6) for a, b in zip(losses[ADAPTER], losses[BASE])
                                 if a is not None and b is not None]

    _, jinja, _ = resolve_template(tokenizer, cfg.data.template)
    pairs = [pr for pr in (_prompt_and_reference(r) for r in rows) if pr is not None]
    wanted = pairs if names else pairs[:samples]
    texts = render_prompts(tokenizer, jinja, [p for p, _ in wanted], cfg.data.system_prompt)
    computed = set()
    if names:
        progress("task metrics")
        labels = [BASE, ADAPTER] + [label for label, _, _ in chosen_ckpts]
        result.update(task_section(models, labels, names, extract, [p for p, _ in wanted], [r for _, r in wanted],
                                   texts, tokenizer, device, max_new_tokens, batch_size, progress))
        result["checkpoint_steps"] = {label: step for label, step, _ in chosen_ckpts}
        result["metrics_data"], result["metrics_rows"] = source, len(wanted)
        result["samples"] = [{"prompt": r["prompt"], "reference": r["reference"], "base": r["answers"][BASE],
                              "adapter": r["answers"][ADAPTER]} for r in result["per_row"][:samples]]
        computed.add("metrics")
    else:
        progress("sample answers")
        answers = {}
        for label in (BASE, ADAPTER):
            with models.use(label) as model:
                answers[label] = greedy_answers(model, tokenizer, texts, device, max_new_tokens, batch_size)
        result["samples"] = [{"prompt": p[-1]["content"], "reference": ref, "base": answers[BASE][i],
                              "adapter": answers[ADAPTER][i]} for i, (p, ref) in enumerate(wanted)]
    if rt_prompts:
        progress("red-team prompts")
        result["redteam"] = redteam_section(models, tokenizer, jinja, rt_prompts, device, max_new_tokens,
                                            batch_size, progress)
        computed.add("redteam")
    del models
    if tasks:
        progress("lm-evaluation-harness")
        result["lm_eval"] = lm_eval_section(cfg, adapter, tasks, merged, lm_eval_limit, device, batch_size, progress)
        computed.add("lm_eval")
    result["data"] = source
    result["rows"] = len(rows)
    result["seconds"] = round(time.time() - started, 1)
    result = _merge_previous(run_dir, result, computed)
    atomic_write_json(run_dir / EVAL_FILE, result)
    return result
