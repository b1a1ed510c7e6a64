"""Regenerate docs/RESULTS.md (and docs/results.json) from the shipped zoo: every number comes from a
forward pass here.

    .venv/bin/python scripts/findings.py [--zoo zoo] [--replicas ZOO ...] [--out docs/RESULTS.md]

Tables: single-task accuracy of every adapter kind in the zoo (standard, the OSRM variants, the
shared-seed pair) next to the base model with each adapter's own head; merged accuracy of all five
adapters of each kind under task arithmetic (λ = 1 and 0.5), TIES and DARE-TIES, with a 95 %
evaluation interval; the DO-Merging switches for standard vs the default OSRM; average accuracy
over λ; and, given `--replicas` (zoos built with `zoo build --replicate N`: the same tasks and
split, other training seeds), the headline comparison standard vs default OSRM as mean ± std over
training seeds.

Intervals. An accuracy p on n evaluation examples gets the normal-approximation 95 % half-width
1.96·√(p(1−p)/n); an average over T tasks with independent evaluation sets 1.96·√(Σ p_t(1−p_t)/n_t)/T.
A difference between two models on the same examples is called *within noise* when it is smaller
than the half-width of the difference of two independent such averages (√2 × a single one's,
conservative: the two models are scored on the same examples). Over training seeds, a difference
*survives* when it also exceeds two standard errors of the difference of the seed means.
docs/results.json holds the same numbers for the app (its sentences are generated from them).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from merging.lab import Lab  # noqa: E402
from merging.recipe import recipe_from_dict  # noqa: E402
from merging.zoo import load_zoo, load_zoo_adapters  # noqa: E402

METHODS = [
    ("task_arithmetic", "task arithmetic λ = 1", {}, 1.0),
    ("task_arithmetic", "task arithmetic λ = 0.5", {}, 0.5),
    ("ties", "TIES (density 0.5)", {"parameters": {"density": 0.5}}, 1.0),
    ("dare_ties", "DARE-TIES (density 0.5)", {"parameters": {"density": 0.5}, "seed": 0}, 1.0),
]
HEADLINE = [0, 1, 2]  # indices into METHODS compared over training seeds
SWITCHES = [
    ("decouple", {"decouple": True}),
    ("orthogonalize", {"orthogonalize": True}),
    ("both", {"decouple": True, "orthogonalize": True}),
]
LAMBDAS = [0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5]
KIND_ORDER = ["standard", "osrm", "osrm-frozen", "osrm-samples", "osrm-cov", "shared-seed"]
KIND_LABEL = {
    "standard": "standard LoRA",
    "osrm": "OSRM (authors': one mean row per other task)",
    "osrm-frozen": "OSRM, A frozen",
    "osrm-samples": "OSRM-samples (per-sample rows)",
    "osrm-cov": "OSRM-cov (token second moment)",
    "shared-seed": "standard, one shared seed",
}


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def half_width(p: float, n: int) -> float:
    return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def average_half_width(per_task: dict[str, float], sizes: dict[str, int]) -> float:
    variance = sum(p * (1 - p) / max(sizes[t], 1) for t, p in per_task.items())
    return 1.96 * math.sqrt(variance) / len(per_task)


def recipe(names, method, extra, weight=1.0, switches=None):
    return recipe_from_dict(
        {
            "adapters": [{"path": n, "name": n, "weight": weight} for n in names],
            "method": method,
            **extra,
            "do_merging": switches or {},
        }
    )


def kinds_of(zoo) -> dict[str, list[str]]:
    found = {}
    for kind in KIND_ORDER + sorted({a.init for a in zoo.adapters} - set(KIND_ORDER)):
        names = [a.name for a in zoo.adapters if a.init == kind]
        if names:
            found[kind] = names
    return found


def merged_cell(evaluation, sizes) -> tuple[str, dict]:
    tasks = {t: s.merged for t, s in evaluation.tasks.items()}
    average = evaluation.average()
    hw = average_half_width(tasks, sizes)
    cell = f"{pct(average['merged'])} ± {100 * hw:.1f} ({pct(average['normalized'])})"
    return cell, {"merged": average["merged"], "half_width": hw, "normalized": average["normalized"],
                  "per_task": tasks}  # fmt: skip


def headline_runs(lab: Lab, zoo, progress) -> dict:
    """Merged average of standard and default OSRM under the headline methods, for one zoo."""
    kinds = kinds_of(zoo)
    out = {}
    for kind in ("standard", "osrm"):
        if kind not in kinds:
            continue
        adapters = load_zoo_adapters(zoo, kinds[kind])
        single = None
        for index in HEADLINE:
            method, label, extra, weight = METHODS[index]
            run = lab.merge_and_evaluate(adapters, recipe(kinds[kind], method, extra, weight))
            single = run.evaluation.average()["single"]
            out[(kind, label)] = run.evaluation.average()["merged"]
            progress.update()
        out[(kind, "single")] = single
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(ROOT / "zoo"))
    parser.add_argument("--replicas", nargs="*", default=[], help="zoos of the same tasks trained with other seeds")
    parser.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    parser.add_argument("--json", default=str(ROOT / "docs" / "results.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="skip the DO-Merging and λ tables")
    args = parser.parse_args()

    started = time.perf_counter()
    zoo = load_zoo(args.zoo)
    manifest = json.loads((Path(args.zoo) / "manifest.json").read_text(encoding="utf-8"))
    lab = Lab(zoo.base_model, device=args.device)
    sizes = {t["name"]: int(t["eval_examples"]) for t in manifest["tasks"]}
    kinds = kinds_of(zoo)
    adapters = {kind: load_zoo_adapters(zoo, names) for kind, names in kinds.items()}
    results: dict = {"zoo": {"build_seconds": manifest.get("build_seconds"), "training": manifest.get("training"),
                             "data": manifest.get("data"), "adapters": manifest["adapters"]}}  # fmt: skip
    training = manifest.get("training", {})
    lines = [
        "# Findings on the demo zoo",
        "",
        f"Generated by `.venv/bin/python scripts/findings.py{' --quick' if args.quick else ''}"
        f"{' --replicas ' + ' '.join(Path(r).name for r in args.replicas) if args.replicas else ''}` "
        f"on {time.strftime('%Y-%m-%d')} ({platform.machine()}, {torch.get_num_threads()} threads, device "
        f"{lab.device}). Every number is an accuracy in % from a forward pass over each task's balanced "
        "evaluation set; a merged model is scored on task t with the merged body and task t's own head. "
        "± is a 95 % evaluation interval (normal approximation over the evaluation examples; see the "
        "script's docstring); in brackets: normalised accuracy (merged / single).",
        "",
        f"Zoo: {len(zoo.adapters)} adapters, built in {manifest.get('build_seconds', '–')} s "
        f"(rank {training.get('rank')}, α {training.get('alpha')}, {training.get('epochs')} epochs, "
        f"lr {training.get('lr')}, batch {training.get('batch_size')}, modules {training.get('target_modules')}, "
        f"{manifest.get('data', {}).get('train_size')} training examples per task; OSRM reads "
        f"{training.get('osrm_samples')} texts per task). Every adapter has its own training seed "
        "(recorded in the manifest) except the shared-seed pair, which starts from one seed on purpose.",
        "",
    ]

    # 1. single-task accuracy, every kind, with the base model + each standard adapter's own head
    lines += ["## Single-task accuracy", ""]
    header = ["task", "majority", "base + head"] + [kind for kind in kinds]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    singles = {}
    for kind in kinds:
        run = lab.merge_and_evaluate(adapters[kind], recipe(kinds[kind], "task_arithmetic", {}))
        singles[kind] = run.evaluation
    standard = singles.get("standard") or next(iter(singles.values()))
    for task, scores in standard.tasks.items():
        row = [task, pct(scores.majority), pct(scores.base)]
        for kind in kinds:
            s = singles[kind].tasks.get(task)
            row.append("–" if s is None else f"{pct(s.single)} ± {100 * half_width(s.single, sizes[task]):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    averages = {kind: singles[kind].average() for kind in kinds}
    lines.append(
        f"| **average** | {pct(averages[next(iter(kinds))]['majority'])} | {pct(standard.average()['base'])} | "
        + " | ".join(pct(averages[kind]["single"]) for kind in kinds)
        + " |"
    )
    lines += [
        "",
        "Kinds: " + "; ".join(f"`{kind}` = {KIND_LABEL.get(kind, kind)}" for kind in kinds) + ". "
        "Base + head: the base model's body with the standard adapter's own trained head.",
        "",
    ]
    gaps = {t: s.single - s.base for t, s in standard.tasks.items()}
    single_average = standard.average()["single"]
    lines.append(
        "Standard adapters over base + head: "
        + ", ".join(f"{t} {100 * g:+.1f} pp" for t, g in gaps.items())
        + f" (smallest {100 * min(gaps.values()):+.1f} pp). Budget check (every standard adapter ≥ 10 pp "
        f"over base + head, singles average ≥ 82 %): {'met' if min(gaps.values()) >= 0.10 else 'NOT met'}; "
        f"{'met' if single_average >= 0.82 else 'NOT met'} ({pct(single_average)} %)."
    )
    results["budget"] = {"gaps": gaps, "single_average": single_average,
                         "gap_met": min(gaps.values()) >= 0.10, "average_met": single_average >= 0.82}  # fmt: skip
    lines.append("")
    results["singles"] = {
        kind: {t: {"single": s.single, "base": s.base, "majority": s.majority} for t, s in singles[kind].tasks.items()}
        for kind in kinds
    }

    # 2. merged accuracy, methods × kinds
    lines += [
        "## Merged accuracy (all five adapters of one kind)",
        "",
        "Average merged accuracy ± 95 % evaluation interval (normalised accuracy in brackets).",
        "",
        "| method | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    merged: dict = {}
    per_task_rows = []
    combos = [(m, k) for m in METHODS for k in kinds]
    for (method, label, extra, weight), kind in tqdm(combos, desc="merges", file=sys.stderr):
        run = lab.merge_and_evaluate(adapters[kind], recipe(kinds[kind], method, extra, weight))
        merged[(label, kind)] = merged_cell(run.evaluation, sizes)
        per_task_rows.append((label, kind, run.evaluation))
    for _, label, _, _ in METHODS:
        lines.append(f"| {label} | " + " | ".join(merged[(label, kind)][0] for kind in kinds) + " |")
    lines.append("")
    results["merged"] = {label: {kind: merged[(label, kind)][1] for kind in kinds} for _, label, _, _ in METHODS}

    # Which differences from standard are larger than the evaluation noise
    if "standard" in kinds and len(kinds) > 1:
        lines += ["Differences from standard LoRA (pp; * = larger than the 95 % evaluation interval of a difference):", ""]
        lines += ["| method | " + " | ".join(k for k in kinds if k != "standard") + " |",
                  "|---|" + "---|" * (len(kinds) - 1)]  # fmt: skip
        for _, label, _, _ in METHODS:
            base = merged[(label, "standard")][1]
            cells = []
            for kind in kinds:
                if kind == "standard":
                    continue
                other = merged[(label, kind)][1]
                if set(other["per_task"]) != set(base["per_task"]):  # e.g. the shared-seed pair: other tasks
                    cells.append("–")
                    continue
                delta = other["merged"] - base["merged"]
                noise = math.sqrt(base["half_width"] ** 2 + other["half_width"] ** 2)
                cells.append(f"{100 * delta:+.1f}{' *' if abs(delta) > noise else ''}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")

    tasks = list(standard.tasks)
    lines += [
        "Per task (merged accuracy):",
        "",
        "| method | kind | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for label, kind, evaluation in per_task_rows:
        cells = [pct(evaluation.tasks[t].merged) if t in evaluation.tasks else "–" for t in tasks]
        lines.append(f"| {label} | {kind} | " + " | ".join(cells) + " |")
    lines.append("")

    if not args.quick:
        # 3. DO-Merging switches, standard vs default OSRM
        pair = [k for k in ("standard", "osrm") if k in kinds]
        lines += [
            "## DO-Merging switches (standard vs default OSRM)",
            "",
            "| method | DO-Merging | " + " | ".join(pair) + " |",
            "|---|---|" + "---|" * len(pair),
        ]
        results["do_merging"] = {}
        for index in (0, 2):
            method, label, extra, weight = METHODS[index]
            for switch, options in SWITCHES:
                cells = []
                for kind in pair:
                    run = lab.merge_and_evaluate(adapters[kind], recipe(kinds[kind], method, extra, weight, options))
                    cell, numbers = merged_cell(run.evaluation, sizes)
                    cells.append(cell)
                    results["do_merging"].setdefault(label, {}).setdefault(switch, {})[kind] = numbers
                lines.append(f"| {label} | {switch} | " + " | ".join(cells) + " |")
        lines.append("")

        # 4. λ sweep, task arithmetic
        lines += [
            "## Robustness over λ (task arithmetic, all adapters weighted λ)",
            "",
            "| kind | " + " | ".join(str(x) for x in LAMBDAS) + " |",
            "|---|" + "---|" * len(LAMBDAS),
        ]
        results["lambda_sweep"] = {}
        for kind in pair:
            grid = [[lam] * len(kinds[kind]) for lam in LAMBDAS]
            points = lab.sweep(adapters[kind], recipe(kinds[kind], "task_arithmetic", {}), grid)
            values = [result.average()["merged"] for _, result in points]
            results["lambda_sweep"][kind] = dict(zip(map(str, LAMBDAS), values))
            lines.append(f"| {kind} | " + " | ".join(pct(v) for v in values) + " |")
        lines.append("")

    # 5. headline over training seeds
    if args.replicas:
        zoos = [zoo] + [load_zoo(r) for r in args.replicas]
        with tqdm(total=len(zoos) * 2 * len(HEADLINE), desc="seeds", file=sys.stderr) as bar:
            runs = [headline_runs(lab, z, bar) for z in zoos]
        lines += [
            f"## Headline: standard vs default OSRM over {len(zoos)} training seeds",
            "",
            "Each seed is a whole zoo trained again (`zoo build --replicate N`, same data split, other "
            "training seeds). Mean ± standard deviation over seeds of the average accuracy over the five tasks.",
            "",
            "| | standard | OSRM | OSRM − standard (pp) | survives? |",
            "|---|---|---|---|---|",
        ]
        results["headline"] = {"seeds": len(zoos)}
        for label in ["single"] + [METHODS[i][1] for i in HEADLINE]:
            values = {k: [r[(k, label)] for r in runs if (k, label) in r] for k in ("standard", "osrm")}
            if not values["standard"] or not values["osrm"]:
                continue
            mean = {k: statistics.mean(v) for k, v in values.items()}
            std = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}
            delta = mean["osrm"] - mean["standard"]
            seed_se = math.sqrt(std["osrm"] ** 2 / len(values["osrm"]) + std["standard"] ** 2 / len(values["standard"]))
            per_seed = [r[("osrm", label)] - r[("standard", label)] for r in runs if ("osrm", label) in r]
            eval_noise = math.sqrt(2) * average_half_width({t: 0.8 for t in sizes}, sizes)
            survives = abs(delta) > 2 * seed_se and abs(delta) > eval_noise
            lines.append(
                f"| {label} | {pct(mean['standard'])} ± {100 * std['standard']:.1f} | {pct(mean['osrm'])} ± "
                f"{100 * std['osrm']:.1f} | {100 * delta:+.1f} | {'yes' if survives else 'no'} |"
            )
            results["headline"][label] = {"standard": values["standard"], "osrm": values["osrm"],
                                          "delta_mean": delta, "per_seed_delta": per_seed,
                                          "survives": survives}  # fmt: skip
        lines += [
            "",
            "Survives: the difference of the seed means exceeds two standard errors over seeds *and* the "
            "95 % evaluation interval of a difference at 80 % accuracy.",
            "",
        ]

    if args.quick:
        lines += ["Reduced run (`--quick`): the DO-Merging and λ tables were not computed.", ""]
    if not args.replicas:
        lines += ["No `--replicas` given: the comparison over training seeds was not run; the intervals above "
                  "cover evaluation noise only, not training-seed noise.", ""]  # fmt: skip
    total = time.perf_counter() - started
    lines.append(f"Total time: {total:.0f} s.")
    results["seconds"] = round(total, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
