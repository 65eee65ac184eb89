"""The benchmark scripts' pure parts: the GPU matrix's cells and report, RESULTS.md generation.

No GPU and no training here: measurements are made up, so each test pins the arithmetic and the
formats other people (and the issue's acceptance check) read.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def matrix():
    return _load("gpu_memory_matrix")


def test_matrix_covers_every_combination_the_issue_asks_for(matrix):
    cells = matrix.build_cells()
    assert len(cells) == 2 * 5 * 2 * 2 * 2 * 2
    assert len({c["id"] for c in cells}) == len(cells)
    assert {c["method"] for c in cells} == {"full", "lora", "qlora", "dora", "prefix_tuning"}
    assert {(c["batch"], c["seq"]) for c in cells} == {(1, 512), (1, 2048), (8, 512), (8, 2048)}


def test_every_cell_is_a_valid_run_config(matrix):
    for cell in matrix.build_cells(models=["bundled"], optimizers=["adamw_8bit"], batches=[8], seqs=[2048]):
        cfg = matrix.cell_config(cell, "some/model", "data.jsonl")
        assert cfg.method.name == cell["method"]
        assert (cfg.train.batch_size, cfg.data.max_length, cfg.train.optimizer) == (8, 2048, "adamw_8bit")
        assert cfg.train.gradient_accumulation == 1 and cfg.train.max_steps == 2


def _result(matrix, cell, measured_peak, estimated, status="ok"):
    gib = 2**30
    return dict(cell, status=status, error=None if status == "ok" else "CUDA out of memory",
                estimate={"allocated_bytes": estimated * gib, "after_load_bytes": gib, "after_forward_bytes": 2 * gib,
                          "reserved_bytes": estimated * gib * 1.1},
                measured={} if status != "ok" else {
                    "after_load_bytes": gib, "after_forward_bytes": 2 * gib, "after_first_step_bytes": 3 * gib,
                    "peak_allocated_bytes": measured_peak * gib, "peak_reserved_bytes": measured_peak * gib * 1.2})


def test_report_states_median_and_worst_error_and_marks_oom(matrix):
    cells = matrix.build_cells(models=["bundled"], methods=["lora"], optimizers=["adamw_torch"], checkpointing=[True])
    results = [_result(matrix, cells[0], 10, 11),     # +10%
               _result(matrix, cells[1], 10, 8),      # -20%
               _result(matrix, cells[2], 10, 10.5),   # +5%
               _result(matrix, cells[3], 10, 30, status="oom")]
    s = matrix.summarize(results)
    assert (s["measured"], s["oom"]) == (3, 1)
    assert s["median_abs_error"] == pytest.approx(0.10)
    assert s["worst_abs_error"] == pytest.approx(0.20)
    text = matrix.format_report(results, {"name": "NVIDIA H200", "total_bytes": 140 * 2**30}, "python bench/x.py")
    assert re.search(r"^estimator median abs error: 10\.0%$", text, re.M)
    assert re.search(r"^estimator worst abs error: 20\.0%$", text, re.M)
    assert text.index("NVIDIA H200") < text.index("estimator median abs error")
    assert "| OOM |" in text and "-20.0%" in text
    assert text.count("\n| bundled/") == 4


def test_a_report_with_nothing_measured_says_so_instead_of_inventing_a_number(matrix):
    cells = matrix.build_cells(models=["bundled"], methods=["full"], optimizers=["adamw_torch"])
    text = matrix.format_report([_result(matrix, cells[0], 10, 30, status="oom")], {}, "cmd")
    assert "estimator median abs error: -%" in text


def test_without_a_gpu_the_matrix_exits_2_with_a_sentence(matrix, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert matrix.main([]) == 2
    assert "No CUDA GPU" in capsys.readouterr().err
