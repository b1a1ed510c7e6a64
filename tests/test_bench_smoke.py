"""Each benchmark in bench/ runs once at --tiny size and returns sane figures (a smoke test, not a timing).

The benchmarks are programs (bench/run_all.py runs them at full size and writes docs/BENCHMARKS.md);
here they run in-process with one torch thread, except the scale benchmark's merges, which run in
child processes by design (each reports its own peak memory), and the search benchmark's Ray actors.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    try:
        import latency
        import mergekit_compare
        import peft_compare
        import scale
        import search

        yield {"peft_compare": peft_compare, "scale": scale, "latency": latency, "search": search,
               "mergekit_compare": mergekit_compare}
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCH))


def _run(module, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "result.json"
    result = module.main(["--tiny", "--threads", "1", "--json", str(out), *extra])
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["benchmark"] == result["benchmark"]
    assert written["machine"]["cpu"] and written["machine"]["torch_threads"] == 1
    for table in written["tables"]:
        assert table["rows"] and all(len(row) == len(table["headers"]) for row in table["rows"])
    return written


def test_peft_compare_tiny_matches_peft(bench_modules, tmp_path):
    result = _run(bench_modules["peft_compare"], tmp_path)
    rows = result["data"]["rows"]
    assert {r["ours"] for r in rows} == {"task_arithmetic", "ties", "dare_ties"}
    for row in rows:
        assert row["max_rel_error"] < 1e-3, row
        assert row["ours_s"] > 0 and row["peft_s"] > 0 and math.isfinite(row["ratio"])
    assert {r["path"] for r in rows if r["ours"] == "task_arithmetic"} == {"factored"}


def test_scale_tiny_measures_each_merge_in_a_child(bench_modules, tmp_path):
    result = _run(bench_modules["scale"], tmp_path)
    rows = result["data"]["rows"]
    assert len(rows) == 2
    for row in rows:
        assert not row.get("error"), row
        assert row["complete"] and row["modules_done"] == row["modules_total"] == 8
        assert 0 < row["peak_rss_bytes"] < 4e9 and row["merge_s"] > 0


def test_latency_tiny_merges_evaluates_and_sweeps(bench_modules, tmp_path):
    result = _run(bench_modules["latency"], tmp_path)
    data = result["data"]
    assert len(data["lambdas"]) == 3 and len(data["sweep_average_merged"]) == 3
    assert all(0.0 <= acc <= 1.0 for acc in data["sweep_average_merged"])
    assert data["warm"][0]["total_s"] > 0 and data["sweep_s"] > 0
    assert data["profile"], "the profile summary lists the top functions"
    assert set(data["eval_sizes"]) == {"sms_spam", "question_type"}


def test_search_tiny_runs_the_study_in_process_and_on_ray_workers(bench_modules, tmp_path):
    from tests.conftest import ray_memory_bounded

    with ray_memory_bounded():  # the Ray runtime the benchmark starts passes whatever else runs
        result = _run(bench_modules["search"], tmp_path)
    data = result["data"]
    in_process, on_ray = data["runs"]["in_process"], data["runs"]["ray"]
    assert len(in_process) == len(on_ray) == 1  # --tiny: one round of each
    for run in in_process + on_ray:
        assert len(run["result"]["trials"]) == len(run["finish_times"]) == 4
    assert len({t["worker"] for t in on_ray[0]["result"]["trials"]}) == 2  # both actors scored trials
    assert not {t["worker"] for t in on_ray[0]["result"]["trials"]} & {t["worker"] for t in in_process[0]["result"]["trials"]}
    assert data["ray_runtime_start_s"] > 0
    baselines = in_process[0]["result"]["baselines"]
    assert all(0.0 <= baselines[k]["evaluation"]["average"]["merged"] <= 1.0 for k in ("uniform", "shared"))


def test_mergekit_compare_tiny_runs_mergescope_whole_and_says_why_mergekit_is_left_out(bench_modules, tmp_path):
    result = _run(bench_modules["mergekit_compare"], tmp_path)
    data = result["data"]
    assert data["mergekit"] is None and "--tiny" in data["why_not"]
    assert any("mergekit left out: --tiny" in note for note in result["tables"][0]["notes"])
    [run] = data["runs"]
    assert run["tool"] == "mergescope" and run["exit"] == 0 and run["wall_s"] > 0 and run["peak_rss_bytes"] > 0
    # the full model it wrote is W + TIES(ΔW) to float32 precision: against the benchmark's float64 TIES
    check = data["checks"]["mergescope"]
    assert check["entries"] > 0 and check["entries_off"] == 0 and check["max_abs_error"] < 1e-6


def test_run_all_runs_every_benchmark_program_in_bench(bench_modules):
    import run_all

    programs = {p.stem for p in BENCH.glob("*.py")} - {"common", "run_all"}
    assert programs and set(run_all.BENCHMARKS) == programs


def test_run_all_renders_every_table(bench_modules, tmp_path):
    """The document is rendered from the programs' JSON with the same table code they print."""
    import common

    result = {
        "benchmark": "peft_compare",
        "tables": [{"title": "t", "headers": ["a", "b"], "rows": [[1, 0.5]], "notes": ["n"]}],
        "targets": [common.target("x", "≤ 1 s", "0.5 s", True)],
    }
    text = common.render(result)
    assert "| 1 | 0.500 |" in text and "| x | ≤ 1 s | 0.5 s | yes |" in text
