"""The Method tab's speed switches: Liger kernels, attention, fused AdamW and torch.compile.

Each switch is a RunConfig field (train.*) laid out like the tab's other fields, so it is read,
validated and restored with them; below them one line per switch says whether it is on here and why
(backend.core.kernels decides, for this machine, the same way the trainer will).
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from backend.core.config import ConfigError, validate_config
from backend.core.kernels import ATTENTIONS, select_kernels

SPEED_FIELDS = ("train.liger_kernel", "train.attention", "train.fused_adamw", "train.torch_compile")
NAMES = {"liger_kernel": "Liger kernels", "attention": "Attention", "fused_adamw": "Fused AdamW",
         "torch_compile": "torch.compile"}
# The attention dropdown's suggestions; any hub kernel repo (owner/name) may be typed.
ATTENTION_OPTIONS = [*ATTENTIONS, "kernels-community/flash-attn2"]


def speed_text(rc: dict[str, Any]) -> str:
    """Markdown: each speed switch on or off on this machine, with its reason ("" while the config has errors,
    which show at their fields)."""
    try:
        cfg = validate_config(rc or {})
    except ConfigError:
        return ""
    lines = ["**Speed on this machine** (auto turns a switch on where it is available and known to be correct):"]
    for c in select_kernels(cfg):
        state = "on" if c.on else ("cannot run here" if c.problem else "off")
        shown = f" ({c.value})" if c.value and c.switch == "attention" and c.on else ""
        lines.append(f"- {NAMES[c.switch]}: **{state}**{shown}. {c.reason}")
    return "\n".join(lines)


def speed_layout(v: Any, rc0: dict[str, Any]) -> None:
    """The switches' fields (added to the view like any other field) and the line that explains them."""
    with gr.Accordion("Speed switches", open=False, elem_id="method-speed-box"):
        with gr.Row():
            for path in SPEED_FIELDS:
                v.add_field(path, rc0, options=ATTENTION_OPTIONS if path == "train.attention" else None)
        v.speed_md = gr.Markdown(speed_text(rc0), elem_id="method-speed", elem_classes=["ft-help"])
