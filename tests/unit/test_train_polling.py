"""Issue 24 item 19: the Train tab's timers send only what changed, and run only while the tab is shown."""
from __future__ import annotations

import os
import time
from pathlib import Path

import gradio as gr

from backend.runs import rundir
from studio.tabs import train, train_queue

SKIP = gr.skip()


def _run(ws: Path, state: str = "completed", **status) -> Path:
    run_dir = rundir.runs_root(ws) / "20260101-000000-poll"
    run_dir.mkdir(parents=True)
    rundir.write_status(run_dir, state=state, **status)
    rundir.append_event(run_dir, {"type": "train_begin", "step": 0, "total_steps": 10})
    rundir.append_event(run_dir, {"type": "train", "step": 1, "loss": 2.0, "lr": 1e-3})
    (run_dir / rundir.LOG_FILE).write_text("[ftstudio] step 1\n")
    return run_dir


def _bump(path: Path) -> None:
    """A write a second later, as the trainer's next one would be (so the mtime surely moves)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_tick_with_no_new_file_content_sends_nothing(tmp_path):
    run_dir = _run(tmp_path)
    first = train.view_row(tmp_path, [run_dir.name], train.new_live(None))
    lv = first[0]
    assert all(x is not SKIP and x != SKIP for x in first[1:])  # a view draws everything once
    again = train.on_tick(tmp_path, lv)
    assert again[1:] == [SKIP] * 6  # nothing changed on disk: no text, no figure, no log is sent

    # A new training point: the figures and the changed texts are sent, the unchanged ones are not.
    rundir.append_event(run_dir, {"type": "train", "step": 2, "loss": 1.5, "lr": 1e-3})
    new = train.on_tick(tmp_path, lv)
    state, progress, stats, loss_fig, lr_fig, log = new[1:]
    assert loss_fig != SKIP and lr_fig != SKIP and "step 2 / 10" in progress
    assert state == SKIP and log == SKIP  # the state line and the log did not change
    assert train.on_tick(tmp_path, lv)[1:] == [SKIP] * 6

    # Only the log grew: only the log is sent.
    with open(run_dir / rundir.LOG_FILE, "a") as f:
        f.write("[ftstudio] step 2\n")
    _bump(run_dir / rundir.LOG_FILE)
    out = train.on_tick(tmp_path, lv)
    assert out[1:6] == [SKIP] * 5 and "step 2" in out[6]


def test_an_active_run_with_no_new_files_sends_only_its_clock(tmp_path):
    run_dir = _run(tmp_path, state="running", pid=os.getpid(), started=rundir.now_iso())
    lv = train.view_row(tmp_path, [run_dir.name], train.new_live(None))[0]
    assert rundir.read_status(run_dir)["state"] == "running"
    out = train.on_tick(tmp_path, lv)
    state, progress, stats, loss_fig, lr_fig, log = out[1:]
    assert (state, progress, loss_fig, lr_fig, log) == (SKIP,) * 5
    time.sleep(1.1)  # the elapsed time moves on by a second: that text alone is sent again
    stats = train.on_tick(tmp_path, lv)[3]
    assert stats != SKIP and "elapsed" in stats


def test_the_runs_table_is_sent_only_when_a_row_changed(tmp_path):
    run_dir = _run(tmp_path)
    listed, rows, compare = train.on_slow_tick(tmp_path, [], None)
    assert rows == listed and rows[0][0] == run_dir.name and compare != SKIP
    assert train.on_slow_tick(tmp_path, [], listed) == (listed, SKIP, SKIP)
    rundir.write_status(run_dir, state="failed", error="x")
    listed2, rows2, _ = train.on_slow_tick(tmp_path, [], listed)
    assert rows2 != SKIP and rows2[0][1] == "failed"


def test_the_queue_table_is_sent_only_when_it_changed(tmp_path):
    w, rows, _ = train_queue.on_timer(tmp_path, {})
    assert rows != SKIP
    w, rows, note = train_queue.on_timer(tmp_path, w)
    assert rows == SKIP and note == SKIP


def test_the_train_timers_run_only_while_the_train_tab_is_shown():
    on, on2 = train.timers_update(True)
    off, off2 = train.timers_update(False)
    assert on.active and on2.active and not off.active and not off2.active


def test_the_app_wires_every_tab_to_the_train_timers(tmp_path):
    from studio.app import build_app

    demo = build_app(tmp_path)
    timers = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
    train_timers = [t for t in timers if t.value in (1.0, 5.0) and getattr(t, "ft_role", None) != "sweep-table"]
    assert train_timers and not any(t.active for t in train_timers)  # stopped until the Train tab is shown
    tab_ids = {b._id for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    timer_ids = {t._id for t in train_timers}
    selects = [d for d in demo.fns.values() if any(t[1] == "select" and t[0] in tab_ids for t in d.targets)]
    assert len(selects) == len(tab_ids)
    assert all({o._id for o in d.outputs} == timer_ids for d in selects)


def test_the_bar_shows_the_data_preparation_until_the_first_step():
    from studio.plots import RunSeries
    from studio.tabs.train import progress_html

    status = {"state": "running", "preparing": {"fraction": 0.42, "text": "tokenizing 420,000 of 1,000,000 rows"}}
    bar = progress_html(RunSeries(), status)
    assert "preparing the data: tokenizing 420,000 of 1,000,000 rows (42%)" in bar and "width:42.0%" in bar
    # Once a step is done (or the run is over) the bar counts steps again.
    assert "preparing" not in progress_html(RunSeries(), {**status, "step": 3, "total_steps": 10})
    assert "preparing" not in progress_html(RunSeries(), {**status, "state": "failed"})
