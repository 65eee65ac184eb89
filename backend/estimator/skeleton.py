"""The exact shape of the model being trained: a meta-device skeleton with the method applied.

No weights are read: the model is built on the meta device from its config, the method freezes
or wraps it exactly as training will, and every parameter is classified (base or adapter,
trainable or frozen, quantizable by bitsandbytes or not, which block it lives in). The result is
cached per (model config, method settings that change the structure), so a live estimate only
pays for arithmetic after the first call.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from backend.core.catalog import METHODS
from backend.core.config import RunConfig

# Method fields that never change which parameters exist or train.
_NOT_STRUCTURAL = {"alpha", "dropout", "loraplus_lr_ratio", "compute_dtype", "quant_type", "double_quant",
                   "prompt_init_text", "unfreeze_every", "oft_cayley_neumann"}
_LAYER_RE = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_OUTPUT_PROJECTIONS = {"o_proj", "out_proj", "dense", "c_proj", "down_proj", "fc2", "wo", "w2", "dense_4h_to_h"}


@dataclass(frozen=True)
class ModelShape:
    """Everything the arithmetic needs, taken from the meta skeleton."""
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: Optional[int]
    attn_implementation: str
    total_params: int            # logical parameters after the method (tied weights once)
    trainable_params: int
    base_quantizable: int        # frozen linear weights bitsandbytes would store in 4 bit
    base_other: int              # the rest of the frozen base (embeddings, head, norms, biases)
    base_trainable: int          # base weights that train (full / layer-selective)
    adapter_trainable: int       # parameters the method added that train (LoRA A/B, prefixes, ...)
    adapter_frozen: int          # parameters the method added that stay frozen
    adapter_bytes_per_param: float   # dtype the method keeps added parameters in (PEFT: fp32)
    trainable_shapes: tuple[tuple[tuple[int, ...], bool, int], ...]  # ((shape, is_base), count)
    trained_layers: tuple[int, ...]  # block indices holding trainable base weights
    adapter_in_features_per_layer: float  # summed input width of adapted linears, per block
    adapter_distinct_in_features_per_layer: float  # the same, counting inputs shared by siblings once
    grad_through_all_layers: bool  # gradients must flow down to the embeddings
    lowest_grad_layer: int         # lowest block autograd records (layers below it save nothing)
    virtual_tokens: int            # tokens prompt/prefix methods add to every sequence
    virtual_tokens_in_kv_only: bool  # prefix methods lengthen keys/values, not the hidden states
    largest_linear: int          # elements of the biggest frozen linear (4-bit dequantization buffer)
    largest_layer_params: int    # parameters of one block (ZeRO-3/FSDP gather one at a time)
    notes: tuple[str, ...] = field(default=())
    # The bare model's linear layers (name, in, out, is the output head) and its other leaf modules'
    # names: a LoRA target change is counted from these instead of applying PEFT again.
    linears: tuple[tuple[str, int, int, bool], ...] = field(default=())
    other_leaves: tuple[str, ...] = field(default=())
    token_rows: int = 0            # embedding rows of added tokens trained as PEFT trainable tokens


def _config_dims(config: Any) -> dict[str, Any]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    g = lambda *names, default=None: next(  # noqa: E731 - a local lookup helper
        (getattr(text, n) for n in names if getattr(text, n, None) is not None), default)
    hidden = int(g("hidden_size", "n_embd", "d_model"))
    heads = int(g("num_attention_heads", "n_head", default=1))
    head_dim = int(g("head_dim", default=hidden // max(heads, 1)) or hidden // max(heads, 1))
    kv_heads = int(g("num_key_value_heads", "n_head_kv", default=heads) or heads)
    inter = g("intermediate_size", "n_inner", "ffn_dim", default=None) or 4 * hidden
    return dict(
        model_type=str(getattr(config, "model_type", "?")), hidden=hidden, heads=heads, head_dim=head_dim,
        kv_heads=kv_heads, intermediate=int(inter), layers=int(g("num_hidden_layers", "n_layer", default=0)),
        vocab=int(g("vocab_size", default=0)),
        max_positions=g("max_position_embeddings", "n_positions", "max_sequence_length", default=None),
        attn_implementation=str(getattr(config, "_attn_implementation", None) or "sdpa"),
    )


def structural_method_key(method: Any) -> str:
    data = method.model_dump(mode="json")
    info = METHODS[data["name"]]
    if info.family != "prompt":
        data.pop("num_virtual_tokens", None)
    # QLoRA's skeleton is LoRA's: the 4-bit storage is arithmetic, not structure.
    if info.unquantized:
        data["name"] = info.unquantized
    return json.dumps({k: v for k, v in sorted(data.items()) if k not in _NOT_STRUCTURAL})


def _is_linear(module: Any) -> bool:
    from torch import nn
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _lora_inputs(model: Any) -> tuple[int, int]:
    """Input features of all LoRA-wrapped linears, and of the distinct inputs they read."""
    total = 0
    distinct: set[tuple[str, int, bool]] = set()
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "in_features") and len(getattr(mod, "lora_A", {})) > 0:
            total += mod.in_features
            parent, _, leaf = name.rpartition(".")
            # Sibling projections reading the same tensor (q/k/v, gate/up) share one saved input.
            distinct.add((parent, mod.in_features, leaf in _OUTPUT_PROJECTIONS))
    return total, sum(d[1] for d in distinct)


def shape_of(model_config: Any, cfg: Any) -> ModelShape:
    """Build, apply, classify. Not cached; use `cached_shape`."""
    from backend.methods import apply_method, build_meta_model  # torch: only when a skeleton is built

    dims = _config_dims(model_config)
    model = build_meta_model(model_config, cfg.trust_remote_code)
    if _trained_tokens(cfg):
        from backend.methods.tokens import add_meta_tokens

        add_meta_tokens(model, cfg)  # grown before the base is listed: the larger matrices are the base's
        dims["vocab"] = int(model.get_input_embeddings().weight.shape[0])  # the logits are this wide too
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    linear_weight_ids = {id(mod.weight) for name, mod in model.named_modules()
                         if _is_linear(mod) and getattr(mod, "weight", None) is not None and mod is not head}
    base_ids = {id(p) for p in model.parameters()}
    linears, other_leaves = [], []
    for name, mod in model.named_modules():
        if _is_linear(mod) and getattr(mod, "weight", None) is not None:
            w = tuple(mod.weight.shape)  # nn.Linear: (out, in); GPT-2's Conv1D: (in, out)
            i, o = (w[0], w[1]) if type(mod).__name__ == "Conv1D" else (w[1], w[0])
            linears.append((name, int(i), int(o), mod is head))
        elif name and not any(True for _ in mod.children()):
            other_leaves.append(name)
    layer_params: Counter[int] = Counter()
    largest_linear = 0
    for name, p in model.named_parameters():
        mm = _LAYER_RE.search("." + name)
        if mm:
            layer_params[int(mm.group(1))] += p.numel()
        if id(p) in linear_weight_ids:
            largest_linear = max(largest_linear, p.numel())

    model = apply_method(model, cfg)

    seen: set[int] = set()
    counts = Counter()
    shapes: Counter = Counter()
    trained_layers: set[int] = set()
    adapter_dtypes: Counter = Counter()
    embeddings_trainable = False
    prefix_like = False
    token_rows = 0
    input_emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_ids = {id(p) for p in input_emb.parameters()} if input_emb is not None else set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        is_base = id(p) in base_ids
        mm = _LAYER_RE.search("." + name)
        if is_base:
            if p.requires_grad:
                counts["base_trainable"] += n
                if mm:
                    trained_layers.add(int(mm.group(1)))
                if id(p) in emb_ids or (id(p) in head_ids and input_emb is not None
                                        and head is not None and head.weight is input_emb.weight):
                    embeddings_trainable = True
            elif id(p) in linear_weight_ids:
                counts["base_quantizable"] += n
            else:
                counts["base_other"] += n
        else:
            counts["adapter_trainable" if p.requires_grad else "adapter_frozen"] += n
            adapter_dtypes[p.element_size()] += n
            if "trainable_tokens_delta" in name:
                token_rows += int(p.shape[0])
            if "prompt_encoder" in name or "prefix" in name.lower():
                prefix_like = True
        if p.requires_grad:
            shapes[(tuple(p.shape), is_base)] += 1

    adapter_in, adapter_distinct_in = _lora_inputs(model)
    layers = max(dims["layers"], 1)
    name = cfg.method.name
    vt = cfg.method.num_virtual_tokens if METHODS[name].family == "prompt" else 0
    all_layers = embeddings_trainable or counts["adapter_trainable"] > 0 or prefix_like
    lowest = 0 if all_layers else (min(trained_layers) if trained_layers else dims["layers"])
    total = sum(counts.values())
    trainable = counts["base_trainable"] + counts["adapter_trainable"]
    adapter_bpp = (max(adapter_dtypes, key=adapter_dtypes.get) if adapter_dtypes else 4)
    return ModelShape(
        **dims, total_params=total, trainable_params=trainable,
        base_quantizable=counts["base_quantizable"], base_other=counts["base_other"],
        base_trainable=counts["base_trainable"], adapter_trainable=counts["adapter_trainable"],
        adapter_frozen=counts["adapter_frozen"], adapter_bytes_per_param=float(adapter_bpp),
        trainable_shapes=tuple(sorted(((s, b, c) for (s, b), c in shapes.items()), key=str)),
        trained_layers=tuple(sorted(trained_layers)), adapter_in_features_per_layer=adapter_in / layers,
        adapter_distinct_in_features_per_layer=adapter_distinct_in / layers,
        grad_through_all_layers=all_layers, lowest_grad_layer=lowest, virtual_tokens=vt,
        virtual_tokens_in_kv_only=METHODS[name].kv_prefix,
        largest_linear=largest_linear, largest_layer_params=max(layer_params.values(), default=0),
        linears=tuple(linears), other_leaves=tuple(other_leaves), token_rows=token_rows,
    )


# Bump when ModelShape or the way it is computed changes: older files are then ignored.
_DISK_VERSION = 2


def _disk_path(key: str):
    import hashlib
    from pathlib import Path

    from backend.core.models import workspace_root

    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return Path(workspace_root()) / "cache" / "skeletons" / f"v{_DISK_VERSION}-{digest}.json"


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def shape_from_json(text: str) -> ModelShape:
    data = json.loads(text)
    return ModelShape(**{k: _tuples(v) for k, v in data.items()})


def shape_to_json(shape: ModelShape) -> str:
    return json.dumps(dataclasses.asdict(shape))


def _load_or_build(config_json: str, config_cls: type, build_json: str) -> ModelShape:
    """The skeleton's counts from the disk cache, else built (seconds: torch, transformers, PEFT) and stored.

    The first estimate after choosing a model in a new studio process is then arithmetic on a
    small JSON file, not a meta model build. A damaged or unwritable cache is only slower.
    """
    path = _disk_path(f"{config_cls.__name__}|{config_json}|{build_json}")
    try:
        return shape_from_json(path.read_text())
    except (OSError, ValueError, TypeError):
        pass
    config = config_cls.from_dict(json.loads(config_json))  # plan.ConfigFile gives the transformers config
    cfg = RunConfig.model_validate_json(build_json)
    shape = shape_of(config, cfg)  # derivable LoRA shapes never reach here (cached_shape derives them)
    try:
        from backend.core.io import atomic_write_text
        atomic_write_text(path, shape_to_json(shape))
    except Exception:  # noqa: BLE001 - the cache is an optimisation
        pass
    return shape


@functools.lru_cache(maxsize=128)
def _shape_cached(config_json: str, config_cls: type, build_json: str, attn: str) -> ModelShape:
    shape = _load_or_build(config_json, config_cls, build_json)
    return dataclasses.replace(shape, attn_implementation=attn)


# LoRA variants whose every added parameter is a rank-r factor (A: r x in, B: out x r).
_RANK_LINEAR = {"lora", "qlora", "rslora", "loraplus"}
_PROBE_RANK = 1
_PROBE_TARGETS = "all-linear"  # every model has linear layers, so the probe always builds


def _trained_tokens(cfg: Any) -> list[str]:
    # backend.methods.tokens.trained_tokens without importing torch: a method that cannot train added tokens is
    # refused at the field, and its estimate is the one without them.
    data = getattr(cfg, "data", None)
    tokens = list(getattr(data, "add_special_tokens", None) or [])
    return tokens if METHODS[cfg.method.name].new_tokens else []


def _targeted(name: str, targets: Any) -> bool:
    """PEFT's rule for a list of target names: the module's name, or its last dotted parts."""
    return name in targets or any(name.endswith("." + t) for t in targets)


def targeted_linears(shape: ModelShape, targets: Any) -> list[tuple[str, int, int, bool]]:
    """The bare model's linear layers (name, in, out, is head) a target list picks by PEFT's rule; 'all-linear'
    is every linear but the output head."""
    if targets == "all-linear":
        return [ln for ln in shape.linears if not ln[3]]
    return [ln for ln in shape.linears if _targeted(ln[0], list(targets))]


def derived_lora_shape(model_config: Any, cfg: Any) -> Optional[ModelShape]:
    """A LoRA skeleton for any rank and target modules, counted from the shapes of the model's linear
    layers in the one probe skeleton (rank 1, all linear layers), without applying PEFT again; None
    where that would not be exact (the probe itself, a target that is not a linear layer).

    Each wrapped linear of in x out gets A (r x in) and B (out x r), which is all PEFT adds for these
    variants; tests/unit/test_skeleton_cache.py checks the result equals PEFT's for several target
    sets and ranks.
    """
    m = cfg.method
    if m.name not in _RANK_LINEAR or _trained_tokens(cfg):
        return None  # added tokens' rows: the skeleton is built with them (PEFT's trainable tokens)
    if int(m.r) == _PROBE_RANK and m.target_modules == _PROBE_TARGETS:
        return None
    probe = cfg.model_copy(update={"method": m.model_copy(update={"r": _PROBE_RANK,
                                                                    "target_modules": _PROBE_TARGETS})})
    base = cached_shape(model_config, probe)
    if base.adapter_frozen or not base.linears:
        return None
    if m.target_modules != "all-linear" and any(_targeted(n, list(m.target_modules)) for n in base.other_leaves):
        return None  # an embedding or another layer PEFT wraps differently: build it
    chosen = targeted_linears(base, m.target_modules)
    if not chosen:
        return None  # PEFT refuses the target set; building it gives its own message
    r = int(m.r)
    adapter = r * sum(i + o for _, i, o, _ in chosen)
    shapes = Counter()
    for dims, is_base, count in base.trainable_shapes:
        if is_base:
            shapes[(tuple(dims), True)] += count
    distinct: set[tuple[str, int, bool]] = set()
    for name, i, o, _ in chosen:
        shapes[((r, i), False)] += 1
        shapes[((o, r), False)] += 1
        parent, _, leaf = name.rpartition(".")
        distinct.add((parent, i, leaf in _OUTPUT_PROJECTIONS))
    layers = max(base.layers, 1)
    return dataclasses.replace(
        base, adapter_trainable=adapter, trainable_params=base.base_trainable + adapter,
        total_params=base.total_params - base.adapter_trainable + adapter,
        trainable_shapes=tuple(sorted(((s, b, c) for (s, b), c in shapes.items()), key=str)),
        adapter_in_features_per_layer=sum(i for _, i, _, _ in chosen) / layers,
        adapter_distinct_in_features_per_layer=sum(d[1] for d in distinct) / layers)


def cached_shape(model_config: Any, cfg: Any) -> ModelShape:
    """ModelShape for (model config, method); repeated calls with the same structure are free.

    Only the model and the method's structural fields form the key, so changing the batch size,
    the learning rate or LoRA's alpha never rebuilds the skeleton.
    """
    method = json.loads(structural_method_key(cfg.method))
    build = {"model": cfg.model, "trust_remote_code": cfg.trust_remote_code, "method": method}
    tokens = _trained_tokens(cfg)
    if tokens:  # the grown embedding rows and the trained ones (key unchanged for runs that add none)
        build["data"] = {"add_special_tokens": tokens}
    attn = str(getattr(model_config, "_attn_implementation", None) or "sdpa")
    key = (config_json_of(model_config), type(model_config), json.dumps(build, sort_keys=True), attn)
    if key in _DERIVED:
        return _DERIVED[key]
    # A LoRA rank or target edit: counted from the probe skeleton in memory, never written to disk
    # (writing and re-reading the file cost more than the arithmetic).
    derived = derived_lora_shape(model_config, cfg)
    if derived is not None:
        if len(_DERIVED) > 512:
            _DERIVED.clear()
        _DERIVED[key] = derived = dataclasses.replace(derived, attn_implementation=attn)
        return derived
    return _shape_cached(*key)


_DERIVED: dict[tuple, ModelShape] = {}


_CONFIG_JSON: dict[int, tuple[Any, str]] = {}


def config_json_of(model_config: Any) -> str:
    # to_json_string costs a few ms; memoise per live config object (kept alive in the tuple).
    hit = _CONFIG_JSON.get(id(model_config))
    if hit is not None and hit[0] is model_config:
        return hit[1]
    text = model_config.to_json_string(use_diff=False)
    if len(_CONFIG_JSON) > 64:
        _CONFIG_JSON.clear()
    _CONFIG_JSON[id(model_config)] = (model_config, text)
    return text


def preload() -> None:
    """Import what a skeleton build needs (torch, transformers' causal-LM classes, PEFT's LoRA), by building
    one of a two-layer Llama on the meta device.

    The studio calls it in the background at start-up: the first estimate for a model never seen then
    costs the build (about 2 s on 2 cores), not the 4-5 s of imports in front of it.
    """
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    shape_of(config, RunConfig.model_validate({"model": "preload", "method": {"name": "lora"}}))
