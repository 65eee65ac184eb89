"""Bottleneck adapters (Houlsby, Pfeiffer): small down-project / non-linearity / up-project blocks
added after a decoder block's sub-layers, with a residual connection.

PEFT 0.21 has no bottleneck-adapter tuner, so this module inserts them itself (written by hand for
that reason): each adapter is a child module of its decoder layer, applied by a forward hook on the
attention or feed-forward sub-layer's output. The up-projection starts at zero, so an untrained
adapter is the identity and training starts from the base model. Saved as safetensors of the
adapter weights plus a JSON config, and loaded back onto a fresh base with `load_bottleneck_adapter`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend.core.catalog import METHOD
from backend.core.errors import UserError
from backend.core.io import atomic_write_json
from backend.methods.registry import register
from backend.methods.skeleton import decoder_layers

CONFIG_FILE = "bottleneck_adapter.json"
WEIGHTS_FILE = "bottleneck_adapter.safetensors"
FORMAT = "ftstudio-bottleneck-adapter"
POSITIONS = {METHOD.adapter_houlsby: ("attn", "ffn"), METHOD.adapter_pfeiffer: ("ffn",)}
_SUBLAYER_NAMES = {"attn": ("self_attn", "attn", "attention", "self_attention"),
                   "ffn": ("mlp", "feed_forward", "ffn", "block_sparse_moe")}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        if not self.up.weight.is_meta:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.down.weight.dtype)
        return (h + self.up(self.act(self.down(h)))).to(x.dtype)


def _sublayer(layer: nn.Module, position: str) -> nn.Module:
    for name in _SUBLAYER_NAMES[position]:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    what = "attention" if position == "attn" else "feed-forward"
    raise UserError(f"Could not find the {what} block inside the model's layers ({type(layer).__name__}), so "
                    "bottleneck adapters cannot be placed; choose LoRA for this model.")


def _hook(adapter: BottleneckAdapter):
    def apply(_module, _inputs, output):
        if isinstance(output, tuple):
            return (adapter(output[0]),) + tuple(output[1:])
        return adapter(output)
    return apply


def insert_adapters(model: nn.Module, method: str, bottleneck: int, activation: str) -> list[BottleneckAdapter]:
    """Add adapters to every decoder layer (base weights untouched); returns them in layer order."""
    hidden = model.config.get_text_config().hidden_size
    added = []
    for layer in decoder_layers(model):
        device = next(layer.parameters()).device
        for position in POSITIONS[method]:
            target = _sublayer(layer, position)
            with torch.device(device):
                adapter = BottleneckAdapter(hidden, bottleneck, activation)  # fp32, like PEFT's adapters
            layer.add_module(f"adapter_{position}", adapter)
            target.register_forward_hook(_hook(adapter))
            added.append(adapter)
    return added


def _adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer.named_children():
            if isinstance(module, BottleneckAdapter):
                for key, value in module.state_dict().items():
                    state[f"layers.{i}.{name}.{key}"] = value.detach().contiguous().cpu()
    return state


def save_bottleneck_adapter(model: nn.Module, out_dir: str | Path, settings: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(_adapter_state(model), str(out / WEIGHTS_FILE))
    atomic_write_json(out / CONFIG_FILE, {"format": FORMAT, "version": 1, **settings})
    return out


def is_bottleneck_adapter(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_FILE).exists()


def load_bottleneck_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Put saved bottleneck adapters onto a freshly loaded base model (in eval-ready, frozen form)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    settings = json.loads((folder / CONFIG_FILE).read_text())
    if settings.get("format") != FORMAT:
        raise UserError(f"{folder / CONFIG_FILE} is not a bottleneck-adapter config this studio wrote.")
    insert_adapters(model, settings["method"], settings["bottleneck"], settings["activation"])
    state = load_file(str(folder / WEIGHTS_FILE))
    own = _adapter_state(model)
    if set(state) != set(own):
        raise UserError(f"The adapter in {folder} does not fit this model (it was trained on "
                        f"{settings.get('base_model', 'another model')}); load it onto that base model.")
    layers = decoder_layers(model)
    for key, value in state.items():
        _, i, name, sub, param = key.split(".")
        getattr(getattr(layers[int(i)], name), sub).get_parameter(param).data.copy_(value)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def apply_bottleneck(model: nn.Module, cfg: Any) -> nn.Module:
    m = cfg.method
    for p in model.parameters():
        p.requires_grad_(False)
    insert_adapters(model, m.name, m.bottleneck, m.adapter_activation)
    settings = {"method": m.name, "base_model": cfg.model, "bottleneck": m.bottleneck,
                "activation": m.adapter_activation, "positions": list(POSITIONS[m.name])}
    # The Trainer's save_model would write the whole base model; save_trained calls this instead.
    model.ftstudio_save = lambda out_dir: save_bottleneck_adapter(model, out_dir, settings)
    return model


def _no_merge(_cfg: Any) -> tuple[bool, str]:
    return False, ("bottleneck adapters add layers and cannot be merged into the base weights; "
                   "load the adapter with its base model instead")


register(METHOD.adapter_houlsby, can_merge=_no_merge, apply=apply_bottleneck)

register(METHOD.adapter_pfeiffer, can_merge=_no_merge, apply=apply_bottleneck)
