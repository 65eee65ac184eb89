"""The studio: five tabs, one RunConfig flowing left to right."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio.context import StudioContext, default_run_config
from studio.tabs import chat, dataset, merge, method, train

CSS = """
.ft-help { color: var(--body-text-color-subdued); font-size: 0.9em; }
.ft-error { color: #b91c1c; font-weight: 600; }
.ft-ok { color: #15803d; }
"""

TABS = (("Dataset", dataset), ("Method", method), ("Train", train), ("Merge", merge), ("Chat", chat))


def build_app(workspace: Path) -> gr.Blocks:
    with gr.Blocks(title="Fine-Tune Studio", analytics_enabled=False) as demo:
        gr.Markdown("# Fine-Tune Studio\nDataset → Method → Train → Merge → Chat. "
                    f"Runs are kept in `{workspace}/runs`.")
        ctx = StudioContext(workspace=workspace, run_config=gr.State(default_run_config()),
                            data_lengths=gr.State(None))
        with gr.Tabs(elem_id="ft-tabs"):
            for title, module in TABS:
                with gr.Tab(title, id=title.lower(), elem_id=f"tab-{title.lower()}"):
                    module.build(ctx)
    return demo
