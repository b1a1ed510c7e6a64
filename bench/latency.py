"""Interactive latency on the demo zoo: merge + per-task evaluation, and a λ sweep, as the dashboard runs them.

One `Lab` (the base model, loaded once, as the dashboard keeps it) merges the zoo's adapters of one
initialisation and scores every task (merged body + the task's own head) with `merge_and_evaluate`;
the first call is cold (it tokenises the evaluation sets and scores the base model and each single
adapter, which are cached), later calls are warm: what a user waits for after changing a λ, and
when the preview (merged accuracy on 1 in 3 examples per class, shown while the rest is scored)
arrives. Then the same merge once more (its merged scores are cached by the body's fingerprint),
and `Lab.sweep` runs `--points` merges + evaluations (λ·[1, …, 1], λ evenly spaced) with the
merged-score cache emptied first; λ = 0 is the base model, whose scores are already known.
cProfile of one warm merge + evaluation says where the time goes.

    .venv/bin/python bench/latency.py            # the shipped zoo (zoo/), standard adapters, 11-point sweep
    .venv/bin/python bench/latency.py --tiny     # smoke test: a throwaway zoo of random adapters
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, base_parser, finish, loadavg, setup, target


def make_tiny_zoo(folder: Path, eval_size: int = 12, rank: int = 4) -> Path:
    """A two-task zoo of random adapters on the demo base model (no training): for smoke tests."""
    from safetensors.torch import save_file

    from merging.models.base import DEMO_BASE_MODEL, demo_model_dir
    from merging.tasks import load_demo_task

    config = json.loads((demo_model_dir() / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    tasks, adapters = [], []
    generator = torch.Generator().manual_seed(0)
    for name in ("sms_spam", "question_type"):
        data = load_demo_task(name, train_size=8 * 6, eval_size=eval_size, seed=0)
        state = {}
        for layer in range(layers):
            for part in ("query", "value"):
                prefix = f"base_model.model.bert.encoder.layer.{layer}.attention.self.{part}"
                state[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=generator) * 0.05
                state[f"{prefix}.lora_B.weight"] = torch.randn(hidden, rank, generator=generator) * 0.05
        state["base_model.model.classifier.weight"] = torch.randn(len(data.labels), hidden, generator=generator) * 0.1
        state["base_model.model.classifier.bias"] = torch.zeros(len(data.labels))
        adapter = folder / f"{name}-standard"
        adapter.mkdir(parents=True)
        save_file(state, str(adapter / "adapter_model.safetensors"))
        (adapter / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "SEQ_CLS", "r": rank, "lora_alpha": 2 * rank,
            "target_modules": ["query", "value"], "modules_to_save": ["classifier"], "lora_dropout": 0.0,
            "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": DEMO_BASE_MODEL,
        }))
        split = {"train_size": 8 * 6, "eval_size": eval_size, "seed": 0, "max_length": 48}
        (adapter / "mergescope.json").write_text(json.dumps({
            "task": name, "labels": list(data.labels), "init": "standard", "base_model": DEMO_BASE_MODEL, "data": split,
        }))
        tasks.append({"name": name, "labels": list(data.labels)})
        adapters.append({"name": adapter.name, "task": name, "init": "standard", "path": adapter.name})
    manifest = {"base_model": DEMO_BASE_MODEL, "tasks": tasks, "adapters": adapters, "data": split}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def eval_sizes(evaluator) -> tuple[dict[str, int], int | None, int | None]:
    """Examples per task, and the real and padded token counts the model reads per evaluation."""
    sizes = {task: len(eval_set.texts) for task, eval_set in evaluator.eval_sets.items()}
    batches = getattr(evaluator, "_batches", None)
    if not isinstance(batches, dict):
        return sizes, None, None
    tokens = padded = 0
    for parts in batches.values():
        for _, batch in parts["all"]:  # what a full evaluation reads
            tokens += int(batch["attention_mask"].sum())
            padded += int(batch["attention_mask"].numel())
    return sizes, tokens, padded


def profile_summary(profile: cProfile.Profile, top: int) -> list[list]:
    """The `top` functions by own time: [function, calls, own s, cumulative s]."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        where = Path(filename).name if filename not in ("~", "") else ""
        label = f"{where}:{line}({name})" if where else name
        rows.append([label.replace("|", "/"), calls, own, cumulative])
    rows.sort(key=lambda r: r[2], reverse=True)
    return rows[:top]


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "zoo", help="zoo folder (default: the shipped zoo/)")
    parser.add_argument("--init", default="standard", help="which adapters of the zoo (default: standard)")
    parser.add_argument("--method", default="task_arithmetic")
    parser.add_argument("--density", type=float, default=1.0)
    parser.add_argument("--rank", type=int, default=None, help="output rank (default: exact)")
    parser.add_argument("--points", type=int, default=11)
    parser.add_argument("--lambda-from", type=float, default=0.0)
    parser.add_argument("--lambda-to", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="warm merge + evaluation runs")
    parser.add_argument("--top", type=int, default=12, help="functions listed from the profile")
    parser.add_argument("--target-merge-s", type=float, default=3.0)
    parser.add_argument("--target-sweep-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    setup(args)
    from merging.lab.lab import Lab
    from merging.recipe.codec import recipe_from_dict
    from merging.training.zoo import load_zoo, load_zoo_adapters

    scratch = None
    if args.tiny:
        scratch = Path(tempfile.mkdtemp(prefix="mergescope-latency-"))
        args.zoo = make_tiny_zoo(scratch / "zoo")
        args.points, args.repeats, args.top = 3, 1, 5
    try:
        zoo = load_zoo(args.zoo)
        names = [a.name for a in zoo.adapters if a.init == args.init]
        if not names:
            raise SystemExit(f"{args.zoo}: no adapters with init '{args.init}'")
        start = time.perf_counter()
        lab = Lab(zoo.base_model, device=args.device)
        lab_s = time.perf_counter() - start
        adapters = load_zoo_adapters(zoo, names)
        recipe = recipe_from_dict(
            {
                "adapters": [{"path": str(zoo.adapter(n).path), "name": n, "weight": 1.0} for n in names],
                "method": args.method,
                "density": args.density,
                "rank": args.rank,
                "device": "cuda" if args.device.startswith("cuda") else "cpu",
            }
        )
        load_cold = loadavg()
        start = time.perf_counter()
        cold = lab.merge_and_evaluate(adapters, recipe)
        cold_s = time.perf_counter() - start

        warm = []
        for index in range(max(1, args.repeats)):
            weights = [round(0.9 - 0.1 * index, 3)] * len(names)  # a new λ each time, as a user would
            seen = {}
            start = time.perf_counter()
            run = lab.merge_and_evaluate(
                adapters, recipe.with_weights(weights), on_preview=lambda _, seen=seen: seen.setdefault("at", time.perf_counter())
            )
            warm.append(
                {
                    "total_s": time.perf_counter() - start,
                    "preview_s": seen.get("at", float("nan")) - start,
                    "merge_s": run.merged.seconds,
                    "evaluate_s": run.evaluation.seconds,
                    "load1": loadavg()[0],
                }
            )
        start = time.perf_counter()
        lab.merge_and_evaluate(adapters, recipe.with_weights(weights))  # the last one again: scores cached
        again_s = time.perf_counter() - start
        profile = cProfile.Profile()
        profile.enable()
        profiled = lab.merge_and_evaluate(adapters, recipe.with_weights([0.55] * len(names)))
        profile.disable()

        lambdas = [
            round(args.lambda_from + i * (args.lambda_to - args.lambda_from) / max(args.points - 1, 1), 4)
            for i in range(args.points)
        ]
        lab.merged_cache.clear()  # a sweep of bodies never scored before (λ = 0 is still the base model)
        start = time.perf_counter()
        swept = lab.sweep(adapters, recipe, [[lam] * len(names) for lam in lambdas])
        sweep_s = time.perf_counter() - start
        sweep_load = loadavg()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    sizes, tokens, padded = eval_sizes(lab.evaluator)
    best_warm = min(warm, key=lambda w: w["total_s"])
    best_preview = min(w["preview_s"] for w in warm)
    median_warm = sorted(w["total_s"] for w in warm)[len(warm) // 2]
    per_point = sweep_s / len(lambdas)
    caption = (
        f"Zoo {args.zoo.name}: {len(names)} {args.init} adapters ({', '.join(names)}), method {args.method}, "
        f"device {args.device}; evaluation examples {', '.join(f'{t} {n}' for t, n in sizes.items())}"
        + (f" ({tokens} tokens, {padded} with padding)." if tokens is not None else ".")
    )
    latency_table = {
        "title": "Merge + evaluate, and a λ sweep",
        "caption": caption,
        "headers": ["what", "seconds", "merge (s)", "evaluate (s)", "load (1 min)"],
        "rows": [
            ["load the base model (once per server)", lab_s, None, None, load_cold[0]],
            ["first merge + evaluate (cold caches)", cold_s, cold.merged.seconds, cold.evaluation.seconds, load_cold[0]],
            [f"merge + evaluate, warm (min of {len(warm)})", best_warm["total_s"], best_warm["merge_s"],
             best_warm["evaluate_s"], max(w["load1"] for w in warm)],
            [f"merge + evaluate, warm (median of {len(warm)})", median_warm, None, None, max(w["load1"] for w in warm)],
            [f"… of which until the preview is shown (min of {len(warm)}; 1 in 3 examples per class)", best_preview,
             None, None, max(w["load1"] for w in warm)],
            ["the same merge again (merged scores cached)", again_s, None, None, max(w["load1"] for w in warm)],
            [f"λ sweep, {len(lambdas)} points ({lambdas[0]:g} … {lambdas[-1]:g})", sweep_s, None, None, sweep_load[0]],
            ["λ sweep, per point", per_point, None, None, sweep_load[0]],
        ],
    }
    profile_rows = profile_summary(profile, args.top)
    profile_table = {
        "title": "Where a warm merge + evaluate spends its time (cProfile, own time)",
        "caption": (
            f"One warm merge_and_evaluate: {profiled.seconds:.2f} s under the profiler, of which merge "
            f"{profiled.merged.seconds:.3f} s and evaluation {profiled.evaluation.seconds:.2f} s."
        ),
        "headers": ["function", "calls", "own (s)", "cumulative (s)"],
        "rows": profile_rows,
    }
    targets = []
    if not args.tiny:
        targets = [
            target("warm merge + per-task evaluation", f"≤ {args.target_merge_s:g} s", f"{best_warm['total_s']:.2f} s",
                   bool(best_warm["total_s"] <= args.target_merge_s)),
            target("warm merge until the preview is shown", f"≤ {args.target_merge_s:g} s", f"{best_preview:.2f} s",
                   bool(best_preview <= args.target_merge_s)),
            target(f"{len(lambdas)}-point λ sweep", f"≤ {args.target_sweep_s:g} s", f"{sweep_s:.1f} s",
                   bool(sweep_s <= args.target_sweep_s)),
        ]
    data = {
        "lab_s": lab_s,
        "cold_s": cold_s,
        "warm": warm,
        "again_s": again_s,
        "sweep_s": sweep_s,
        "lambdas": lambdas,
        "sweep_average_merged": [r.average()["merged"] for _, r in swept],
        "eval_sizes": sizes,
        "tokens": tokens,
        "padded_tokens": padded,
        "profile": profile_rows,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    return finish("latency", args, [latency_table, profile_table], targets, data)


if __name__ == "__main__":
    main()
