"""Run every benchmark at its documented size and write docs/BENCHMARKS.md from what they print.

Each benchmark runs as its own process with ``--json``; the document is rendered from that JSON with
the same table code the benchmark used to print, so every figure in it is one a program measured.
A short probe first records how healthy the machine is (a shared machine makes OpenMP threads wait
on each other), and each table keeps the load average seen while it was measured.

    .venv/bin/python bench/run_all.py                    # all benchmarks, default sizes → docs/BENCHMARKS.md
    .venv/bin/python bench/run_all.py --threads 1        # one torch thread each (a busy, shared machine)
    .venv/bin/python bench/run_all.py --tiny --out /tmp/B.md   # smoke run of the whole pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BENCHMARKS = {
    "peft_compare": "mergescope vs PEFT (same adapters, same process)",
    "scale": "Scale: Llama-2-7B-shaped adapters, TIES to rank 16",
    "latency": "Interactive latency on the demo zoo",
    "causal_scoring": "Causal-LM scoring vs a plain forward",
    "search": "λ search on the demo zoo: in-process vs a local Ray runtime",
    "mergekit_compare": "mergescope vs mergekit: full-model TIES, whole process, idle and busy",
}

PROBE = r"""
import json, os, statistics, sys, time
import torch
def median_ms(fn, n):
    fn(); times = []
    for _ in range(n):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
out = {}
g = torch.Generator().manual_seed(0)
small, x, w = torch.randn(128, 128, generator=g), torch.randn(832, 384, generator=g), torch.randn(1536, 384, generator=g)
for threads in sorted({1, os.cpu_count() or 1}):
    torch.set_num_threads(threads)
    svd = median_ms(lambda: torch.linalg.svd(small, full_matrices=False), 9)
    gemm = median_ms(lambda: torch.nn.functional.linear(x, w), 15)
    out[threads] = {"svd128_ms": svd, "gemm_gflops": 2 * 832 * 384 * 1536 / (gemm / 1000) / 1e9, "load1": os.getloadavg()[0]}
print(json.dumps(out))
"""


def probe(env: dict) -> dict:
    completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300, check=False)
    try:
        return json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": completed.stderr[-500:]}


def run_benchmark(name: str, extra: list[str], env: dict, results: Path, timeout: float) -> dict:
    path = results / f"{name}.json"
    path.unlink(missing_ok=True)
    command = [sys.executable, str(HERE / f"{name}.py"), "--json", str(path), *extra]
    print(f"\n$ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(command))}", flush=True)
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, timeout=timeout, text=True, capture_output=True, check=False)
    sys.stdout.write(completed.stdout)
    if completed.returncode != 0 or not path.is_file():
        sys.stderr.write(completed.stderr[-3000:])
        return {"benchmark": name, "error": f"exit {completed.returncode}", "seconds": time.perf_counter() - start}
    result = json.loads(path.read_text(encoding="utf-8"))
    result["seconds"] = time.perf_counter() - start
    path.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return result


def machine_section(results: list[dict], probes: dict, args, env: dict) -> str:
    from common import markdown_table

    machine = next((r["machine"] for r in results if "machine" in r), {})
    rows = [
        ["CPU", machine.get("cpu")],
        ["cores (usable)", f"{machine.get('cores')} ({machine.get('usable_cores')})"],
        ["torch threads", machine.get("torch_threads")],
        ["torch / peft / Python", f"{machine.get('torch')} / {machine.get('peft')} / {machine.get('python')}"],
        ["OMP_WAIT_POLICY", env.get("OMP_WAIT_POLICY", "unset")],
        ["library measured", f"{machine.get('merging')} at commit {machine.get('commit')}"],
        ["device", f"{machine.get('device')} ({machine.get('device_name')})"],
    ]
    for r in results:
        if "machine" in r:
            rows.append([f"load average at the end of {r['benchmark']} (1, 5, 15 min)", ", ".join(map(str, r["machine"]["loadavg"]))])
    text = ["## Machine\n", markdown_table(["", ""], rows), ""]
    if probes and "error" not in probes:
        text.append(
            f"Probe ({'at render time' if args.render_only else 'just before the benchmarks'}): median time of a "
            "128×128 SVD (LAPACK, many small parallel steps) "
            "and the throughput of one 832×384 · 384×1536 matmul (the demo model's largest), per thread count. "
            "On a machine whose cores other processes also use, threads that wait for each other make the "
            "first figure grow by orders of magnitude.\n"
        )
        text.append(
            markdown_table(
                ["torch threads", "SVD 128×128 (ms)", "matmul (GFLOP/s)", "load (1 min)"],
                [[int(t), p["svd128_ms"], p["gemm_gflops"], p["load1"]] for t, p in probes.items()],
            )
        )
        text.append("")
    return "\n".join(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument("--results", type=Path, default=None, help="folder for the JSON results (default: a temp dir)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--tiny", action="store_true", help="every benchmark at its smoke-test size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every benchmark")
    parser.add_argument("--omp-wait-policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY for the benchmarks (default PASSIVE: waiting threads sleep instead of "
                             "spinning, which a shared machine needs; 'inherit' keeps the environment's)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per benchmark")
    parser.add_argument("--render-only", action="store_true",
                        help="rerun only the probe and rebuild the document from the JSON already in --results")
    for name in BENCHMARKS:
        parser.add_argument(f"--{name.replace('_', '-')}-args", default="", help=f"extra arguments for {name}.py")
    args = parser.parse_args(argv)

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    common = ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    if args.tiny:
        common.append("--tiny")

    import tempfile

    results_dir = args.results or Path(tempfile.mkdtemp(prefix="mergescope-bench-"))
    results_dir.mkdir(parents=True, exist_ok=True)
    probes = probe(env)
    print(f"probe: {json.dumps(probes)}", flush=True)
    results = []
    for name in args.only:
        if args.render_only:
            saved = json.loads((results_dir / f"{name}.json").read_text(encoding="utf-8"))
            saved.setdefault("seconds", float("nan"))
            results.append(saved)
            continue
        extra = common + getattr(args, f"{name}_args").split()
        results.append(run_benchmark(name, extra, env, results_dir, args.timeout))

    from common import render

    shown, skip = [], False
    for arg in argv if argv is not None else sys.argv[1:]:
        if skip or arg == "--render-only":
            skip = False
            continue
        if arg in ("--results", "--out"):  # where the figures went, not how they were made
            skip = True
            continue
        shown.append(arg)
    command = "bench/run_all.py " + " ".join(shown)
    parts = [
        "# Benchmarks\n",
        (
            "Generated by `bench/run_all.py`; do not edit by hand: every figure below was printed by a benchmark "
            "program in `bench/` (the JSON they wrote is rendered with the same table code). Regenerate with\n"
        ),
        f"```bash\n.venv/bin/python {command.strip()}\n```\n",
        (
            "Timings are the minimum over a few runs unless a table says otherwise; each table records the "
            "1-minute load average seen while it was measured. CI runs each program once at `--tiny` size "
            "(`tests/test_bench_smoke.py`), as a smoke test, not as a timing.\n"
        ),
        machine_section(results, probes, args, env),
    ]
    for result in results:
        title = BENCHMARKS[result["benchmark"]]
        parts.append(f"## {title}\n")
        if result.get("error"):
            parts.append(f"The benchmark failed ({result['error']}); see its output.\n")
            continue
        took = f" ({result['seconds']:.0f} s)" if result.get("seconds") == result.get("seconds") else ""
        parts.append(f"`{result['command']}`{took}\n")
        parts.append(render(result, heading_level=3))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} (JSON results in {results_dir})")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
