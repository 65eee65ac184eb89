"""Export a run, an adapter or a model folder as GGUF files checked by llama.cpp, plus Ollama Modelfiles.

    export_gguf(src, out_file, quant="f16" | "f16,q8_0,q4_k_m" | [...], progress=None)
        -> one quant: {"out", "bytes", "checked", "token_agreement", "top1_agreement", "topk_agreement",
                       "greedy_agreement", "perplexity", "quality_loss", "modelfile", "ollama_command", ...}
        -> several:   {"checked", "out": [...], "exports": [one dict per quant], "notes"}

An adapter (or a run's adapter) is first merged into its base with `backend.export.merge.merge_adapter`
into a temporary folder next to the output, once; a merged folder the studio already wrote from the same
adapter files, base and merge settings (`merge.find_merged`, by content hash) is used instead.
The f16 GGUF is written from it (`gguf_write`), and llama.cpp's own quantizer makes every other
quant from that f16 file. Each file is then loaded in llama.cpp and compared with the merged model
(`gguf_check`); a file that passes is moved into place with `os.replace`, one that fails is deleted,
so a failure leaves no file that looks like a good export and keeps whatever was there. Loading
models is heavy: the studio runs this through `ftstudio export` in a subprocess.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from backend.core.config import load_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_text, check_free_space, read_json
from backend.core.models import BUNDLED, ModelError, ensure_bundled, resolve_model
from backend.data.records import load_for_training
from backend.data.templates import encode_row, has_graded, resolve_template, to_conversation
from backend.export import llamacpp_lib
from backend.export.gguf_check import CheckResult, CheckTexts, check_export, default_texts, load_models, reference
from backend.export.gguf_tokenizer import describe_tokenizer
from backend.export.gguf_write import architecture_of, estimate_bytes, plan_tensors, write_gguf
from backend.export.llamacpp import quantize
from backend.export.merge import estimate_merged_bytes, find_merged, locate_adapter, merge_adapter, merged_notes
from backend.export.modelfile import build_modelfile, ollama_model_name, stop_equivalence, template_equivalence

Progress = Optional[Callable[[float, str], None]]

# name -> what a user reads next to the choice; llama.cpp makes all but f16 from the f16 file.
QUANTS = {
    "f16": "16-bit, no rounding to speak of; the largest file",
    "q8_0": "8-bit, about half the size of f16, barely measurable loss",
    "q6_k": "6-bit k-quant, about 40% of f16",
    "q5_k_m": "5-bit k-quant (mixed), about a third of f16",
    "q4_k_m": "4-bit k-quant (mixed), about 30% of f16: what most Ollama models ship as",
}
CHECK_ROWS = 8       # validation rows for the perplexity comparison
CHECK_PROMPTS = 4    # training-format prompts for the greedy continuations


def check_quant(quant: str) -> str:
    q = (quant or "").strip().lower().replace("-", "_")
    if q not in QUANTS:
        raise UserError(f"Unknown GGUF quantization '{quant}'. Choose one of: {', '.join(QUANTS)} "
                        "(f16 keeps full 16-bit precision; q8_0 is about half the size; the k-quants "
                        "q6_k, q5_k_m and q4_k_m are smaller still, with more loss).")
    return q


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
        tok_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else Path(model_dir_of(found.base))
        return ExportSource("adapter", p, base or found.base, tok_dir)
    if (adapter_dir / "config.json").exists():
        if is_run and base is None:
            base = load_config(p / "config.yaml").model  # a full fine-tune: its base is the run's model
        merged_from = read_json(adapter_dir / ".ftstudio-merged", {}) or {}
        return ExportSource("model", adapter_dir, base or merged_from.get("base"), adapter_dir)
    raise UserError(f"{p} holds neither config.json (a model) nor adapter_config.json (an adapter), "
                    "nor is it a run with a saved adapter. Pick a completed run or a model folder.")


def model_dir_of(ref: str) -> str:
    try:
        return resolve_model(ref).source
    except ModelError as e:
        raise UserError(str(e)) from e


def check_out_path(out: Path) -> Path:
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
    stop_ok, stop_why = stop_equivalence(tok, mf)
    path = out.with_name(f"{out.stem}.Modelfile")
    atomic_write_text(path, mf.text)
    os.chmod(path, 0o644)  # a temp file is created private; this one is meant to be shared with Ollama
    command = f"ollama create {ollama_model_name(out.stem)} -f {path}"
    info = {"modelfile_template_ok": ok, "modelfile_stop_ok": stop_ok, "stop": mf.stops, "chat_style": mf.style,
            "notes": list(mf.notes)}
    if not stop_ok:
        info["notes"].append(f"The Modelfile's stop strings do not end answers where the chat template does "
                             f"({stop_why}); add the template's turn-end marker as a PARAMETER stop.")
    if mf.style and not ok:
        info["notes"].append(f"The Modelfile's TEMPLATE does not reproduce the chat template exactly ({why}); "
                             "check answers in Ollama before relying on it.")
    return path, command, info


def _merged_model(source: ExportSource, work: Path, progress: Progress, notes: list[str]) -> Path:
    """The adapter folded into its base: a merged folder the studio already wrote from the same adapter
    files, base and merge settings (the Merge tab's), or a new merge in the export's temporary folder."""
    found = find_merged(locate_adapter(source.path))
    if found is not None:
        # A merge of a small model takes minutes on a CPU; the same inputs give the same folder.
        message = (f"Reusing the merged folder {found} (same adapter files, base and merge settings), "
                   "instead of merging again")
        _say(progress, 0.15, message)
        notes += [message + "."] + merged_notes(found)
        return found
    merged_size = estimate_merged_bytes(source.base or "") or 0
    _check_disk(work, merged_size * 2, "the merged model and its GGUF")
    _say(progress, 0.02, f"Merging the adapter into {source.base}")
    merged = merge_adapter(source.path, work / "merged", progress=lambda f, m: _say(progress, 0.02 + 0.13 * f, m))
    notes += merged.get("notes", [])
    return Path(merged["out"])


def parse_quants(quant: str | Sequence[str]) -> list[str]:
    """`"q4_k_m"`, `"f16,q8_0"` or a list -> the checked, de-duplicated quant names (f16 last: the
    other quants are made from the f16 file, which is moved into place only at the end)."""
    items = quant.split(",") if isinstance(quant, str) else list(quant)
    names = list(dict.fromkeys(check_quant(q) for q in items if str(q).strip()))
    if not names:
        raise UserError(f"No GGUF quantization given. Choose one or more of: {', '.join(QUANTS)}.")
    return sorted(names, key=lambda q: q == "f16")


def output_paths(out: Path, quants: list[str]) -> dict[str, Path]:
    """One quant: the file asked for. Several: `<stem>-<quant>.gguf` beside it."""
    if len(quants) == 1:
        return {quants[0]: out}
    return {q: out.with_name(f"{out.stem}-{q}.gguf") for q in quants}


def check_texts(source: ExportSource, tok: Any, notes: list[str]) -> CheckTexts:
    """Training-format prompts and validation rows of the run, as the trainer tokenizes them."""
    run_dir = source.path if (source.path / "config.yaml").exists() else source.path.parent
    if not (run_dir / "config.yaml").exists():
        return default_texts(tok)
    try:
        cfg = load_config(run_dir / "config.yaml")
        _, train_rows, rows = load_for_training(cfg.data, cfg.train.seed)
        where = "validation rows"
        if not rows:
            rows, where = train_rows, "training rows (the run has no validation split)"
        _, jinja, _ = resolve_template(tok, cfg.data.template)
        graded, prompts = [], []
        for row in rows[:CHECK_ROWS]:
            enc = encode_row(tok, row, cfg.data.model_copy(update={"max_length": min(cfg.data.max_length, 256)}))
            if has_graded(enc):
                graded.append((enc["input_ids"], enc["labels"]))
            msgs = to_conversation(row)
            last = max((i for i, m in enumerate(msgs or []) if m["role"] == "assistant"), default=None)
            if last and len(prompts) < CHECK_PROMPTS:
                text = tok.apply_chat_template(msgs[:last], chat_template=jinja, tokenize=False,
                                               add_generation_prompt=True)
                prompts.append(tok(text, add_special_tokens=False)["input_ids"][-320:])
    except (UserError, OSError) as e:
        notes.append(f"The run's data could not be read ({str(e).splitlines()[0][:160]}), so the check used "
                     "built-in prompts and sentences instead of its validation rows.")
        return default_texts(tok)
    fallback = default_texts(tok)
    if not graded:
        notes.append("The run's data gave no graded rows, so perplexity was measured on built-in sentences.")
    return CheckTexts(prompts or fallback.prompts, graded or fallback.graded,
                      f"{len(graded)} {where} of the run" if graded else fallback.source)


def _one_result(q: str, path: Path, check: CheckResult, size: int, source: ExportSource) -> dict[str, Any]:
    return {"out": str(path), "quant": q, "bytes": size, "base": source.base, **check.figures(),
            "notes": list(check.notes)}


def write_f16_gguf(model_dir: Path, tok: Any, out: Path, name: str, progress: Progress = None,
                   copies: int = 1, disk_folder: Optional[Path] = None) -> list[str]:
    """Convert a model folder (safetensors) to an f16 GGUF at `out`; the notes for the user."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    architecture_of(config)
    notes = _architecture_notes(config)
    plans = plan_tensors(model_dir, config, "f16")
    _check_disk(disk_folder or out.parent, estimate_bytes(plans) * (1 + copies), "the GGUF files")
    n_vocab = next((p.shape[0] for p in plans if p.gguf_name == "token_embd.weight"), None)
    if n_vocab is None:
        raise UserError(f"{model_dir} has no token embedding weight, so it is not a complete model.")
    described = describe_tokenizer(tok, n_vocab)
    _say(progress, 0.15, "Writing the f16 GGUF")
    write_gguf(model_dir, config, described, plans, out, "f16", name,
               lambda f, m: _say(progress, 0.15 + 0.25 * (f - 0.2) / 0.5, m))
    return notes + described.notes


def export_gguf(src: str | Path, out_file: str | Path, quant: str | Sequence[str] = "f16",
                progress: Progress = None, base: Optional[str] = None) -> dict[str, Any]:
    """Write `out_file` (GGUF; one per quant when several are asked for) and a Modelfile beside each;
    check every file with llama.cpp against the merged model.

    `base` names the untrained base model for a plain model folder (runs, adapters and folders
    written by the studio's merge know theirs); with it the check also rejects an export that
    behaves like the base. The merge and the f16 conversion are done once for all quants.
    """
    from transformers import AutoConfig, AutoTokenizer

    quants = parse_quants(quant)
    source = locate_source(src, base)
    out = check_out_path(Path(out_file))
    targets = output_paths(out, quants)
    llamacpp_lib.load()  # no llama.cpp, no check: say so before the merge, not after
    notes: list[str] = []
    if source.kind == "adapter":  # refuse an unsupported base before spending time on the merge
        architecture_of(AutoConfig.from_pretrained(model_dir_of(source.base)))
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    results: list[dict[str, Any]] = []
    try:
        model_dir = _merged_model(source, work, progress, notes) if source.kind == "adapter" else source.path
        tok = AutoTokenizer.from_pretrained(str(source.tokenizer_dir))
        f16 = work / "f16.gguf"
        notes += write_f16_gguf(model_dir, tok, f16, _model_name(source), progress, copies=len(quants),
                                disk_folder=out.parent)
        texts = check_texts(source, tok, notes)
        _say(progress, 0.42, "Loading the merged model for the check")
        merged, base_model, load_notes = load_models(model_dir, source.base)
        notes += load_notes
        ref = reference(merged, tok, texts, base_model)
        del merged, base_model
        for i, q in enumerate(quants):
            at = 0.45 + 0.5 * i / len(quants)
            tmp = f16 if q == "f16" else work / f"{q}.gguf"
            if q != "f16":
                _say(progress, at, f"Quantizing to {q} with llama.cpp")
                quantize(f16, tmp, q)
            _say(progress, at + 0.25 / len(quants), f"Checking the {q} file in llama.cpp")
            check = check_export(tmp, ref, tok, q, texts)
            size = tmp.stat().st_size
            result = _one_result(q, targets[q], check, size if check.checked else 0, source)
            if check.checked:
                os.replace(tmp, targets[q])
                modelfile, command, mf_info = _write_modelfile(targets[q], tok)
                result["notes"] += mf_info.pop("notes")
                result.update(modelfile=str(modelfile), ollama_command=command, **mf_info)
            else:
                # A file that fails its check is not delivered: nothing at its path is replaced by it.
                result["error"] = (f"The {q} GGUF export of {source.path} failed its check in llama.cpp, so "
                                   f"{targets[q].name} was not written: " + "; ".join(check.problems) + ".")
                result.update(modelfile=None, ollama_command=None, measured_bytes=size)
                result["notes"].insert(0, result["error"])
            results.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.sort(key=lambda r: list(QUANTS).index(r["quant"]))
    for r in results:
        r["notes"] = notes + r["notes"]
    failed = [r["error"] for r in results if not r["checked"]]
    _say(progress, 1.0, " ".join(failed) if failed else f"Exported {', '.join(Path(r['out']).name for r in results)}")
    if len(results) == 1:
        return results[0]
    summary = {"checked": not failed, "out": [r["out"] for r in results], "quants": [r["quant"] for r in results],
               "exports": results, "notes": notes}
    if failed:
        summary["error"] = " ".join(failed)
    return summary


def export_command(src: str | Path, out_file: str | Path, quant: str = "f16") -> list[str]:
    """The `ftstudio export` command line the studio runs in a subprocess (and can show to repeat by hand)."""
    import sys

    return [sys.executable, "-m", "backend.cli", "export", str(src), "--format", "gguf", "--quant", quant,
            "--out", str(out_file), "--json", "--progress-json"]
