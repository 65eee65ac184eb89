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


@pytest.fixture(scope="module")
def runner():
    return _load("run_cpu")


MACHINE = {"cpu": "AMD EPYC", "cores": 2, "python": "3.11", "platform": "Linux",
           "versions": {"torch": "2.13.0", "transformers": "5.24"}}


def _record(job, result=None, status="ok", error=None):
    return {"job": job, "command": f"python bench/{job}.py --x", "date": "2026-01-01 00:00:00", "seconds": 1.5,
            "status": status, "result": result, "error": error}


def test_results_md_is_rendered_from_records_with_commands_machine_and_the_gpu_gap(runner):
    latency = {"first_inspection_s": 1.25, "update_ms": {"p50": 0.061, "p95": 0.2, "max": 3, "n": 200},
               "structural_change_first_time_ms": {"p50": 900.0, "p95": 1200.0, "max": 1200.0, "n": 4}}
    records = {"estimator_latency": _record("estimator_latency", latency),
               "data_10k": _record("data_10k", status="failed", error="timed out after 240 s")}
    text = runner.render(records, MACHINE, gpu=None)
    assert "AMD EPYC, 2 cores" in text and "torch 2.13.0" in text
    assert "`python bench/estimator_latency.py --x`" in text
    assert "p50 0.061 ms, p95 0.2 ms" in text
    assert "**Not measured**: timed out after 240 s" in text
    assert "GPU matrix: not measured -- no GPU was available to this task" in text
    assert "Data path: 100k rows" in text and "the job has not run yet" in text


def test_results_md_embeds_the_gpu_matrix_report_when_a_gpu_run_left_one(runner, matrix):
    cells = matrix.build_cells(models=["bundled"], methods=["lora"], optimizers=["adamw_torch"])[:2]
    gpu = {"device": {"name": "NVIDIA H200"}, "command": "python bench/gpu_memory_matrix.py",
           "cells": [_result(matrix, cells[0], 10, 11), _result(matrix, cells[1], 10, 9)]}
    text = runner.render({}, MACHINE, gpu=gpu)
    assert "not measured -- no GPU" not in text
    assert re.search(r"^estimator median abs error: 10\.0%$", text, re.M)
    assert text.index("NVIDIA H200") < text.index("estimator worst abs error")


@pytest.fixture(scope="module")
def truth():
    return _load("memory_truth")


def test_memory_truth_covers_the_matrix_the_issue_asks_for(truth):
    cases = truth.build_cases()
    assert len(cases) >= 24 and len({c["id"] for c in cases}) == len(cases)
    assert {c["model"] for c in cases} == {"tiny", "bundled"}
    assert {"full", "lora", "dora", "qlora", "prompt_tuning", "prefix_tuning", "last_layers"} <= {c["method"] for c in cases}
    lora = [c for c in cases if c["method"] == "lora"]
    assert {c["fields"]["r"] for c in lora} >= {8, 64}
    assert {str(c["fields"]["target_modules"]) for c in lora} == {str(truth.ATTN), "all-linear"}
    assert {(c["precision"], c["pure_bf16"]) for c in cases} == {("fp32", False), ("bf16", False), ("bf16", True)}
    assert {c["checkpointing"] for c in cases} == {False, True}
    assert {c["optimizer"] for c in cases} == {"adamw_torch", "adamw_8bit", "sgd"}
    assert len({(c["batch"], c["seq"]) for c in cases}) >= 3
    for c in cases:
        truth.case_config(c, "owner/name")  # every case is a valid RunConfig


def test_memory_truth_report_prints_the_median_and_worst_lines(truth):
    def result(measured, estimated):
        return {"id": f"case {measured}", "status": "ok", "measured": {"peak_bytes": measured, "split": {}},
                "estimate": {"allocated_bytes": estimated, "terms_bytes": {}}}

    results = [result(100, 104), result(100, 90), result(200, 202), {"id": "broken", "status": "error", "error": "x"}]
    text = truth.format_report(results, "cpu", "python bench/memory_truth.py", "test machine")
    assert "CPU estimator median abs error: 4.0%" in text
    assert "CPU estimator worst abs error: 10.0%" in text
    assert "3 of 4 cases measured, 1 failed." in text
    assert "estimator median abs error" in truth.format_report(results, "cuda", "c", "GPU")


def test_rewriting_results_md_keeps_the_hand_recorded_measurements(runner):
    generated = runner.render({}, MACHINE, gpu=None)
    hand = runner.HAND_MARKER + "\n\n## Measured by hand\n\n`python bench/gpu_speed.py`: 43 tokens/s\n"
    previous = "# Benchmark results\n\nold generated text\n\n" + hand
    out = runner.with_hand_sections(generated, previous)
    assert out.startswith(generated.rstrip("\n")) and out.endswith(hand)
    assert "old generated text" not in out
    assert runner.with_hand_sections(generated, "no marker here") == generated
    # The shipped RESULTS.md has the marker, so `run_cpu.py --report-only` cannot drop its hand sections.
    assert runner.HAND_MARKER in (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8")
