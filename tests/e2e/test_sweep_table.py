"""Sweeps in the browser: the Method tab's section lists the runs a grid would queue; the Train tab's
table stars the winner of a finished sweep, and "Load this run's settings" brings its rank back to the
Method tab. The finished sweep is written to the workspace by hand: training it would take minutes."""
from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect

from backend.core.config import RunConfig
from backend.runs import rundir, sweep
from tests.e2e.helpers import field, open_tab, set_value

pytestmark = pytest.mark.e2e
# Each step waits for a state, long enough for a queued event on a heavily loaded machine.
STEP_MS = 150_000


def seed_sweep(workspace, model_dir):
    base = RunConfig.model_validate({"model": str(model_dir), "name": "e2e",
                                     "method": {"name": "lora", "r": 16}, "train": {"max_steps": 4}})
    axes = [sweep.parse_set("method.r=4,12")]
    runs = sweep.plan_sweep(base, axes)
    record = sweep.create_record(workspace, runs, axes, None)
    dirs = []
    for run, loss in zip(runs, (0.9, 0.4)):
        d = rundir.create_run(workspace, run.config)
        rundir.append_event(d, {"type": "eval", "step": 4, "val_loss": loss})
        rundir.write_status(d, state="completed", best_val_loss=loss, best_step=4,
                            started="2026-01-01T00:00:00+00:00", ended="2026-01-01T00:02:05+00:00")
        dirs.append(d)
    sweep.update_runs(workspace, record["id"], {i: {"run_dir": str(d)} for i, d in enumerate(dirs)})
    return record, dirs


def test_sweep_plan_table_winner_and_load_settings(studio_page, studio_server, tiny_model_dir):
    page, ws = studio_page, studio_server.workspace
    record, dirs = seed_sweep(ws, tiny_model_dir)
    try:
        panel = open_tab(page, "Method")
        panel.get_by_text("Sweep: train a grid of runs").click()
        set_value(page, "sweep-field-0", "method.r")
        set_value(page, "sweep-values-0", "4, 8")
        expect(field(page, "sweep-plan")).to_contain_text("2 runs", timeout=STEP_MS)
        set_value(page, "sweep-values-0", "4, 0")
        expect(field(page, "sweep-plan")).to_contain_text("method.r=0 cannot be used", timeout=STEP_MS)

        open_tab(page, "Train")
        # No click needed: the table's timer shows the newest sweep while none is picked.
        table = field(page, "sweep-table")
        expect(table).to_contain_text("★ winner", timeout=STEP_MS)
        winner_row = table.locator("tr", has_text="★ winner")
        expect(winner_row).to_contain_text("r=12", timeout=STEP_MS)
        expect(field(page, "sweep-note")).to_contain_text("Winner: r=12", timeout=STEP_MS)
        field(page, "sweep-load").click()
        expect(field(page, "sweep-load-status")).to_contain_text("the winner", timeout=STEP_MS)
        expect(field(page, "sweep-load-status")).to_contain_text(dirs[1].name, timeout=STEP_MS)

        open_tab(page, "Method")
        rank = field(page, "method-col-method-r").locator("input").first
        expect(rank).to_have_value(re.compile(r"^12$"), timeout=STEP_MS)
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        (ws / "sweeps" / f"{record['id']}.json").unlink(missing_ok=True)
