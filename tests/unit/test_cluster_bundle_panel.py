from pathlib import Path

import gradio as gr

from backend.core.config import RunConfig
from studio.context import StudioContext
from studio.tabs.cluster_bundle import bundle_for


def _ctx(tmp_path: Path) -> StudioContext:
    return StudioContext(workspace=tmp_path, run_config=gr.State(RunConfig().model_dump(mode="json")))


def test_panel_writes_a_bundle_inside_the_workspace(tmp_path):
    rc = RunConfig(distributed={"strategy": "zero3"}).model_dump(mode="json")
    md = bundle_for(_ctx(tmp_path), rc, 2, 8, "../../escape me")
    assert "launch.sh NODE_RANK MAIN_ADDR" in md and "16 processes" in md
    written = list((tmp_path / "bundles").glob("*/launch.sh"))
    assert len(written) == 1 and written[0].parent.parent == tmp_path / "bundles"


def test_panel_says_why_a_layout_cannot_run(tmp_path):
    rc = RunConfig(distributed={"strategy": "fsdp"}).model_dump(mode="json")
    md = bundle_for(_ctx(tmp_path), rc, 1, 1, "one")
    assert "ft-error" in md and "at least 2" in md
