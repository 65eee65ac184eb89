"""The model card (README.md in the hub's format) of a run's adapter, merged model or GGUF file.

`card_facts` reads what a run directory holds (config.yaml, status.json, events.jsonl, eval.json, meta.json);
`render_card` turns those facts into the card's text and does nothing else; `write_card` puts it next to
the weights. The trainer writes one into `adapter/`, the merge into the merged folder, and `ftstudio push`
renders it again so figures that came later (an evaluation) are on the hub too.
"""
from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path
from typing import Any, Optional

import yaml

from backend.core import catalog
from backend.core.config import load_config
from backend.core.io import atomic_write_text, read_json
from backend.core.models import BUNDLED, looks_like_hub_id
from backend.core.paths import PROJECT_ROOT
from backend.runs import events as ev
from backend.runs import rundir

CARD_FILE = "README.md"
KINDS = ("adapter", "merged", "gguf")
_TRAIN_FIELDS = ("learning_rate", "epochs", "max_steps", "batch_size", "gradient_accumulation", "scheduler",
                 "warmup_ratio", "weight_decay", "optimizer", "precision", "seed")
_DATA_FIELDS = ("max_length", "packing", "train_on_prompt", "template")


def studio_version() -> str:
    """The installed package's version, else the checkout's pyproject.toml."""
    try:
        return importlib.metadata.version("fine-tune-studio")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import tomllib
        return str(tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


def hub_base(base: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(hub id, license) of a base reference, where known: the bundled model's, a hub id's (no license)."""
    if not base:
        return None, None
    if base in BUNDLED:
        info = BUNDLED[base]
        return info.get("hub_id"), info.get("license")
    if looks_like_hub_id(base) and not Path(base).expanduser().exists():
        return base, None
    return None, None


def _finite(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def training_curve(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best train/validation loss and the step count, from the run's events."""
    train = [(e.get("step"), _finite(e.get("loss"))) for e in events if e.get("type") == ev.TRAIN]
    train = [(s, l) for s, l in train if l is not None]
    evals = [(e.get("step"), _finite(e.get("val_loss"))) for e in events if e.get("type") == ev.EVAL]
    evals = [(s, l) for s, l in evals if l is not None]
    steps = [e.get("step") for e in events if isinstance(e.get("step"), int)]
    out: dict[str, Any] = {"steps": max(steps) if steps else None}
    if train:
        best = min(train, key=lambda t: t[1])
        out.update(final_train_loss=train[-1][1], best_train_loss=best[1], best_train_step=best[0])
    if evals:
        best = min(evals, key=lambda t: t[1])
        out.update(final_val_loss=evals[-1][1], best_val_loss=best[1], best_val_step=best[0], evaluations=len(evals))
    end = next((e for e in reversed(events) if e.get("type") == ev.TRAIN_END), None)
    if end and _finite(end.get("train_loss")) is not None:
        out["mean_train_loss"] = _finite(end.get("train_loss"))
    return out


def card_facts(run_dir: Optional[Path], base: Optional[str] = None) -> dict[str, Any]:
    """Everything the card says, read from the run directory (None: an adapter with no run, only its base)."""
    facts: dict[str, Any] = {"base": base, "studio_version": studio_version()}
    if run_dir is None or not (Path(run_dir) / rundir.CONFIG_FILE).exists():
        return facts
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / rundir.CONFIG_FILE)
    status = read_json(run_dir / rundir.STATUS_FILE, {}) or {}
    events, _ = rundir.read_events(run_dir)
    m = cfg.method.model_dump()
    info = catalog.METHODS[cfg.method.name]
    facts.update(
        run_id=run_dir.name, name=cfg.name, base=base or cfg.model, state=status.get("state"),
        method=cfg.method.name, method_title=info.title, objective=cfg.objective,
        objective_title=catalog.OBJECTIVES[cfg.objective].title,
        method_params={k: m[k] for k in info.params if k in m},
        train_params={k: getattr(cfg.train, k) for k in _TRAIN_FIELDS if getattr(cfg.train, k) is not None},
        data_params={k: getattr(cfg.data, k) for k in _DATA_FIELDS},
        dataset={"name": Path(cfg.data.path).name, "validation": Path(cfg.data.validation_path).name
                 if cfg.data.validation_path else None, "train_rows": status.get("train_rows"),
                 "validation_rows": status.get("validation_rows")},
        curve=training_curve(events), eval=read_json(run_dir / "eval.json"),
        versions=(read_json(run_dir / rundir.META_FILE, {}) or {}).get("versions") or {})
    return facts


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def _front_matter(facts: dict[str, Any], kind: str, peft_adapter: bool) -> dict[str, Any]:
    hub_id, license_ = hub_base(facts.get("base"))
    reward = facts.get("objective") == catalog.OBJECTIVE.reward
    library = {"adapter": "peft" if peft_adapter else "transformers", "merged": "transformers", "gguf": "gguf"}[kind]
    tags = ["fine-tune-studio", *(t for t in (facts.get("method"), facts.get("objective")) if t)]
    if kind == "adapter" and peft_adapter:
        tags.append("peft")
    if kind == "gguf":
        tags.append("gguf")
    if facts.get("objective"):
        tags.append("trl")
    fm: dict[str, Any] = {}
    if hub_id:
        fm["base_model"] = hub_id
    fm["library_name"] = library
    if license_:
        fm["license"] = license_
    fm["pipeline_tag"] = "text-classification" if reward else "text-generation"
    fm["tags"] = list(dict.fromkeys(tags))
    return fm


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None)]


def _usage(kind: str, peft_adapter: bool, base_id: str, repo: str) -> list[str]:
    if kind == "gguf":
        return ["```sh", "llama-cli -m MODEL.gguf -cnv   # or: ollama create NAME -f Modelfile", "```"]
    if kind == "adapter" and peft_adapter:
        return ["```python", "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```",
                f"The adapter loads on its base model, `{base_id}`."]
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```"]


def render_card(facts: dict[str, Any], kind: str = "adapter", peft_adapter: bool = True,
                notes: tuple[str, ...] = (), repo: Optional[str] = None) -> str:
    """The README.md text: YAML front matter, then base model, method, data, figures and intended use."""
    if kind not in KINDS:
        raise ValueError(f"unknown card kind {kind!r}; expected one of {KINDS}")
    base = facts.get("base") or "unknown"
    hub_id, license_ = hub_base(base)
    what = {"adapter": "adapter" if peft_adapter else "fine-tuned model", "merged": "merged model",
            "gguf": "GGUF model"}[kind]
    title = facts.get("name") or facts.get("run_id") or f"Fine-tuned {base}"
    lines = ["---", yaml.safe_dump(_front_matter(facts, kind, peft_adapter), sort_keys=False).rstrip(), "---", "",
             f"# {title}", "",
             f"{'An' if what[0] in 'aeiou' else 'A'} {what} of `{hub_id or base}`, trained with Fine-Tune Studio {facts.get('studio_version')}."
             + ("" if kind != "merged" else " The adapter's weights are folded into the base: it loads as an "
                                            "ordinary model, without PEFT."), ""]
    lines += ["## Base model", "", f"`{hub_id or base}`" + (f" (license {license_})" if license_ else "")
              + ("" if hub_id else "; a local folder or a model not on the hub."), ""]
    if facts.get("method"):
        lines += ["## Method and hyperparameters", "",
                  f"{facts['method_title']} (`{facts['method']}`), objective {facts['objective_title']} "
                  f"(`{facts['objective']}`).", ""]
        lines += _table([(k.replace("_", " "), v) for k, v in
                         {**facts["method_params"], **facts["train_params"], **facts["data_params"]}.items()]) + [""]
        d = facts["dataset"]
        lines += ["## Dataset", "", f"`{d['name']}`" + (f", validation on `{d['validation']}`" if d["validation"]
                                                         else "") + ".", ""]
        lines += _table([("training rows", d.get("train_rows")), ("validation rows", d.get("validation_rows"))]) + [""]
        c = facts.get("curve") or {}
        lines += ["## Training curve", ""]
        rows = [("steps", c.get("steps")), ("final train loss", c.get("final_train_loss")),
                ("best train loss", c.get("best_train_loss")), ("best train loss at step", c.get("best_train_step")),
                ("mean train loss", c.get("mean_train_loss")), ("final validation loss", c.get("final_val_loss")),
                ("best validation loss", c.get("best_val_loss")), ("best validation loss at step", c.get("best_val_step")),
                ("run state", facts.get("state"))]
        lines += (_table(rows) if any(v is not None for _, v in rows[:-1]) else ["No training logs were recorded."]) + [""]
        e = facts.get("eval")
        if isinstance(e, dict) and "base" in e and "adapter" in e:
            lines += ["## Evaluation", "",
                      f"On {e.get('rows', '?')} rows of {Path(str(e.get('data') or 'the validation split')).name} "
                      "(`ftstudio eval`): the base model against the tuned one.", "",
                      "| | loss | perplexity |", "|---|---|---|",
                      f"| base | {_fmt(e['base'].get('loss'))} | {_fmt(e['base'].get('perplexity'))} |",
                      f"| tuned | {_fmt(e['adapter'].get('loss'))} | {_fmt(e['adapter'].get('perplexity'))} |", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    lines += ["## Intended use", "",
              "Answering in the style and on the tasks of its training data. It keeps the base model's limits and "
              "license; check its answers on your own examples before relying on it.", "",
              "## How to use", "", *_usage(kind, peft_adapter, hub_id or base, repo or "THIS_REPO"), ""]
    versions = facts.get("versions") or {}
    if versions:
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items() if v), ""]
    return "\n".join(lines)


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML between the card's opening `---` lines (tests and `ftstudio push` read it back)."""
    if not text.startswith("---\n"):
        return {}
    head, sep, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head) or {} if sep else {}


def write_card(out_dir: Path, run_dir: Optional[Path], kind: str = "adapter", base: Optional[str] = None,
               notes: tuple[str, ...] = (), repo: Optional[str] = None) -> Path:
    """Render the card for `run_dir` and write it as out_dir/README.md (replacing PEFT's placeholder card)."""
    out_dir = Path(out_dir)
    peft_adapter = (out_dir / "adapter_config.json").exists()
    path = out_dir / CARD_FILE
    atomic_write_text(path, render_card(card_facts(run_dir, base), kind, peft_adapter, notes, repo))
    return path
