"""Regenerate docs/RESULTS.md (and docs/results.json) from the shipped zoo: every number comes from a
forward pass here, or from zoo/seed_study.json (scripts/seed_study.py), itself measured by forward passes.

    .venv/bin/python scripts/findings.py [--zoo zoo] [--out docs/RESULTS.md] [--quick]

Tables (sections 1–4, the shipped zoo = training seed 0): single-task accuracy of every adapter kind
(standard, the gaussian baseline, the scale control, OSRM and its ablations) next to the base model
with each adapter's own head; merged accuracy of all five adapters of each kind under task
arithmetic (λ = 1 and 0.5), TIES and DARE-TIES, with a 95 % evaluation interval; the DO-Merging
switches for standard vs OSRM; average accuracy over λ. Section 5 reads the seed study: every
shipped training seed (zoo/seeds/N), paired differences OSRM − baseline with Student t intervals
over seeds, what predicts each task's loss, the ablations and DO-Merging's claims.

Intervals. An accuracy p on n evaluation examples gets the normal-approximation 95 % half-width
1.96·√(p(1−p)/n); an average over T tasks with independent evaluation sets 1.96·√(Σ p_t(1−p_t)/n_t)/T.
A difference between two models on the same examples is called *within noise* when it is smaller
than the half-width of the difference of two independent such averages (√2 × a single one's,
conservative: the two models are scored on the same examples). Over training seeds, a difference
*survives* when its paired 95 % Student t interval over seeds excludes 0 (merging.core.intervals).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from merging.lab.lab import Lab  # noqa: E402
from merging.recipe.codec import recipe_from_dict  # noqa: E402
from merging.training.zoo import load_zoo, load_zoo_adapters  # noqa: E402

METHODS = [
    ("task_arithmetic", "task arithmetic λ = 1", {}, 1.0),
    ("task_arithmetic", "task arithmetic λ = 0.5", {}, 0.5),
    ("ties", "TIES (density 0.5)", {"parameters": {"density": 0.5}}, 1.0),
    ("dare_ties", "DARE-TIES (density 0.5)", {"parameters": {"density": 0.5}, "seed": 0}, 1.0),
]
SWITCHES = [
    ("decouple", {"decouple": True}),
    ("orthogonalize", {"orthogonalize": True}),
    ("both", {"decouple": True, "orthogonalize": True}),
]
LAMBDAS = [0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5]
KIND_ORDER = ["standard", "gaussian", "standard-scaled", "osrm", "osrm-random", "osrm-frozen", "osrm-samples",
              "osrm-cov", "shared-seed"]
KIND_LABEL = {
    "standard": "standard LoRA (PEFT's default, Kaiming-uniform A)",
    "gaussian": "gaussian LoRA (PEFT's std 1/r: the OSRM authors' baseline)",
    "standard-scaled": "standard LoRA rescaled to OSRM's ‖A‖_F (scale control)",
    "osrm-random": "OSRM's constraint with a seeded random basis of the null space (ablation)",
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


def _pp(value) -> str:
    if value is None:
        return "–"
    return "0.0" if round(100 * value, 1) == 0 else f"{100 * value:+.1f}".replace("-", "−")


def _span(low, high) -> str:
    return "–" if low is None or high is None else f"{_pp(low)} to {_pp(high)}"


def seed_study_lines(zoo_folder: Path, results: dict) -> list[str]:
    """Section 5 from zoo/seed_study.json (scripts/seed_study.py): the headline over seeds with paired
    differences, the per-seed before/after table, the why-measures, the ablations, DO-Merging's claims."""
    from merging.analysis.seed_study import HEADLINE, StudyError, load_study
    from merging.analysis.study_story import takeaway_magnitude, takeaway_mechanism, takeaway_seeds, takeaway_why

    try:
        study = load_study(zoo_folder)
    except StudyError as err:
        return ["## 5. Over training seeds", "", f"Not available: {err}.", ""]
    summary = study["summary"]
    results["seed_study"] = {"created": study.get("created"), "summary": {k: v for k, v in summary.items() if k != "why"}}
    columns = [("single", "alone")] + [(key, label) for key, label, *_ in HEADLINE]
    seeds = summary["seeds"]
    lines = [f"## 5. Over {seeds} training seeds (zoo/ and zoo/seeds/N)", "",
             f"From `zoo/seed_study.json` (`scripts/seed_study.py`, {study.get('created')}, {study.get('seconds')} s). "
             "Each seed is a whole zoo trained again with other seeds on the same data split. Mean over seeds of the "
             "five-task average accuracy, with the 95 % Student t interval over seeds.", "",
             "| kind | " + " | ".join(label for _, label in columns) + " |", "|---|" + "---|" * len(columns)]  # fmt: skip
    for kind, values in summary["kinds"].items():
        cells = [f"{pct(v['mean'])} ({pct(v['low'])}–{pct(v['high'])})" if (v := values.get(c)) else "–" for c, _ in columns]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (same seed, same data), OSRM minus each baseline, pp with the 95 % interval over "
              "seeds; **survives** = the interval excludes 0:", "",
              "| comparison | " + " | ".join(label for _, label in columns) + " |", "|---|" + "---|" * len(columns)]  # fmt: skip
    for baseline in ("standard", "gaussian"):
        cells = []
        for column, _ in columns:
            d = summary["differences"].get(f"osrm-{baseline}:{column}")
            cells.append("–" if d is None else f"{_pp(d['mean'])} ({_span(d['low'], d['high'])}){' **survives**' if d['survives'] else ''}")
        lines.append(f"| OSRM − {baseline} | " + " | ".join(cells) + " |")
    lines += ["", takeaway_seeds(summary), ""]
    # before/after per seed (item 8)
    lines += ["Per seed (five-task average; singles / task arithmetic λ = 1 / λ = 0.5 / TIES):", "",
              "| seed zoo | " + " | ".join(summary["kinds"]) + " |", "|---|" + "---|" * len(summary["kinds"])]  # fmt: skip
    for seed in study["per_seed"]:
        cells = []
        for kind in summary["kinds"]:
            record = seed["kinds"].get(kind)
            if record is None:
                cells.append("–")
                continue
            single = sum(record["single"].values()) / len(record["single"])
            merged = [sum(record["merged"][c].values()) / len(record["merged"][c]) for c, _ in columns[1:]]
            cells.append(" / ".join(pct(v) for v in [single, *merged]))
        lines.append(f"| {Path(seed['folder']).name if Path(seed['folder']).parent.name == 'seeds' else 'zoo (seed 0)'} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", "### Why do tasks lose accuracy in a merge?", "", takeaway_why(summary), ""]
    lines += ["### Where OSRM's effect comes from (ablations, seed 0)", "",
              "| kind | energy share at init | after training | overlap at init | after training |", "|---|---|---|---|---|"]
    for kind, values in (study.get("ablations") or {}).get("kinds", {}).items():
        lines.append(f"| {kind} | " + " | ".join(
            pct(values[k]) + " %" if values.get(k) is not None else "–"
            for k in ("energy_share_init", "energy_share_trained", "overlap_init", "overlap_trained")) + " |")  # fmt: skip
    reference = (study.get("ablations") or {}).get("random_reference")
    if reference:
        lines += ["", f"A random {round(reference * 384)}-dimensional subspace of the 384 input dimensions: {pct(reference)} % on both measures."]
    lines += ["", takeaway_mechanism(study.get("ablations") or {}), ""]
    lines += ["### DO-Merging's claims on this zoo", "", takeaway_magnitude(study.get("full_finetune"),
                                                                            summary.get("magnitude_variance") or {}), ""]  # fmt: skip
    full = study.get("full_finetune")
    if full:
        lines += ["Full fine-tuning (weights not kept; `scripts/full_finetune.py`, "
                  f"{full['full_finetune_settings']['epochs']} epochs, lr {full['full_finetune_settings']['lr']}): accuracy "
                  + ", ".join(f"{t} {pct(v)} %" for t, v in full["full_finetune_accuracy"].items()) + ".", ""]  # fmt: skip
    return lines


def rewrite_seed_section(zoo_folder: Path, out: Path, json_path: Path) -> int:
    """Replace section 5 of an existing RESULTS.md (sections 1–4 measured earlier on the same zoo)."""
    text = out.read_text(encoding="utf-8")
    marker = "\n## 5. "
    start = text.find(marker)
    end = text.find("\nTotal time:")
    if start < 0 or end < 0:
        print(f"{out}: no section 5 to replace; run findings.py without --seeds-only", file=sys.stderr)
        return 2
    results = json.loads(json_path.read_text(encoding="utf-8")) if json_path.is_file() else {}
    lines = seed_study_lines(zoo_folder, results)
    out.write_text(text[: start + 1] + "\n".join(lines) + "\n" + text[end:], encoding="utf-8")
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(ROOT / "zoo"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    parser.add_argument("--json", default=str(ROOT / "docs" / "results.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="skip the DO-Merging and λ tables")
    parser.add_argument("--seeds-only", action="store_true",
                        help="rewrite only section 5 (the seed study) of an existing --out; sections 1–4 are kept")
    args = parser.parse_args()
    if args.seeds_only:
        return rewrite_seed_section(Path(args.zoo), Path(args.out), Path(args.json))

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
        f"Generated by `.venv/bin/python scripts/findings.py{' --quick' if args.quick else ''}` "
        f"on {time.strftime('%Y-%m-%d')} ({platform.machine()}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}, device "
        f"{lab.device}). Every number is an accuracy in % from a forward pass over each task's balanced "
        "evaluation set; a merged model is scored on task t with the merged body and task t's own head. "
        "± is a 95 % evaluation interval (normal approximation over the evaluation examples; see the "
        "script's docstring); in brackets: normalised accuracy (merged / single).",
        "",
        f"Zoo: {len(zoo.adapters)} adapters, built in {manifest.get('build_seconds', '–')} s "
        f"(rank {training.get('rank')}, α {training.get('alpha')}, {training.get('epochs')} epochs, "
        f"lr {training.get('lr')}, batch {training.get('batch_size')}, modules {training.get('target_modules')}, "
        f"{manifest.get('data', {}).get('train_size')} training examples per task; OSRM reads "
        f"{training.get('osrm_samples')} texts per task; warm-up {training.get('warmup_ratio')}, gradient clipping "
        f"{training.get('max_grad_norm')}, best epoch on a dev split of {training.get('dev_size')} training examples). "
        "Every adapter has its own training seed (recorded in the manifest). Sections 1–4 are one training seed "
        "(the shipped zoo; their ± is evaluation noise only); section 5 is every shipped seed.",
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

    # 5. over training seeds, ablations, DO-Merging's claims: the stored seed study
    lines += seed_study_lines(Path(args.zoo), results)

    if args.quick:
        lines += ["Reduced run (`--quick`): the DO-Merging and λ tables were not computed.", ""]
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
