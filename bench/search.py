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


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def steady_rate(finish_times: list[float], warm_after: int) -> float | None:
    """Trials per minute after the first `warm_after` trials have finished."""
    if len(finish_times) <= warm_after:
        return None
    span = finish_times[-1] - finish_times[warm_after - 1]
    return 60.0 * (len(finish_times) - warm_after) / span if span > 0 else None


def timed_search(recipe, args, **kwargs) -> tuple[dict, list[float], float, list[float]]:
    from merging.search.study import run_search

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
    parser.add_argument("--rounds", type=int, default=2, help="in-process and Ray studies, alternated")
    parser.add_argument("--target-speedup", type=float, default=1.6)
    args = parser.parse_args(argv)
    setup(args)
    from merging.lab.lab import Lab
    from merging.recipe.codec import recipe_from_dict
    from merging.search.ray_backend import RayRuntime
    from merging.training.zoo import load_zoo

    if args.tiny:
        from latency import make_tiny_zoo

        args.zoo = make_tiny_zoo(Path(tempfile.mkdtemp(prefix="mergescope-search-")) / "zoo")
        args.trials, args.dev_size, args.rounds = 4, 8, 1
    zoo = load_zoo(args.zoo)
    names = [a.name for a in zoo.adapters if a.init == args.init]
    recipe = recipe_from_dict({
        "adapters": [{"path": str(zoo.adapter(n).path), "name": n, "weight": 1.0} for n in names],
        "device": "cuda" if args.device.startswith("cuda") else "cpu",
    })
    load_before = loadavg()
    lab = Lab(zoo.base_model, device=args.device)

    # Rounds alternate the backends, so a change in the machine's load (other processes) falls on both
    rows, speedups, runs = [], [], {"in_process": [], "ray": []}
    runtime_s = None
    inproc = None
    for round_index in range(args.rounds):
        result, times, wall, load = timed_search(recipe, args, lab=lab, report=round_index == 0)
        inproc = inproc or result
        in_total, in_steady = result["trials_per_minute"], steady_rate(times, 1)
        rows.append([f"in-process (round {round_index + 1})", in_total, in_steady, result["seconds"], round(wall, 2),
                     len({t["worker"] for t in result["trials"]}), load[0]])
        runs["in_process"].append({"result": result, "finish_times": times, "load": load})
        runtime_start = time.perf_counter()
        with RayRuntime(None, num_cpus=args.workers):
            runtime_s = runtime_s or time.perf_counter() - runtime_start
            result, times, wall, load = timed_search(recipe, args, ray=True, workers=args.workers, report=False)
        ray_total, ray_steady = result["trials_per_minute"], steady_rate(times, args.workers)
        rows.append([f"Ray, {args.workers} actors (round {round_index + 1})", ray_total, ray_steady, result["seconds"],
                     round(wall, 2), len({t["worker"] for t in result["trials"]}), load[0]])
        runs["ray"].append({"result": result, "finish_times": times, "load": load})
        speedups.append((ray_total / in_total if in_total and ray_total else None,
                         ray_steady / in_steady if in_steady and ray_steady else None))
    import statistics

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 2) if values else None

    speedup_total, speedup_steady = median([s[0] for s in speedups]), median([s[1] for s in speedups])
    throughput = {
        "title": f"Trials per minute: in-process vs Ray with {args.workers} workers",
        "caption": (
            f"{len(names)} adapters ({', '.join(names)}), task_arithmetic, objective {args.objective}, "
            f"{args.trials} trials per study (TPE, seed {args.seed}), {args.dev_size} dev examples per task; device "
            f"{args.device}; {__import__('os').cpu_count()} CPU cores; in-process with {torch_threads()} torch threads, "
            f"each Ray actor with 1. Rounds alternate the backends. Load average before: {load_before}."
        ),
        "headers": ["backend", "trials/min (whole study)", "trials/min (steady state)", "study (s)", "wall (s)",
                    "workers seen", "load (1 min) after"],
        "rows": rows,
        "notes": [
            (f"speed-up Ray / in-process, median over rounds: {speedup_total} over the whole study, "
             f"{speedup_steady} in steady state (per round: "
             + "; ".join(f"{a and round(a, 2)} / {b and round(b, 2)}" for a, b in speedups) + ")"),
            (f"starting the local Ray runtime: {runtime_s:.1f} s (not in the rates); round 1's in-process 'wall' "
             "includes the final report on the evaluation split"),
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
    data = {"runs": runs, "ray_runtime_start_s": runtime_s, "speedups": speedups}
    return finish("search", args, [throughput, accuracy], targets, data)


if __name__ == "__main__":
    main()
