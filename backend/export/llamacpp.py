"""llama.cpp itself, in this process: load a GGUF, tokenize, compute logits, read its metadata, quantize.

A thin layer over the C API (opened by `backend.export.llamacpp_lib`). It exists so the export
can be checked by the runtime that users run (llama.cpp, and Ollama, which embeds it) rather than
by a second reader; and so the k-quants come from llama.cpp's own quantizer.

llama.cpp prints its progress through a log callback; the lines are kept (not printed) so that a
file llama.cpp refuses is reported with llama.cpp's own reason.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from backend.core.errors import UserError
from backend.export import llamacpp_lib

# Our quant names -> llama.cpp's file types (enum llama_ftype).
FTYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
          "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
_LOG: list[str] = []
_callbacks: list[Any] = []  # keeps the cffi callback alive for the life of the process


def _lib() -> Any:
    lib = llamacpp_lib.load()
    if not _callbacks:
        ffi = llamacpp_lib.ffi()

        @ffi.callback("void(enum ggml_log_level, const char *, void *)")
        def keep(level: int, text: Any, _user: Any) -> None:
            _LOG.append(ffi.string(text).decode("utf-8", "replace"))
            del _LOG[:-200]

        _callbacks.append(keep)
        lib.llama_log_set(keep, ffi.NULL)
    return lib


def last_error() -> str:
    """llama.cpp's reason for the last refusal: its most specific error line (the one naming the
    cause, e.g. "error loading model vocabulary: unknown pre-tokenizer type: 'gpt2'"), or ''."""
    lines = [ln.strip() for ln in "".join(_LOG).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    specific = [ln for ln in errors if "failed to load model" not in ln]
    return (specific or errors or lines or [""])[0]


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def quantize(src: Path, dst: Path, quant: str) -> None:
    """Write `dst` as `src` quantized by llama.cpp (its choice of per-tensor types, as llama-quantize)."""
    lib, ffi = _lib(), llamacpp_lib.ffi()
    params = ffi.new("llama_model_quantize_params *", lib.llama_model_quantize_default_params())
    params.nthread = _threads()
    params.ftype = getattr(lib, FTYPES[quant])
    _LOG.clear()
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise UserError(f"llama.cpp could not quantize the GGUF to {quant} ({last_error() or f'code {rc}'}).")


class LlamaModel:
    """A GGUF loaded by llama.cpp with one context; optionally with a LoRA GGUF applied."""

    def __init__(self, path: Path, n_ctx: int = 2048, lora: Optional[Path] = None, lora_scale: float = 1.0):
        lib, ffi = _lib(), llamacpp_lib.ffi()
        self._lib, self._ffi = lib, ffi
        self._model = self._ctx = self._adapter = None
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        _LOG.clear()
        self._model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if self._model == ffi.NULL:
            self._model = None
            raise UserError(f"llama.cpp refused to load {Path(path).name}: {last_error() or 'no reason given'}.")
        self.vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = int(n_ctx)
        cparams.n_threads = cparams.n_threads_batch = _threads()
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if self._ctx == ffi.NULL:
            self._ctx = None
            self.close()
            raise UserError(f"llama.cpp could not make a context for {Path(path).name}: {last_error()}.")
        self.n_ctx = int(n_ctx)
        if lora is not None:
            self._adapter = lib.llama_adapter_lora_init(self._model, str(lora).encode())
            if self._adapter == ffi.NULL:
                self._adapter = None
                self.close()
                raise UserError(f"llama.cpp refused the LoRA adapter {Path(lora).name}: {last_error()}.")
            adapters = ffi.new("struct llama_adapter_lora *[1]", [self._adapter])
            scales = ffi.new("float[1]", [float(lora_scale)])
            if lib.llama_set_adapters_lora(self._ctx, adapters, 1, scales) != 0:
                self.close()
                raise UserError(f"llama.cpp could not apply the LoRA adapter {Path(lora).name}: {last_error()}.")

    def __enter__(self) -> "LlamaModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        lib = self._lib
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._adapter is not None:
            lib.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        if self._model is not None:
            lib.llama_model_free(self._model)
            self._model = None

    # --- the vocabulary ---------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        out = self._ffi.new("llama_token[]", cap)
        n = self._lib.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        if n < 0:  # too small a buffer: -n is the size needed
            cap = -n
            out = self._ffi.new("llama_token[]", cap)
            n = self._lib.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        return [int(out[i]) for i in range(n)]

    def piece(self, token: int) -> str:
        buf = self._ffi.new("char[]", 256)
        n = self._lib.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
        return self._ffi.unpack(buf, max(n, 0)).decode("utf-8", "replace")

    def special(self) -> dict[str, Any]:
        """The special tokens and flags as llama.cpp reads them from the metadata (-1 = none)."""
        lib, v = self._lib, self.vocab
        return {"bos": int(lib.llama_vocab_bos(v)), "eos": int(lib.llama_vocab_eos(v)),
                "eot": int(lib.llama_vocab_eot(v)), "pad": int(lib.llama_vocab_pad(v)),
                "add_bos": bool(lib.llama_vocab_get_add_bos(v)), "add_eos": bool(lib.llama_vocab_get_add_eos(v))}

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    def chat_template(self) -> Optional[str]:
        text = self._lib.llama_model_chat_template(self._model, self._ffi.NULL)
        return None if text == self._ffi.NULL else self._ffi.string(text).decode("utf-8")

    def meta(self, key: str) -> Optional[str]:
        buf = self._ffi.new("char[]", 1 << 16)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, 1 << 16)
        return None if n < 0 else self._ffi.string(buf).decode("utf-8", "replace")

    # --- running the model ------------------------------------------------------------------

    def logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits after every position of `ids` (a fresh sequence), shape (len, n_vocab)."""
        lib, ffi = self._lib, self._ffi
        n = len(ids)
        if not 0 < n <= self.n_ctx:
            raise UserError(f"A check sequence has {n} tokens; llama.cpp's context here holds 1 to {self.n_ctx}.")
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        batch = lib.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, t in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = int(t), i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            rc = lib.llama_decode(self._ctx, batch)
            if rc != 0:
                raise UserError(f"llama.cpp could not evaluate the model (llama_decode returned {rc}: {last_error()}).")
            out = np.empty((n, self.n_vocab), dtype=np.float32)
            for i in range(n):
                row = lib.llama_get_logits_ith(self._ctx, i)
                out[i] = np.frombuffer(ffi.buffer(row, self.n_vocab * 4), dtype=np.float32)
            return out
        finally:
            lib.llama_batch_free(batch)
