"""Merge an adapter into its base, combine adapters, export them.

The heavy functions here (`merge_adapter`, `combine_adapters`) load models, so the
studio never calls them in its own process: it calls `run_merge_subprocess`, which
runs `python -m backend.cli merge ...` and streams the progress lines back.
The merging itself is PEFT's (`merge_and_unload`, `add_weighted_adapter`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from backend.core import catalog
from backend.core.config import load_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_json, check_free_space, is_disk_full, read_json
from backend.core.models import (BUNDLED, ModelError, load_causal_lm, load_tokenizer, model_cache_dir,
                                 workspace_root)
from backend.core.paths import PROJECT_ROOT
from backend.core.security import is_within, refuse_pickled_weights
from backend.runs.model_card import write_card
from backend.runs.rundir import adapter_dir, list_runs

Progress = Optional[Callable[[float, str], None]]

# PEFT methods whose update is a weight delta that folds into the base matrices.
MERGEABLE_PEFT_TYPES = {"LORA", "ADALORA", "IA3", "VERA", "LOHA", "LOKR", "OFT", "BOFT", "HRA", "RANDLORA"}
_PROMPT_TYPES = {"PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT"}
COMBINE_METHODS = ("linear", "ties", "dare_linear", "dare_ties")
PROGRESS_PREFIX = "ftstudio-progress "


def progress_printer(machine: bool):
    """A progress callback for the merge/export commands: JSON lines a parent process parses
    (--progress-json), or a readable percentage for a person at a terminal; both on stderr."""
    def say(fraction: float, message: str) -> None:
        if machine:
            line = PROGRESS_PREFIX + json.dumps({"progress": round(fraction, 3), "message": message})
        else:
            line = f"[{int(fraction * 100):3d}%] {message}"
        print(line, file=sys.stderr, flush=True)
    return say
_MERGED_MARK = ".ftstudio-merged"


@dataclass(frozen=True)
class AdapterSource:
    """An adapter directory, the run it came from (if any), and the base model it needs."""
    adapter_dir: Path
    run_dir: Optional[Path]
    base: str                      # a reference resolve_model accepts
    method: Optional[str]          # the run's method name, when known
    peft_type: Optional[str]       # from adapter_config.json; None for a full model
    compute_dtype: Optional[str] = None


def _run_config(run_dir: Path):
    return load_config(run_dir / "config.yaml")


def is_reward_model(adapter_dir: Path, cfg: Any = None) -> bool:
    """A reward model scores text (a one-number head); it is no chat model and merges into none."""
    if cfg is not None and getattr(cfg, "objective", None) == catalog.OBJECTIVE.reward:
        return True
    acfg = read_json(adapter_dir / "adapter_config.json") or {}
    if acfg.get("task_type") == "SEQ_CLS":
        return True
    archs = (read_json(adapter_dir / "config.json") or {}).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


def locate_adapter(path: str | Path) -> AdapterSource:
    """Accept a run directory or an adapter directory; say in a sentence when it is neither."""
    p = Path(str(path or "").strip()).expanduser()
    if not str(path or "").strip():
        raise UserError("No adapter chosen. Pick a finished run or type the folder of an adapter.")
    if not p.is_dir():
        raise UserError(f"{p} is not a folder. Pick a finished run or the folder holding adapter_config.json.")
    if (p / "adapter").is_dir() and (p / "config.yaml").exists():
        run_dir, adapter_dir = p, p / "adapter"
    else:
        adapter_dir = p
        # An adapter folder sits in its run (run/adapter) or in the run's checkpoints (run/checkpoints/checkpoint-N).
        run_dir = next((d for d in (p.parent, p.parent.parent) if (d / "config.yaml").exists()), None)
    cfg = _run_config(run_dir) if run_dir else None
    method = cfg.method.name if cfg else None
    if is_reward_model(adapter_dir, cfg):
        name = run_dir.name if run_dir else str(adapter_dir)
        raise UserError(f"{name} is a reward model: it scores answers with a one-number head and cannot chat, "
                        "be merged or be exported as a chat model. Use it as the reward model of a GRPO or RLOO "
                        "run (Method tab, alignment settings).")
    acfg = read_json(adapter_dir / "adapter_config.json")
    if acfg is None:
        from backend.methods.adapters import is_bottleneck_adapter

        if is_bottleneck_adapter(adapter_dir):
            raise UserError(
                f"{adapter_dir} holds bottleneck adapters: they add layers to the model and cannot be merged "
                "into it or combined. Use them as they are (they reload with the base model), or train LoRA to "
                "get a mergeable adapter.")
        if (adapter_dir / "config.json").exists():
            return AdapterSource(adapter_dir, run_dir, str(adapter_dir), method or catalog.METHOD.full, None)
        where = f"the run {run_dir.name}" if run_dir else str(adapter_dir)
        raise UserError(
            f"{adapter_dir} holds no adapter_config.json, so {where} has no saved adapter. "
            "Pick a run that completed, or the folder a PEFT adapter was saved to.")
    refuse_pickled_weights(adapter_dir)
    base = cfg.model if cfg else acfg.get("base_model_name_or_path")
    if not base:
        raise UserError(
            f"{adapter_dir / 'adapter_config.json'} does not say which base model it belongs to "
            "(base_model_name_or_path is empty). Pick the run directory instead, whose config.yaml names it.")
    return AdapterSource(adapter_dir, run_dir, str(base), method, acfg.get("peft_type"),
                         cfg.method.compute_dtype if cfg else None)


def can_merge(src: AdapterSource) -> tuple[bool, str]:
    """Whether the adapter folds into the base weights, and the sentence that says why not."""
    if src.peft_type is None:
        return False, (f"{src.adapter_dir} already holds a complete model (method "
                       f"'{src.method}'), so there is nothing to merge: use the folder directly.")
    if _method_info(src.method, "bottleneck"):
        return False, ("Bottleneck adapters (Houlsby/Pfeiffer) sit in series with the layers and pass "
                       "through a non-linearity, so they cannot be folded into the base weights. "
                       "Use the adapter with its base (Chat tab) or download it as a zip.")
    if src.peft_type in _PROMPT_TYPES:
        return False, (f"A {src.peft_type.lower().replace('_', ' ')} adapter adds learned virtual tokens "
                       "to the input rather than changing weights, so it cannot be merged. "
                       "Use it with its base (Chat tab) or download it as a zip.")
    if src.peft_type not in MERGEABLE_PEFT_TYPES:
        return False, (f"Adapters of type {src.peft_type} cannot be merged by the studio. "
                       "Use it with its base (Chat tab) or download it as a zip.")
    return True, ""


def _say(progress: Progress, fraction: float, message: str) -> None:
    if progress:
        progress(fraction, message)


def _load_base(ref: str, dtype: Any):
    try:
        return load_causal_lm(ref, dtype=dtype)
    except ModelError as e:
        raise UserError(str(e)) from e


def _load_tokenizer_for(src: AdapterSource):
    """The adapter folder's tokenizer first: training may have set its chat template."""
    from transformers import AutoTokenizer

    if (src.adapter_dir / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(src.adapter_dir))
    try:
        return load_tokenizer(src.base)
    except ModelError as e:
        raise UserError(str(e)) from e


def _prepare_out(out_dir: Path, needed: Optional[int] = None) -> Path:
    """A new or empty folder, or one an earlier merge wrote; write into a sibling temp dir first.
    With `needed` (bytes), a disk without that much free space is refused before any work."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"The output {out_dir} is a file, not a folder. Choose a new or empty folder for the "
                        "merged model.")
    blocker = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"The output folder {out_dir} cannot be made: {blocker} is a file. Choose another folder.")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / _MERGED_MARK).exists():
        raise UserError(f"The output folder {out_dir} already holds other files. Choose a new or empty folder.")
    if needed:
        check_free_space(out_dir.parent, needed, "the merged model")
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise _as_user_error(e, out_dir) from e
    return tmp


def _as_user_error(exc: BaseException, out_dir: Path) -> BaseException:
    """A write that failed in the output folder, as a sentence (the old folder is untouched)."""
    if is_disk_full(exc):
        return UserError(f"The disk is full: the merged model could not be written to {out_dir} "
                         f"({getattr(exc, 'strerror', None) or exc}). Free some space or choose a folder on "
                         "another disk; any earlier merged model there is unchanged.")
    if isinstance(exc, PermissionError):
        return UserError(f"{out_dir} cannot be written (permission denied). Choose a folder you can write to.")
    return UserError(f"The merged model could not be written to {out_dir}: {exc}. Choose another folder.")


def _finish_out(tmp: Path, out_dir: Path, info: dict[str, Any]) -> Path:
    out_dir = Path(out_dir).expanduser().resolve()
    (tmp / _MERGED_MARK).write_text(json.dumps(info, default=str))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def dir_bytes(path: str | Path) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _method_info(method: Optional[str], flag: str) -> bool:
    """A catalog flag of the run's method; False for a folder with no studio method (a plain PEFT adapter)."""
    info = catalog.METHODS.get(method or "")
    return bool(info and getattr(info, flag))


def trained_on_4bit(src: AdapterSource) -> bool:
    """The run trained against a quantized base (QLoRA): its merge goes into the 16-bit original."""
    return _method_info(src.method, "quantized")


def _merge_dtype(src: AdapterSource):
    import torch

    if trained_on_4bit(src):
        # The 4-bit weights are a lossy copy; the merge goes into the 16-bit original.
        return {"fp16": torch.float16}.get(src.compute_dtype or "", torch.bfloat16)
    return "auto"


MERGE_KEY_VERSION = 1  # bump when the merge itself changes, so older merged folders are not reused


def merge_key(src: AdapterSource) -> str:
    """What makes two merges give the same folder: the adapter's files (their bytes), the base they go
    into and the merge settings. The model card (README.md) is left out: it is rendered again on a push."""
    h = hashlib.sha256()
    for f in sorted(p for p in src.adapter_dir.iterdir() if p.is_file() and p.name != "README.md"):
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    base = Path(src.base).expanduser()
    settings = {"version": MERGE_KEY_VERSION, "base": str(base.resolve()) if base.exists() else src.base,
                "dtype": (src.compute_dtype or "bf16") if trained_on_4bit(src) else "auto"}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def _merge_places(src: AdapterSource) -> list[Path]:
    """The workspaces whose merged/ folders may hold an earlier merge of this adapter: the studio's, and
    the one the adapter's run lives in (WORKSPACE/runs/<id>)."""
    places = [workspace_root()]
    if src.run_dir is not None and src.run_dir.parent.name == "runs":
        places.append(src.run_dir.parent.parent.resolve())
    return list(dict.fromkeys(places))


def find_merged(src: AdapterSource, key: Optional[str] = None) -> Optional[Path]:
    """A complete merged folder the studio wrote from this very adapter, base and settings (the newest),
    or None. The key is compared, not the path: a retrained run in the same place has other bytes."""
    key = key or merge_key(src)
    found = []
    for ws in _merge_places(src):
        for _label, folder in merged_models(ws):
            p = Path(folder)
            mark = read_json(p / _MERGED_MARK, {}) or {}
            if mark.get("key") == key and (any(p.glob("*.safetensors")) or any(p.glob("*.bin"))):
                found.append(p)
    return max(found, key=lambda p: (p / _MERGED_MARK).stat().st_mtime, default=None)


def merged_notes(folder: Path) -> list[str]:
    """The notes the merge that wrote `folder` gave (kept in its mark file), for a reuse to repeat."""
    return list((read_json(Path(folder) / _MERGED_MARK, {}) or {}).get("notes") or [])


def merge_adapter(adapter_or_run_dir: str | Path, out_dir: str | Path, progress: Progress = None) -> dict[str, Any]:
    """Fold an adapter into its base and save a plain transformers model directory."""
    src = locate_adapter(adapter_or_run_dir)
    ok, reason = can_merge(src)
    if not ok:
        raise UserError(reason)
    from peft import PeftModel

    key = merge_key(src)  # of the files as they are merged now (a reuse compares against this)
    tmp = _prepare_out(Path(out_dir), estimate_merged_bytes(src.base))
    notes: list[str] = []
    try:
        dtype = _merge_dtype(src)
        _say(progress, 0.05, f"Loading the base model {src.base}")
        base = _load_base(src.base, dtype)
        if trained_on_4bit(src):
            notes.append(f"QLoRA run: merged into the base loaded in 16-bit ({str(dtype).replace('torch.', '')}), "
                         "not into the 4-bit weights it trained against, so answers can differ slightly "
                         "from the 4-bit model used during training.")
        elif str(base.dtype) in ("torch.bfloat16", "torch.float16"):
            # Kept in the base's own precision so the merged model is no bigger than the base.
            notes.append(f"Merged in the base's own precision ({str(base.dtype).replace('torch.', '')}); greedy "
                         "answers can differ in a token here and there from the adapter run at full precision.")
        _say(progress, 0.45, f"Attaching the adapter from {src.adapter_dir}")
        try:
            from backend.methods.tokens import fit_base_to_adapter  # rows for the tokens the run added
            model = PeftModel.from_pretrained(fit_base_to_adapter(base, src.adapter_dir), str(src.adapter_dir))
        except Exception as e:  # noqa: BLE001 - PEFT's shape/key errors become a sentence
            raise UserError(f"The adapter in {src.adapter_dir} does not fit the base model {src.base} "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                            "Check that the run's base model is the one the adapter was trained on.") from e
        _say(progress, 0.6, "Merging the adapter weights into the base")
        merged = model.merge_and_unload()
        if getattr(merged.config, "quantization_config", None) is not None:
            del merged.config.quantization_config
        _say(progress, 0.75, f"Saving the merged model to {out_dir}")
        merged.save_pretrained(str(tmp))
        tok = _load_tokenizer_for(src)
        tok.save_pretrained(str(tmp))
        if not getattr(tok, "chat_template", None):
            notes.append("The tokenizer has no chat template; the Chat tab will fall back to a plain prompt.")
        write_card(tmp, src.run_dir, kind="merged", base=src.base, notes=tuple(notes))
        out = _finish_out(tmp, Path(out_dir), {"adapter": str(src.adapter_dir), "base": src.base,
                                               "key": key, "notes": notes})
    except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error type
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise _as_user_error(e, Path(out_dir)) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(progress, 1.0, f"Merged model saved to {out}")
    return {"out": str(out), "bytes": dir_bytes(out), "adapter_bytes": dir_bytes(src.adapter_dir),
            "base": src.base, "notes": notes}


def _same_base(sources: list[AdapterSource]) -> None:
    def key(s: AdapterSource) -> str:
        p = Path(s.base).expanduser()
        return str(p.resolve()) if p.exists() else s.base

    bases = {key(s) for s in sources}
    if len(bases) > 1:
        listing = "; ".join(f"{s.adapter_dir} -> {s.base}" for s in sources)
        raise UserError(f"Adapters can only be combined when they share one base model, but these differ: {listing}.")


def combine_adapters(adapter_dirs: list[str | Path], weights: list[float], method: str = "linear",
                     density: float = 0.5, out_dir: str | Path = "combined", merge: bool = False,
                     progress: Progress = None) -> dict[str, Any]:
    """Weighted combination of LoRA adapters of one base (PEFT add_weighted_adapter)."""
    if method not in COMBINE_METHODS:
        raise UserError(f"Unknown combination method '{method}'. Choose one of: {', '.join(COMBINE_METHODS)}.")
    if len(adapter_dirs) < 2:
        raise UserError("Combining needs at least two adapters; to merge one adapter, use Merge.")
    if len(weights) != len(adapter_dirs):
        raise UserError(f"Give one weight per adapter: {len(adapter_dirs)} adapters but {len(weights)} weights.")
    if method != "linear" and not 0.0 < float(density) <= 1.0:
        raise UserError(f"Density must be between 0 (exclusive) and 1; got {density}.")
    sources = [locate_adapter(d) for d in adapter_dirs]
    from backend.methods.tokens import adapter_token_rows

    for s in sources:
        if s.peft_type != "LORA":
            raise UserError(f"{s.adapter_dir} is a {s.peft_type or 'full model'}, not a LoRA adapter; "
                            "only LoRA adapters (LoRA, QLoRA, rsLoRA, LoRA+) can be combined.")
        if adapter_token_rows(s.adapter_dir):
            # add_weighted_adapter mixes only the LoRA layers' matrices; the added tokens' trained rows would be lost.
            raise UserError(f"{s.adapter_dir} was trained with added tokens, and combining mixes only the LoRA "
                            "matrices, not those tokens' embedding rows (the combined adapter would lose them); "
                            "merge it on its own instead.")
    _same_base(sources)
    ranks = {read_json(s.adapter_dir / "adapter_config.json", {}).get("r") for s in sources}
    notes: list[str] = []
    combination = method
    if len(ranks) > 1:
        # PEFT's linear/TIES/DARE need equal ranks; its SVD variants re-factor the sum at the largest rank.
        combination = "svd" if method == "linear" else f"{method}_svd"
        notes.append(f"The adapters have different ranks ({sorted(ranks)}), so the combination was re-factored "
                     f"with SVD ({combination}) at the largest rank.")
    from peft import PeftModel

    tmp = _prepare_out(Path(out_dir))
    try:
        _say(progress, 0.05, f"Loading the base model {sources[0].base}")
        base = _load_base(sources[0].base, _merge_dtype(sources[0]))
        names = [f"a{i}" for i in range(len(sources))]
        model = PeftModel.from_pretrained(base, str(sources[0].adapter_dir), adapter_name=names[0])
        for i, (name, s) in enumerate(zip(names[1:], sources[1:]), start=1):
            _say(progress, 0.1 + 0.4 * i / len(sources), f"Attaching {s.adapter_dir}")
            model.load_adapter(str(s.adapter_dir), adapter_name=name)
        _say(progress, 0.55, f"Combining with {combination}")
        kwargs: dict[str, Any] = {}
        if method != "linear":
            kwargs["density"] = float(density)
        try:
            model.add_weighted_adapter(names, [float(w) for w in weights], "combined",
                                       combination_type=combination, **kwargs)
        except ValueError as e:
            raise UserError(f"PEFT could not combine these adapters: {e}") from e
        model.set_adapter("combined")
        for name in names:
            model.delete_adapter(name)
        tok = _load_tokenizer_for(sources[0])
        if merge:
            _say(progress, 0.7, "Merging the combined adapter into the base")
            merged = model.merge_and_unload()
            merged.save_pretrained(str(tmp))
        else:
            _say(progress, 0.7, "Saving the combined adapter")
            # save_pretrained puts a non-default adapter in a subfolder; rename it to "default" first.
            model.save_pretrained(str(tmp), selected_adapters=["combined"])
            sub = tmp / "combined"
            if sub.is_dir():
                for f in sub.iterdir():
                    os.replace(f, tmp / f.name)
                sub.rmdir()
            _fix_base_reference(tmp, sources[0].base)
        tok.save_pretrained(str(tmp))
        listing = ", ".join(f"{s.run_dir.name if s.run_dir else s.adapter_dir} (weight {w:g})"
                            for s, w in zip(sources, weights))
        write_card(tmp, None, kind="merged" if merge else "adapter", base=sources[0].base,
                   notes=(f"Combined from {listing} with {combination}.", *notes))
        out = _finish_out(tmp, Path(out_dir), {"combined": [str(s.adapter_dir) for s in sources],
                                                "weights": weights, "method": combination})
    except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error type
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise _as_user_error(e, Path(out_dir)) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(progress, 1.0, f"Saved to {out}")
    return {"out": str(out), "bytes": dir_bytes(out), "base": sources[0].base, "method": combination,
            "merged": merge, "notes": notes}


def _fix_base_reference(adapter_dir: Path, base: str) -> None:
    """Point the saved adapter at the base reference the user knows (a name, not a cache path)."""
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = read_json(cfg_path, {})
    cfg["base_model_name_or_path"] = base
    atomic_write_json(cfg_path, cfg)


def export_zip(adapter_dir: str | Path, out_zip: str | Path) -> Path:
    """Zip an adapter folder (or a run's adapter) for download.

    Only regular files that lie inside the folder are packed: a symbolic link whose target is outside
    it (a file or a folder) is left out, so a link planted in an adapter folder cannot carry /etc or
    ~/.ssh into a download. Folders are walked without following links."""
    src = locate_adapter(adapter_dir)
    root = src.adapter_dir.resolve()
    picked = Path(str(adapter_dir).strip()).expanduser().resolve()
    if not (is_within(picked, root) or (src.run_dir is not None and is_within(src.run_dir, root))):
        raise UserError(f"{src.adapter_dir} is a link to a folder outside {picked}; the studio does not zip "
                        "what a link points to outside the folder. Pick the adapter folder itself.")
    out_zip = Path(out_zip).expanduser().resolve()
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(f".{out_zip.name}.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in _files_inside(root):
            zf.write(f, arcname=str(Path(src.adapter_dir.name) / f.relative_to(root)))
    os.replace(tmp, out_zip)
    return out_zip


def _files_inside(root: Path) -> list[Path]:
    """Regular files under `root` (sorted) whose real path is inside it; links out and special files skipped."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in files:
            f = Path(folder) / name
            try:
                if f.is_file() and is_within(root, f):  # is_file follows a link; is_within resolves it
                    found.append(f)
            except OSError:
                continue
    return sorted(found)


def estimate_merged_bytes(base: str) -> Optional[int]:
    """Size the merged model will have on disk: the base's weight files (None when not local)."""
    p = Path(base).expanduser()
    if base and not p.exists():
        # Only look at an already converted copy: converting would load a model in the caller.
        p = model_cache_dir() / base if base in BUNDLED else p
    if not p.is_dir():
        return None
    files = list(p.glob("*.safetensors")) or list(p.glob("*.bin"))
    return sum(f.stat().st_size for f in files) or None


def sizes(adapter_or_run_dir: str | Path) -> dict[str, Any]:
    """Adapter size (MB) against the merged model's (GB), for the Merge tab."""
    src = locate_adapter(adapter_or_run_dir)
    merged = estimate_merged_bytes(src.base)
    return {"adapter_bytes": dir_bytes(src.adapter_dir), "merged_bytes": merged,
            "adapter_mb": round(dir_bytes(src.adapter_dir) / 1e6, 2),
            "merged_gb": round(merged / 1e9, 3) if merged else None}


def adapter_runs(workspace: str | Path) -> list[tuple[str, str]]:
    """(label, run dir) for every run that has saved an adapter or model, newest first."""
    out = []
    for row in list_runs(Path(workspace)):
        ad = adapter_dir(Path(row["dir"]))
        if not ((ad / "adapter_config.json").exists() or (ad / "config.json").exists()):
            continue
        if is_reward_model(ad):  # offered where it is used: the reward model of GRPO/RLOO
            continue
        bits = [row["id"], row.get("method") or "", row.get("state") or ""]
        if row.get("best_val_loss") is not None:
            bits.append(f"val {row['best_val_loss']:.3f}")
        out.append((" · ".join(b for b in bits if b), row["dir"]))
    return out


def merged_models(workspace: str | Path) -> list[tuple[str, str]]:
    """(label, folder) for the merged models the studio wrote under the workspace."""
    ws = Path(workspace)
    found = sorted({m.parent for pattern in ("merged/*/" + _MERGED_MARK, "runs/*/merged/" + _MERGED_MARK)
                    for m in ws.glob(pattern) if (m.parent / "config.json").exists()})
    return [(f"merged: {p.relative_to(ws)}", str(p)) for p in found]


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def merge_command(sources: list[str], out: str, weights: Optional[list[float]] = None, method: Optional[str] = None,
                  density: Optional[float] = None, merge: bool = False) -> list[str]:
    """The `ftstudio merge` command line the UI runs (and can show for repeating it by hand)."""
    cmd = [sys.executable, "-m", "backend.cli", "merge", *[str(s) for s in sources], "--out", str(out), "--json",
           "--progress-json"]
    if len(sources) > 1:
        cmd += ["--method", method or "linear"]
        if weights:
            cmd += ["--weights", *[str(w) for w in weights]]
        if density is not None:
            cmd += ["--density", str(density)]
        if merge:
            cmd.append("--merge-into-base")
    return cmd


def run_merge_subprocess(cmd: list[str], cwd: Optional[Path] = None) -> Iterator[dict[str, Any]]:
    """Run a merge command in a child process; yield {"progress", "message"} dicts, then {"result"} or {"error"}."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    repo = PROJECT_ROOT
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    # stdout goes to a file: a chatty library filling a stdout pipe while we read stderr would deadlock.
    out_file = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(cwd or repo), start_new_session=True)
    tail: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(PROGRESS_PREFIX):
                try:
                    yield json.loads(line[len(PROGRESS_PREFIX):])
                    continue
                except json.JSONDecodeError:
                    pass
            tail = (tail + [line.rstrip()])[-20:]
        code = proc.wait()
        out_file.seek(0)
        out = out_file.read()
    except GeneratorExit:
        proc.kill()
        raise
    finally:
        out_file.close()
    result = None
    for line in reversed(out.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if code == 0 and isinstance(result, dict) and "error" not in result:
        yield {"result": result}
    elif isinstance(result, dict) and result.get("error"):
        yield {"error": result["error"]}
    else:
        last = next((t for t in reversed(tail) if t.strip()), "")
        if code in (-9, 137):
            yield {"error": "The merge process was killed (exit code %s), most likely for running out of memory. "
                            "Close other programs or merge on a machine with more RAM." % code}
        else:
            yield {"error": f"The merge process failed (exit code {code}): {last[:300]}"}
