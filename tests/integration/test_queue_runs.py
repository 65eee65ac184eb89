"""A queue of real tiny runs: a failing run in the middle is marked and the queue goes on; a worker
stopped in the middle (a studio restart) is replaced by a new one that carries on."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.runs import queue as q
from backend.runs import rundir
from tests.integration.test_train_runner import tiny_config, wait_until

pytestmark = pytest.mark.timeout(600)


def test_queue_runs_in_order_survives_a_failure_and_a_restart(tmp_path, tiny_model_dir):
    ws = tmp_path / "ws"
    good = tiny_config(tiny_model_dir, tmp_path, with_validation=False, patience=None, max_steps=3)
    good = good.model_copy(update={"report_to": []})
    bad_data = tmp_path / "garbage.jsonl"
    bad_data.write_text("this is not json\nnor is this\n")
    failing = good.model_copy(update={"name": "bad-data", "data": good.data.model_copy(update={"path": str(bad_data)})})
    gone_model = good.model_copy(update={"name": "gone-model", "model": str(tmp_path / "deleted-model")})
    ids = [q.add_to_queue(ws, c)["id"] for c in (good.model_copy(update={"name": "first"}), failing, gone_model,
                                                   good.model_copy(update={"name": "last"}))]
    events: list[dict] = []

    def entries() -> dict[str, dict]:
        return {e["id"]: e for e in q.read_queue(ws)["entries"]}

    first = q.QueueWorker(ws, poll=0.3, on_event=events.append).start()
    try:
        run_dir = Path(wait_until(lambda: entries()[ids[0]].get("run_dir"), timeout=60))
    finally:
        first.stop()  # the studio goes away while the first run trains
    assert not first.alive
    assert entries()[ids[1]]["state"] == "queued"

    second = q.QueueWorker(ws, poll=0.3, on_event=events.append).start()
    try:
        wait_until(lambda: not any(e["state"] in q.OPEN_STATES for e in entries().values()), timeout=500)
    finally:
        second.stop()

    final = entries()
    assert [final[i]["state"] for i in ids] == ["completed", "failed", "failed", "completed"]
    assert final[ids[0]]["run_dir"] == str(run_dir)  # the new worker adopted the run, it did not start another
    assert "no usable rows" in final[ids[1]]["error"].lower()
    assert "deleted-model" in final[ids[2]]["error"] and "run_dir" not in final[ids[2]]
    last_dir = Path(final[ids[3]]["run_dir"])
    assert (rundir.adapter_dir(last_dir) / "adapter_config.json").is_file()
    # One training at a time: each run started after the one before had ended.
    a, b, c = (rundir.read_status(Path(final[i]["run_dir"])) for i in (ids[0], ids[1], ids[3]))
    assert rundir.parse_iso(a["ended"]) <= rundir.parse_iso(b["started"])
    assert rundir.parse_iso(b["ended"]) <= rundir.parse_iso(c["started"])
    assert len(rundir.list_runs(ws)) == 3
    assert events[-1] == {"kind": "queue_end", "completed": 2, "not_completed": 2}
