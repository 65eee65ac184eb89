"""bench/gpu_speed.py --dry-run: the GPU script's whole path on CPU with a tiny model.

The GPU run itself needs a lent GPU; this keeps the script working (config, studio trainer path,
timing callback, refusal rows and the markdown table) on every machine.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu_speed", REPO / "bench" / "gpu_speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(900)
def test_the_dry_run_trains_plain_and_packed_and_lists_the_kernels_a_cpu_lacks(tmp_path, bundled_dir, monkeypatch):
    monkeypatch.setenv("FTSTUDIO_MODEL_CACHE", str(bundled_dir.parent))
    bench = _load()
    assert bench.main(["--dry-run", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu_speed_dry_run.json").read_text())
    rows = {r["variant"]: r for r in record["results"]}
    assert set(rows) == set(bench.VARIANTS)
    for name in ("plain", "packing"):
        assert rows[name]["status"] == "ok" and rows[name]["tokens_per_s"] > 0, rows[name]
    # Packing fills each sequence with several rows: fewer sequences than rows.
    assert rows["packing"]["packed_rows"] < rows["plain"]["packed_rows"]
    for name in ("liger", "packing+liger+flash"):
        assert rows[name]["status"] == "not available" and "CUDA" in rows[name]["reason"]
    table = (tmp_path / "gpu_speed_dry_run.md").read_text()
    assert "| model | variant | real tokens/s |" in table and "not available" in table
