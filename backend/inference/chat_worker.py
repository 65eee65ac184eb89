"""The chat worker: a subprocess that holds the chat model so the studio's process never does.

`python -m backend.inference.chat_worker` speaks JSON lines: commands on stdin, events on stdout.

  {"cmd": "load", "model": M|null, "adapter": DIR|null, "quantize": false}
      -> {"event": "loaded", "base_loads": N, "model": .., "adapter": .., "device": ..}
  {"cmd": "generate", "id": I, "messages": [...], "settings": {...}, "use_adapter": true}
      -> {"event": "token", "id": I, "text": ..} ... {"event": "done", "id": I, "stopped": bool, "tokens": N, "prompt_tokens": P}
  {"cmd": "stop"}        interrupts the generation under way (read by the stdin thread at once)
  {"cmd": "status"}      -> {"event": "status", ...}
  {"cmd": "shutdown"}    exits
Any failure answers {"event": "error", "id": I?, "message": sentence}.

`ChatEngine` is the model side without the protocol; `ftstudio chat` uses it in process.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from backend.core.errors import UserError
from backend.core.models import ModelError, load_causal_lm, load_tokenizer, resolve_model
from backend.export.merge import locate_adapter
from backend.inference.chat import DEFAULT_SETTINGS, normalize_settings


class ChatEngine:
    """One base model, any number of adapters attached to it by name."""

    def __init__(self, device: Optional[str] = None) -> None:
        self.stop_flag = threading.Event()
        self.base_loads = 0
        self.base_source: Optional[str] = None
        self.base_ref: Optional[str] = None
        self.quantized = False
        self.model: Any = None
        self.tokenizer: Any = None
        self.adapters: dict[str, str] = {}      # adapter dir -> adapter name inside the PeftModel
        self.active: Optional[str] = None       # adapter name in use, None for the base alone
        self._device = device or os.environ.get("FTSTUDIO_CHAT_DEVICE")

    # ---- loading -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        if self._device:
            return self._device
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _dtype(self):
        import torch
        if self.device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # 16-bit matmuls on a CPU are slow and sometimes unsupported

    def load(self, model: Optional[str] = None, adapter: Optional[str] = None, quantize: bool = False) -> dict[str, Any]:
        """Make (model, adapter) current; the base is reloaded only when it changes."""
        src = locate_adapter(adapter) if adapter else None
        if src is not None and src.peft_type is None:
            model, src = str(src.adapter_dir), None  # a full fine-tune or merged model: no adapter to attach
        ref = model or (src.base if src else None)
        if not ref:
            raise UserError("No model chosen. Pick a run, a merged model folder, or a base model.")
        try:
            source = resolve_model(ref).source
        except ModelError as e:
            raise UserError(str(e)) from e
        quantize = bool(quantize and self.device.startswith("cuda"))
        if source != self.base_source or quantize != self.quantized or self._needs_fresh_base(src):
            self._load_base(ref, source, quantize)
        if src is None:
            self.active = None
            self._load_tokenizer(None)
        else:
            self._attach(src)
        return self.describe()

    def _needs_fresh_base(self, src) -> bool:
        # PEFT keeps one kind of adapter per model: a prompt-tuning adapter cannot join LoRA ones.
        from peft import PeftModel
        if src is None or not isinstance(self.model, PeftModel) or str(src.adapter_dir.resolve()) in self.adapters:
            return False
        from backend.methods.tokens import adapter_token_rows

        rows = adapter_token_rows(src.adapter_dir)
        if rows and max(rows) >= self.model.get_base_model().get_input_embeddings().weight.shape[0]:
            return True  # its added tokens need more rows than the base the other adapters sit on
        kinds = {str(c.peft_type.value if hasattr(c.peft_type, "value") else c.peft_type)
                 for c in self.model.peft_config.values()}
        return kinds != {src.peft_type}

    def _load_base(self, ref: str, source: str, quantize: bool) -> None:
        import gc

        import torch

        self.model = self.tokenizer = None
        self.adapters, self.active, self.base_source = {}, None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        kwargs: dict[str, Any] = {}
        if quantize:
            from transformers import BitsAndBytesConfig
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=self._dtype())
            kwargs["device_map"] = {"": self.device}
        try:
            model = load_causal_lm(source, dtype=self._dtype(), **kwargs)
            if not quantize:
                model = model.to(self.device)
        except ModelError as e:
            raise UserError(str(e)) from e
        except (torch.OutOfMemoryError, MemoryError) as e:
            raise UserError(self._oom_sentence(ref)) from e
        model.eval()
        self.model, self.base_source, self.base_ref, self.quantized = model, source, ref, quantize
        self.base_loads += 1

    def _oom_sentence(self, ref: str) -> str:
        where = "GPU" if self.device.startswith("cuda") else "memory"
        return (f"The model '{ref}' does not fit in {where}. Stop a running training (it holds the GPU), "
                "pick a smaller model, or tick 'load in 4-bit'.")

    def _attach(self, src) -> None:
        from peft import PeftModel

        from backend.methods.tokens import fit_base_to_adapter  # rows for the tokens the run added

        key = str(src.adapter_dir.resolve())
        if key not in self.adapters:
            name = f"adapter{len(self.adapters) + 1}"
            try:
                if isinstance(self.model, PeftModel):
                    fit_base_to_adapter(self.model.get_base_model(), src.adapter_dir)
                    self.model.load_adapter(key, adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(fit_base_to_adapter(self.model, src.adapter_dir), key,
                                                           adapter_name=name)
            except Exception as e:  # noqa: BLE001 - a mismatched adapter becomes a sentence
                raise UserError(f"The adapter in {key} does not fit the base model {self.base_ref} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Pick the base it was "
                                "trained on (the run's config names it).") from e
            self.model.eval()
            self.adapters[key] = name
        self.active = self.adapters[key]
        self.model.set_adapter(self.active)
        self._load_tokenizer(src.adapter_dir)

    def _load_tokenizer(self, adapter_dir: Optional[Path]) -> None:
        """The adapter's tokenizer when it saved one: training may have given it its chat template."""
        from transformers import AutoTokenizer

        if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").exists():
            tok = AutoTokenizer.from_pretrained(str(adapter_dir))
        else:
            tok = load_tokenizer(self.base_source)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.tokenizer = tok

    def describe(self) -> dict[str, Any]:
        active_dir = next((d for d, n in self.adapters.items() if n == self.active), None)
        return {"base_loads": self.base_loads, "model": self.base_ref, "model_source": self.base_source,
                "adapter": active_dir, "adapters": list(self.adapters), "device": self.device,
                "quantized": self.quantized}

    # ---- generation ----------------------------------------------------------------------
    def _inputs(self, messages: list[dict[str, str]]):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        else:
            # No template: a plain transcript the base model can continue.
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
            enc = tok(text, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def generate(self, messages: list[dict[str, str]], settings: Optional[dict[str, Any]] = None,
                 use_adapter: bool = True, on_text: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
        """Generate a reply, calling on_text per streamed chunk; stop_flag ends it early."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if self.model is None:
            raise UserError("No model is loaded yet. Pick a model (and adapter) and press Load.")
        s = normalize_settings(settings)
        flag = self.stop_flag

        class _StopOnFlag(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), flag.is_set(), dtype=torch.bool, device=input_ids.device)

        inputs = self._inputs(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = s["temperature"] > 0
        gen_kwargs: dict[str, Any] = dict(
            **inputs, streamer=streamer, max_new_tokens=s["max_new_tokens"], do_sample=sample,
            repetition_penalty=s["repetition_penalty"], stopping_criteria=StoppingCriteriaList([_StopOnFlag()]),
            pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            gen_kwargs.update(temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"])
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if s["seed"] is not None:
            torch.manual_seed(int(s["seed"]))
        use_adapter = bool(use_adapter and self.active)
        outcome: dict[str, Any] = {}

        def run() -> None:
            from contextlib import nullcontext
            from peft import PeftModel
            try:
                off = (self.model.disable_adapter() if isinstance(self.model, PeftModel) and not use_adapter
                       else nullcontext())
                with torch.inference_mode(), off:
                    out = self.model.generate(**gen_kwargs)
                outcome["tokens"] = int(out.shape[-1] - inputs["input_ids"].shape[-1])
            except Exception as e:  # noqa: BLE001 - reported to the caller, the worker stays up
                outcome["error"] = e
                streamer.end()

        self.stop_flag.clear()
        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        for chunk in streamer:
            if chunk and on_text:
                on_text(chunk)
        thread.join()
        err = outcome.get("error")
        if err is not None:
            if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
                raise UserError("Generation ran out of memory. Lower 'max new tokens' or shorten the conversation.")
            raise RuntimeError(f"Generation failed: {type(err).__name__}: {err}")
        return {"stopped": self.stop_flag.is_set(), "tokens": outcome.get("tokens", 0),
                "prompt_tokens": int(inputs["input_ids"].shape[-1])}


# ---- the subprocess protocol -----------------------------------------------------------------
def _serve(engine: ChatEngine, emit: Callable[[dict[str, Any]], None], inbox: "queue.Queue[dict]") -> None:
    while True:
        msg = inbox.get()
        cmd = msg.get("cmd")
        rid = msg.get("id")
        try:
            if cmd == "shutdown":
                emit({"event": "bye"})
                return
            if cmd == "load":
                emit({"event": "loaded", **engine.load(msg.get("model"), msg.get("adapter"), msg.get("quantize", False))})
            elif cmd == "status":
                emit({"event": "status", **engine.describe()})
            elif cmd == "generate":
                res = engine.generate(msg.get("messages") or [], msg.get("settings"), msg.get("use_adapter", True),
                                      on_text=lambda t: emit({"event": "token", "id": rid, "text": t}))
                emit({"event": "done", "id": rid, **res})
            else:
                emit({"event": "error", "id": rid, "message": f"unknown command {cmd!r}"})
        except UserError as e:
            emit({"event": "error", "id": rid, "message": str(e)})
        except Exception as e:  # noqa: BLE001 - the worker outlives one bad request
            import traceback
            traceback.print_exc(file=sys.stderr)
            emit({"event": "error", "id": rid, "message": f"{type(e).__name__}: {e}"})


def main() -> int:
    # Libraries print to stdout; keep the real stdout for the protocol and send the rest to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with lock:
            proto.write(json.dumps(event, default=str) + "\n")
            proto.flush()

    engine = ChatEngine()
    inbox: "queue.Queue[dict]" = queue.Queue()

    def read_stdin() -> None:
        # A stop must reach the generation loop while the main thread is busy in it.
        for line in sys.stdin:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                emit({"event": "error", "message": f"not a JSON command: {line[:80]!r}"})
                continue
            if msg.get("cmd") == "stop":
                engine.stop_flag.set()
            else:
                inbox.put(msg)
        inbox.put({"cmd": "shutdown"})  # the studio went away

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    emit({"event": "ready", "pid": os.getpid(), "defaults": DEFAULT_SETTINGS})
    _serve(engine, emit, inbox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
