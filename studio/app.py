"""The studio: five tabs, one RunConfig flowing left to right."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from backend.core.choices import load_choices, save_choices
from studio.context import StudioContext, bind, default_run_config
from studio.tabs import chat, dataset, merge, method, train

CSS = """
.ft-help { color: #4b5563; font-size: 0.9em; }  /* gray-600: 7.5:1 on white (WCAG AA); the theme's subdued grey is not */
.ft-help p, .ft-help .prose, .ft-help .prose * { color: #4b5563 !important; }
.ft-error { color: #b91c1c; font-weight: 600; }
.ft-ok { color: #15803d; }
/* WCAG AA (axe-core's color-contrast rule, tests/e2e/test_contrast.py): the theme's field hints and
   its orange/red buttons with white text are below 4.5:1. */
.info-text, .or, .max_value { color: #4b5563 !important; }
button.primary { background: #c2410c !important; color: #ffffff !important; }
button.stop { background: #b91c1c !important; color: #ffffff !important; }
"""

TABS = (("Dataset", dataset), ("Method", method), ("Train", train), ("Merge", merge), ("Chat", chat))


def build_app(workspace: Path) -> gr.Blocks:
    with gr.Blocks(title="Fine-Tune Studio", analytics_enabled=False) as demo:
        gr.Markdown("# Fine-Tune Studio\nDataset → Method → Train → Merge → Chat. "
                    f"Runs are kept in `{workspace}/runs`.")
        ctx = StudioContext(workspace=workspace, run_config=gr.State(default_run_config()),
                            data_lengths=gr.State(None))
        tabs = {}
        with gr.Tabs(elem_id="ft-tabs"):
            for title, module in TABS:
                with gr.Tab(title, id=title.lower(), elem_id=f"tab-{title.lower()}") as tabs[title.lower()]:
                    module.build(ctx)
        train.follow_tabs(ctx, tabs)  # the Train tab's timers run only while it is shown
        wire_choices(demo, ctx)
    return demo


def saved_run_config(workspace: Path) -> dict:
    """Page load: the choices saved in the workspace, else the defaults."""
    return load_choices(workspace)["run_config"] or default_run_config()


def remember_run_config(workspace: Path, run_config: dict) -> None:
    """Every change of the RunConfig is saved, so a reload or a restart brings it back."""
    if run_config:
        try:
            save_choices(workspace, run_config=run_config)
        except OSError:
            pass  # a read-only workspace loses only this convenience


def wire_choices(demo: gr.Blocks, ctx: StudioContext) -> None:
    """Page load reads the saved choices, then each tab's restore step runs in turn (one chain, so no
    two of them write the RunConfig at once); a settings import runs the same steps."""
    steps = ctx.extras.get("restore_steps", [])
    event = demo.load(bind(saved_run_config, ctx.workspace), None, ctx.run_config)
    # Settings loaded from elsewhere (the Method tab's import, the sweep table's winner) run the same steps.
    follow = [event] + ([ctx.extras["import_event"]] if "import_event" in ctx.extras else []) \
        + ctx.extras.get("settings_events", [])
    for chain in follow:
        for fn, inputs, outputs in steps:
            chain = chain.then(fn, inputs, outputs)
    ctx.run_config.change(bind(remember_run_config, ctx.workspace), ctx.run_config, None, queue=False,
                          show_progress="hidden")
