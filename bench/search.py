"""λ search on the demo zoo: trials per minute in-process vs on a local Ray runtime with K workers, and
the best-found recipe's evaluation accuracy vs uniform λ = 1 and the best shared λ.

Each trial is one merge and one evaluation of every task on its dev split (carved from training
data); the work is evaluation-bound, so K single-threaded actors should approach K× one process
when K cores are free. Two rates are reported per backend: over the whole study (Ray's actors load
the base model inside it) and in steady state (from the moment every worker has finished one
trial, so one-time loads and the dev sets' single-adapter scores are left out). The local Ray
runtime's own start-up is timed separately. The load average is recorded with every figure.

    .venv/bin/python bench/search.py                       # 5 adapters, 20 trials, 2 workers
    .venv/bin/python bench/search.py --tiny                # smoke run on a tiny zoo
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import ROOT, base_parser, finish, loadavg, setup, target


def steady_rate(finish_times: list[float], warm_after: int) -> float | None:
    """Trials per minute after the first `warm_after` trials have finished."""
    if len(finish_times) <= warm_after:
        return None
    span = finish_times[-1] - finish_times[warm_after - 1]
    return 60.0 * (len(finish_times) - warm_after) / span if span > 0 else None


def timed_search(recipe, args, **kwargs) -> tuple[dict, list[float], float, list[float]]:
    from merging.search import run_search

    finished: list[float] = []
    start = time.perf_counter()
    result = run_search(
        recipe, args.trials, objective=args.objective, seed=args.seed, dev_size=args.dev_size,
        on_trial=lambda outcome: finished.append(time.perf_counter()), **kwargs,
    )
    return result.to_dict(), finished, time.perf_counter() - start, loadavg()


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "zoo", help="zoo folder (default: the shipped zoo/)")
    parser.add_argument("--init", default="standard")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dev-size", type=int, default=64)
    parser.add_argument("--objective", default="average")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-speedup", type=float, default=1.6)
    args = parser.parse_args(argv)
    setup(args)
    from merging.lab import Lab
    from merging.recipe import recipe_from_dict
    from merging.search import RayRuntime
    from merging.zoo import load_zoo

    if args.tiny:
        from latency import make_tiny_zoo

        args.zoo = make_tiny_zoo(Path(tempfile.mkdtemp(prefix="mergescope-search-")) / "zoo")
        args.trials, args.dev_size = 4, 8
    zoo = load_zoo(args.zoo)
    names = [a.name for a in zoo.adapters if a.init == args.init]
    recipe = recipe_from_dict({
        "adapters": [{"path": str(zoo.adapter(n).path), "name": n, "weight": 1.0} for n in names],
        "device": "cuda" if args.device.startswith("cuda") else "cpu",
    })
    load_before = loadavg()
    lab = Lab(zoo.base_model, device=args.device)

    inproc, inproc_times, inproc_wall, inproc_load = timed_search(recipe, args, lab=lab, report=True)
    runtime_start = time.perf_counter()
    with RayRuntime(None, num_cpus=args.workers):
        runtime_s = time.perf_counter() - runtime_start
        ray_result, ray_times, ray_wall, ray_load = timed_search(
            recipe, args, ray=True, workers=args.workers, report=False
        )

    def rates(result: dict, times: list[float], warm_after: int) -> tuple[float | None, float | None]:
        return result["trials_per_minute"], steady_rate(times, warm_after)

    in_total, in_steady = rates(inproc, inproc_times, 1)
    ray_total, ray_steady = rates(ray_result, ray_times, args.workers)
    speedup_total = ray_total / in_total if in_total and ray_total else None
    speedup_steady = ray_steady / in_steady if in_steady and ray_steady else None
    throughput = {
        "title": f"Trials per minute: in-process vs Ray with {args.workers} workers",
        "caption": (
            f"{len(names)} adapters ({', '.join(names)}), task_arithmetic, objective {args.objective}, "
            f"{args.trials} trials (TPE, seed {args.seed}), {args.dev_size} dev examples per task; "
            f"device {args.device}; {__import__('os').cpu_count()} CPU cores. Load average before: {load_before}."
        ),
        "headers": ["backend", "trials/min (whole study)", "trials/min (steady state)", "study (s)", "wall (s)",
                    "workers seen", "load (1 min) after"],
        "rows": [
            ["in-process", in_total, in_steady, inproc["seconds"], round(inproc_wall, 2),
             len({t["worker"] for t in inproc["trials"]}), inproc_load[0]],
            [f"Ray, {args.workers} actors", ray_total, ray_steady, ray_result["seconds"], round(ray_wall, 2),
             len({t["worker"] for t in ray_result["trials"]}), ray_load[0]],
        ],
        "notes": [
            (f"speed-up Ray / in-process: {speedup_total and round(speedup_total, 2)} over the whole study, "
             f"{speedup_steady and round(speedup_steady, 2)} in steady state"),
            (f"starting the local Ray runtime: {runtime_s:.1f} s (not in the rates); in-process 'wall' includes the "
             "final report on the evaluation split"),
        ],
    }
    report_rows = []
    best = inproc["best"]
    rows = [("best found (in-process search)", best["recipe"] and [a["weight"] for a in best["recipe"]["adapters"]],
             best["evaluation"], best["interval_95"])]
    for key, label in (("uniform", "uniform λ = 1"), ("shared", "best shared λ (chosen on dev)")):
        data = inproc["baselines"][key]
        rows.append((label, data["weights"], data["evaluation"], data["interval_95"]))
    for label, weights, evaluation, interval in rows:
        low, high = interval["average_merged"]
        report_rows.append([label, ", ".join(f"{w:.2f}" for w in weights), evaluation["average"]["merged"],
                            f"{100 * low:.1f}–{100 * high:.1f}%", evaluation["average"]["normalized"]])
    accuracy = {
        "title": "Best-found recipe vs uniform λ and the best shared λ (evaluation split)",
        "caption": (
            f"Dev objective of the best trial: {best['dev_objective']:.4f} (trial {best['trial']}). "
            f"Shared λ grid {inproc['baselines']['shared']['grid']}; 95 % bootstrap interval of the average merged "
            "accuracy (examples resampled within each task)."
        ),
        "headers": ["recipe", "λ", "average merged", "95% interval", "average normalised"],
        "rows": report_rows,
    }
    targets = [target(f"Ray {args.workers} workers vs in-process (steady state)", f"≥ {args.target_speedup}×",
                      speedup_steady and round(speedup_steady, 2),
                      None if speedup_steady is None else speedup_steady >= args.target_speedup)]
    data = {"in_process": inproc, "ray": ray_result, "ray_runtime_start_s": runtime_s,
            "finish_times": {"in_process": inproc_times, "ray": ray_times}}
    return finish("search", args, [throughput, accuracy], targets, data)


if __name__ == "__main__":
    main()
