"""Export a run, an adapter or a model folder as a GGUF file, checked for behaviour, plus an Ollama Modelfile.

    export_gguf(src, out_file, quant="f16", progress=None) -> {"out", "bytes", "max_logit_diff",
        "checked", "modelfile", "ollama_command", "notes", ...}

An adapter (or a run's adapter) is first merged into its base with `backend.export.merge.merge_adapter`
into a temporary folder next to the output. The GGUF is written to a temporary file and moved into
place with `os.replace`, so a failure leaves no half-written file and keeps whatever was there.
Loading models is heavy: the studio runs this through `ftstudio export` in a subprocess.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from backend.core.config import load_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_text, check_free_space, read_json
from backend.core.models import BUNDLED, ModelError, ensure_bundled, resolve_model
from backend.export.gguf_check import check_export
from backend.export.gguf_tokenizer import READER_UNKNOWN_PRE, describe_tokenizer
from backend.export.gguf_write import architecture_of, check_quant, estimate_bytes, plan_tensors, write_gguf
from backend.export.merge import estimate_merged_bytes, locate_adapter, merge_adapter
from backend.export.modelfile import build_modelfile, ollama_model_name, template_equivalence

Progress = Optional[Callable[[float, str], None]]


@dataclass(frozen=True)
class ExportSource:
    kind: str                      # "model" | "adapter"
    path: Path                     # the model folder, or the adapter/run folder to merge
    base: Optional[str]            # the untrained base, when known
    tokenizer_dir: Path            # whose tokenizer the GGUF must carry


def _say(progress: Progress, fraction: float, message: str) -> None:
    if progress:
        progress(fraction, message)


def locate_source(src: str | Path, base: Optional[str] = None) -> ExportSource:
    """A run directory, an adapter directory or a model directory (or the bundled model's name)."""
    text = str(src or "").strip()
    if not text:
        raise UserError("Nothing to export. Pick a finished run, an adapter folder or a model folder.")
    p = Path(text).expanduser()
    if not p.exists():
        if text in BUNDLED:
            return ExportSource("model", ensure_bundled(text), base, ensure_bundled(text))
        raise UserError(f"{p} does not exist. Pick a finished run, an adapter folder or a model folder.")
    if not p.is_dir():
        raise UserError(f"{p} is a file; export takes a run, adapter or model folder.")
    is_run = (p / "config.yaml").exists() and (p / "adapter").is_dir()
    adapter_dir = p / "adapter" if is_run else p
    if (adapter_dir / "adapter_config.json").exists():
        found = locate_adapter(p)
        tok_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else Path(_model_dir(found.base))
        return ExportSource("adapter", p, base or found.base, tok_dir)
    if (adapter_dir / "config.json").exists():
        if is_run and base is None:
            base = load_config(p / "config.yaml").model  # a full fine-tune: its base is the run's model
        merged_from = read_json(adapter_dir / ".ftstudio-merged", {}) or {}
        return ExportSource("model", adapter_dir, base or merged_from.get("base"), adapter_dir)
    raise UserError(f"{p} holds neither config.json (a model) nor adapter_config.json (an adapter), "
                    "nor is it a run with a saved adapter. Pick a completed run or a model folder.")


def _model_dir(ref: str) -> str:
    try:
        return resolve_model(ref).source
    except ModelError as e:
        raise UserError(str(e)) from e


def _check_out(out: Path) -> Path:
    out = Path(out).expanduser().resolve()
    if out.suffix.lower() != ".gguf":
        raise UserError(f"The output file {out} should end in .gguf.")
    if out.is_dir():
        raise UserError(f"{out} is a folder; give a file name ending in .gguf.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _check_disk(folder: Path, needed: int, what: str) -> None:
    check_free_space(folder, needed, what)


def _model_name(source: ExportSource) -> str:
    name = source.path.name if source.path.name not in ("adapter", "") else source.path.parent.name
    # transformers' GGUF loader reads a `llama` file whose general.name is exactly "mistral" as a
    # Mistral architecture that gguf-py cannot map; any other name loads as Llama.
    return f"{name}-model" if name.lower() == "mistral" else name


def _architecture_notes(config: Any) -> list[str]:
    window = getattr(config, "sliding_window", None)
    if getattr(config, "model_type", "") == "mistral" and window and window < config.max_position_embeddings:
        return [f"Mistral's sliding attention window ({window} tokens) has no place in GGUF's llama architecture: "
                f"prompts longer than {window} tokens attend further back in llama.cpp/Ollama than in transformers."]
    return []


def _write_modelfile(out: Path, tok: Any) -> tuple[Path, str, dict[str, Any]]:
    mf = build_modelfile(tok, out.name)
    ok, why = template_equivalence(tok, mf)
    path = out.with_name(f"{out.stem}.Modelfile")
    atomic_write_text(path, mf.text)
    os.chmod(path, 0o644)  # a temp file is created private; this one is meant to be shared with Ollama
    command = f"ollama create {ollama_model_name(out.stem)} -f {path}"
    info = {"modelfile_template_ok": ok, "stop": mf.stops, "chat_style": mf.style, "notes": list(mf.notes)}
    if mf.style and not ok:
        info["notes"].append(f"The Modelfile's TEMPLATE does not reproduce the chat template exactly ({why}); "
                             "check answers in Ollama before relying on it.")
    return path, command, info


def _merged_model(source: ExportSource, work: Path, progress: Progress, notes: list[str]) -> Path:
    """Fold the adapter into its base, in the export's temporary folder (removed afterwards)."""
    merged_size = estimate_merged_bytes(source.base or "") or 0
    _check_disk(work, merged_size * 2, "the merged model and its GGUF")
    _say(progress, 0.02, f"Merging the adapter into {source.base}")
    merged = merge_adapter(source.path, work / "merged", progress=lambda f, m: _say(progress, 0.02 + 0.15 * f, m))
    notes += merged.get("notes", [])
    return Path(merged["out"])


def export_gguf(src: str | Path, out_file: str | Path, quant: str = "f16", progress: Progress = None,
                base: Optional[str] = None) -> dict[str, Any]:
    """Write `out_file` (GGUF) and `<stem>.Modelfile` beside it; check the GGUF against the source.

    `base` names the untrained base model for a plain model folder (runs, adapters and folders
    written by the studio's merge know theirs); with it the check also rejects an export that
    behaves like the base.
    """
    from transformers import AutoConfig, AutoTokenizer

    quant = check_quant(quant)
    source = locate_source(src, base)
    out = _check_out(Path(out_file))
    notes: list[str] = []
    if source.kind == "adapter":  # refuse an unsupported base before spending time on the merge
        architecture_of(AutoConfig.from_pretrained(_model_dir(source.base)))
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        model_dir = _merged_model(source, work, progress, notes) if source.kind == "adapter" else source.path
        config = AutoConfig.from_pretrained(str(model_dir))
        architecture_of(config)
        notes += _architecture_notes(config)
        plans = plan_tensors(model_dir, config, quant)
        _check_disk(out.parent, estimate_bytes(plans), f"the {quant} GGUF")
        tok = AutoTokenizer.from_pretrained(str(source.tokenizer_dir))
        n_vocab = next((p.shape[0] for p in plans if p.gguf_name == "token_embd.weight"), None)
        if n_vocab is None:
            raise UserError(f"{model_dir} has no token embedding weight, so it is not a complete model.")
        described = describe_tokenizer(tok, n_vocab)
        notes += described.notes
        _say(progress, 0.2, f"Writing the {quant} GGUF")
        tmp = work / out.name
        write_gguf(model_dir, config, described, plans, tmp, quant, _model_name(source), progress)
        check = check_export(tmp, model_dir, tok, quant, base=source.base, progress=progress, pre=described.pre)
        notes += check.notes
        if described.pre in READER_UNKNOWN_PRE:
            notes.append(f"The tokenizer's '{described.pre}' pre-tokenizer ({READER_UNKNOWN_PRE[described.pre]}) is "
                         "applied by llama.cpp and Ollama but not by transformers' GGUF reader, so prompts with "
                         "digits were left out of the tokenizer comparison.")
        if check.checked:
            os.replace(tmp, out)
            _say(progress, 0.95, "Writing the Ollama Modelfile")
            modelfile, command, mf_info = _write_modelfile(out, tok)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"out": str(out), "quant": quant, "max_logit_diff": check.max_logit_diff,
              "tolerance": check.tolerance, "checked": check.checked, "problems": check.problems,
              "base": source.base, "base_logit_diff": check.base_diff, "adapter_effect": check.adapter_effect}
    if not check.checked:
        # A file that fails its check is not delivered: nothing at `out` is replaced by it.
        sentence = (f"The GGUF export of {source.path} failed its check, so {out.name} was not written: "
                    + "; ".join(check.problems) + ".")
        _say(progress, 1.0, sentence)
        return {**result, "bytes": 0, "modelfile": None, "ollama_command": None, "error": sentence,
                "notes": [sentence] + notes}
    notes += mf_info.pop("notes")
    _say(progress, 1.0, f"Exported {out.name}")
    return {**result, "bytes": out.stat().st_size, "modelfile": str(modelfile), "ollama_command": command,
            **mf_info, "notes": notes}


def export_command(src: str | Path, out_file: str | Path, quant: str = "f16") -> list[str]:
    """The `ftstudio export` command line the studio runs in a subprocess (and can show to repeat by hand)."""
    import sys

    return [sys.executable, "-m", "backend.cli", "export", str(src), "--format", "gguf", "--quant", quant,
            "--out", str(out_file), "--json", "--progress-json"]
