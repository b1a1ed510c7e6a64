"""The talk tour as data: the story of merging LoRA adapters, one step per click, told by the zoo.

single adapters → a naive merge (what is lost, where) → the interference that explains it
(subspace overlap, sign conflicts) → each fix (TIES, DARE-TIES, DO-Merging's two switches, each OSRM
variant the zoo holds, OSRM post-hoc), each with its gain *and* its cost → all merges side by side.

A step is data: a title, the Recipe it shows (its share link opens it in Merge), the measurements
it needs, which chart draws it and which narrative function (merging/analysis/narrative.py) writes its
takeaway. Measurements are keyed and shared between steps — the naive merge is measured once and is
the reference of every fix — and each is either a merge + evaluation through the Lab
(merging/lab/lab.py) or the factor metrics of a set of adapters (merging/analysis/metrics.py). Nothing in a
step's sentence is typed by hand: rebuild the zoo and the tour says what the new zoo shows.

`eval_limit` scores each task on its first N evaluation examples only (a quick walk in tests, on a
Lab of its own so the shared one keeps its full sets); the intervals widen to say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from merging.adapters.lora import Adapter, load_adapter
from merging.analysis import narrative
from merging.analysis.metrics import adapter_metrics
from merging.analysis.seed_study import STUDY_FILE, StudyError, best_predictor, load_study
from merging.core.progress import Progress
from merging.evaluation.evaluate import EvalSet
from merging.lab.catalog import merge_inputs, results_key
from merging.lab.lab import eval_set_for
from merging.methods.do_merging import DoMergingOptions
from merging.plots import study as figures
from merging.plots.tour import gain_and_cost, merge_summary
from merging.recipe.codec import AdapterRef, Recipe
from merging.store.measure_cache import MeasureCache
from merging.training.zoo import Zoo, ZooAdapter

STANDARD = "standard"
NAIVE = "merge:task_arithmetic"
FACTORS = "metrics:standard"
STUDY = "study:seeds"


@dataclass(frozen=True)
class Measurement:
    """One thing to measure: a merge + evaluation of `recipe`, the factor metrics of its adapters,
    or (``study``) the zoo's stored seed study (merging.analysis.seed_study, read from `source`)."""

    key: str
    kind: str  # "merge", "metrics" or "study"
    recipe: Recipe
    label: str
    source: str = ""  # the zoo folder, for a "study" measurement


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    chart: str  # which figure draws it (figure_for)
    takeaway: str  # which sentence tells it (takeaway_for)
    needs: tuple[str, ...]  # measurement keys, the step's own first
    recipe: Recipe  # what "Open in Merge" opens
    label: str = ""  # how the sentence names the step's merge
    reference: str | None = None  # measurement key it is compared with
    options: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Tour:
    steps: tuple[Step, ...]
    measurements: dict[str, Measurement] = field(hash=False)

    def needs(self, index: int) -> list[Measurement]:
        return [self.measurements[key] for key in self.steps[index].needs]


# ----------------------------------------------------------------------------------------------
# The steps


def _recipe(adapters: Sequence[ZooAdapter], method: str = "task_arithmetic", parameters: Mapping | None = None,
            osrm: str = "off", do: DoMergingOptions | None = None, base_model: str | None = None) -> Recipe:
    return Recipe(
        adapters=tuple(AdapterRef(path=str(a.path), weight=1.0, name=a.name) for a in adapters),
        method=method,
        parameters=dict(parameters or {}),
        osrm=osrm,
        base_model=base_model,
        do_merging=do or DoMergingOptions(),
    )


# (key, label, method, parameters, DO-Merging options): the fixes measured on the standard adapters
FIXES: tuple[tuple[str, str, str, dict, DoMergingOptions], ...] = (
    ("ties", "TIES (density 0.5)", "ties", {"density": 0.5}, DoMergingOptions()),
    ("dare_ties", "DARE-TIES (density 0.5)", "dare_ties", {"density": 0.5}, DoMergingOptions()),
    ("decouple", "DO-Merging's decouple switch", "task_arithmetic", {}, DoMergingOptions(decouple=True)),
    ("orthogonalize", "DO-Merging's orthogonalize switch", "task_arithmetic", {}, DoMergingOptions(orthogonalize=True)),
)


VARIANT_LABELS = {
    "osrm": "OSRM",
    "osrm-samples": "OSRM (per-sample rows)",
    "osrm-cov": "OSRM (covariance)",
    "osrm-frozen": "OSRM (A frozen)",
}


def variant_label(init: str) -> str:
    """How the tour names an OSRM variant of the zoo (an unknown "osrm-x" → "OSRM (x)")."""
    if init in VARIANT_LABELS:
        return VARIANT_LABELS[init]
    rest = init[len("osrm"):].strip("-_") if init.startswith("osrm") else init
    return f"OSRM ({rest.replace('-', ' ')})"


def is_osrm_variant(init: str) -> bool:
    """The zoo's OSRM kinds are fixes of the tour; other kinds (e.g. the labelled shared-seed pair) are not."""
    return init.startswith("osrm")


def tour_steps(zoo: Zoo) -> Tour:
    """The tour over a zoo: its standard adapters, one per task, and each OSRM variant that covers
    every one of their tasks as a step of its own."""
    standard = [a for a in zoo.adapters if a.init == STANDARD]
    if len({a.task for a in standard}) < 2:
        raise ValueError(f"the zoo in {zoo.folder} has fewer than two standard adapters: there is nothing to merge")
    base = zoo.base_model
    measurements: dict[str, Measurement] = {}

    def measure(key: str, kind: str, recipe: Recipe, label: str) -> str:
        measurements[key] = Measurement(key, kind, recipe, label)
        return key

    naive_recipe = _recipe(standard, base_model=base)
    measure(NAIVE, "merge", naive_recipe, "Task arithmetic (λ = 1)")
    measure(FACTORS, "metrics", naive_recipe, "standard adapters' factors")
    steps = [
        Step("singles", "1 · Each adapter alone", "singles", "singles", (NAIVE,), naive_recipe),
        Step("naive", "2 · Merge them: task arithmetic", "accuracy", "naive", (NAIVE,), naive_recipe,
             label="Task arithmetic (λ = 1)"),
        Step("overlap", "3 · Why? Do they read the same input directions?", "overlap", "overlap", (FACTORS,), naive_recipe),
        Step("signs", "4 · Why? Do they push weights in opposite directions?", "signs", "signs", (FACTORS,), naive_recipe),
    ]
    has_study = (Path(zoo.folder) / STUDY_FILE).is_file()
    if has_study:
        measure(STUDY, "study", naive_recipe, "the seed study")
        measurements[STUDY] = replace(measurements[STUDY], source=str(zoo.folder))
        steps.append(Step("why", f"{len(steps) + 1} · Why? What predicts each task's loss", "why", "why", (STUDY,),
                          naive_recipe))
    for key, label, method, parameters, do in FIXES:
        recipe = _recipe(standard, method, parameters, do=do, base_model=base)
        measure(f"merge:{key}", "merge", recipe, label)
        steps.append(Step(key, f"{len(steps) + 1} · Fix: {label}", "change", "fix", (f"merge:{key}", NAIVE), recipe,
                          label=label, reference=NAIVE))
    for init in [i for i in zoo.inits if is_osrm_variant(i)]:
        variant = [zoo.twin(a, init) for a in standard]
        if any(v is None for v in variant):
            continue  # a variant that lacks some task cannot be compared task by task
        label = variant_label(init)
        recipe = _recipe(variant, base_model=base)
        measure(f"merge:{init}", "merge", recipe, f"{label} adapters + task arithmetic")
        steps.append(Step(init, f"{len(steps) + 1} · Fix: {label} adapters", "variant", "variant",
                          (f"merge:{init}", NAIVE), recipe, label=f"{label} training",
                          reference=NAIVE))
    posthoc = _recipe(standard, osrm="posthoc", base_model=base)
    measure("merge:posthoc", "merge", posthoc, "OSRM post-hoc projection + task arithmetic")
    steps.append(Step("posthoc", f"{len(steps) + 1} · Fix: OSRM after training (post-hoc projection)", "variant",
                      "variant", ("merge:posthoc", NAIVE), posthoc,
                      label="Projecting the trained adapters onto OSRM's subspace", reference=NAIVE))
    if has_study:
        osrm_recipe = next((m.recipe for k, m in measurements.items() if k == "merge:osrm"), naive_recipe)
        steps.append(Step("seeds", f"{len(steps) + 1} · OSRM over every training seed", "seeds", "seeds", (STUDY,),
                          osrm_recipe))
        steps.append(Step("mechanism", f"{len(steps) + 1} · Where OSRM's effect comes from", "mechanism", "mechanism",
                          (STUDY,), osrm_recipe))
    merges = tuple(k for k, m in measurements.items() if m.kind == "merge")
    steps.append(Step("summary", f"{len(steps) + 1} · All merges side by side", "summary", "summary", merges,
                      naive_recipe))
    return Tour(tuple(steps), measurements)


# ----------------------------------------------------------------------------------------------
# Measuring


def limit_eval_sets(lab, adapters: Sequence[Adapter], eval_limit: int | None) -> None:
    """Give the lab each task's first `eval_limit` evaluation examples (before Lab.prepare adds the full set)."""
    if eval_limit is None:
        return

    for adapter in adapters:
        if adapter.task and adapter.task not in lab.evaluator.eval_sets:
            full = eval_set_for(adapter)
            lab.evaluator.add_eval_set(EvalSet(full.name, full.labels, full.texts[:eval_limit], full.targets[:eval_limit]))


def _with_sizes(results: dict, lab) -> dict:
    """Each task row gains `n`, the number of examples its accuracies were measured on."""
    for task, scores in results["tasks"].items():
        scores["n"] = len(lab.evaluator.eval_sets[task].targets)
    return results


def measure_merge(recipe: Recipe, lab, load: Callable[[Any, str], Adapter] | None = None,
                  progress: Progress | None = None, eval_limit: int | None = None) -> dict:
    """Merge and evaluate one recipe: the evaluation JSON (task rows with `n`), the merge summary
    and the seconds the merge itself took."""
    inputs = merge_inputs(recipe, lambda _base: lab, load or (lambda path, name: load_adapter(path, name=name)))
    limit_eval_sets(lab, inputs.adapters, eval_limit)
    run = lab.merge_and_evaluate(inputs.adapters, recipe, progress)
    results = _with_sizes(run.results(), lab)
    results["osrm"] = {"mode": recipe.osrm, "twins": inputs.twins, "posthoc": inputs.posthoc}
    return results


def measure_factors(recipe: Recipe, load: Callable[[Any, str], Adapter] | None = None,
                    progress: Progress | None = None) -> dict:
    """adapter_metrics of the recipe's adapters, with their rank and input dimension (for the
    overlap of independent subspaces)."""

    loader = load or (lambda path, name: load_adapter(path, name=name))
    adapters = [loader(ref.path, ref.display_name) for ref in recipe.adapters]
    result = adapter_metrics(adapters, device="cpu", progress=progress)
    first = next(iter(adapters[0].modules.values()))
    result["rank"] = int(first.A.shape[0])
    result["dimension"] = int(first.A.shape[1])
    return result


def measure(measurement: Measurement, lab, load=None, progress: Progress | None = None,
            eval_limit: int | None = None) -> dict:
    start = time.perf_counter()
    if measurement.kind == "study":
        value = read_study(measurement.source)
    elif measurement.kind == "merge":
        value = measure_merge(measurement.recipe, lab, load, progress, eval_limit)
    else:
        value = measure_factors(measurement.recipe, load, progress)
    value["measured_seconds"] = round(time.perf_counter() - start, 3)
    return value


def read_study(zoo_folder: str) -> dict:
    """The parts of the zoo's seed study the tour shows, or {"error": why} when it is missing or stale."""

    try:
        study = load_study(zoo_folder)
    except StudyError as err:
        return {"error": str(err)}
    return {"summary": study["summary"], "ablations": study.get("ablations") or {},
            "full_finetune": study.get("full_finetune"), "created": study.get("created")}  # fmt: skip


def cache_key(measurement: Measurement, eval_limit: int | None) -> str:

    return results_key(measurement.recipe, kind=measurement.kind, eval_limit=eval_limit)


DISK_KIND = "tour"  # the tour's folder in the workspace's measure cache (merging.store.measure_cache)


def disk_key(measurement: Measurement, eval_limit: int | None) -> str:
    """The measurement's key on disk: its recipe and adapter versions (cache_key), the base model's
    version and the measuring code's (merging.store.measure_cache)."""

    return MeasureCache.key(DISK_KIND, measurement.recipe.base_model or "", recipe=cache_key(measurement, eval_limit))


def stored(measurement: Measurement, cache, eval_limit: int | None) -> dict | None:
    """The measurement's value from a MeasureCache (None when absent or stale, or without a cache)."""
    if cache is None or measurement.kind == "study":  # a study is read from the zoo, fresh every time
        return None
    return cache.get(DISK_KIND, disk_key(measurement, eval_limit))


def measure_and_store(measurement: Measurement, lab, cache, load=None, progress: Progress | None = None,
                      eval_limit: int | None = None) -> dict:
    """`measure`, then keep the value in the cache (a MeasureCache, or None for memory only).

    The value is passed through JSON before it is returned, so a value measured now and one read
    back after a restart are the same data."""
    import json

    value = json.loads(json.dumps(measure(measurement, lab, load, progress, eval_limit)))
    if cache is not None and measurement.kind != "study":
        cache.put(DISK_KIND, disk_key(measurement, eval_limit), value)
    return value


def measure_tour(tour: Tour, lab, cache, load=None, progress: Progress | None = None,
                 eval_limit: int | None = None, measured: dict | None = None) -> dict[str, dict]:
    """Every measurement of the tour, each read from the cache or measured and stored (the server's
    warm-up: a tour ready before the talk). `measured`, when given, is filled as values arrive
    (by cache_key), so a page can show each step as soon as its numbers exist."""
    values: dict[str, dict] = {}
    todo = list(tour.measurements.values())
    for number, measurement in enumerate(todo):
        value = stored(measurement, cache, eval_limit)
        if value is None:
            def report(done, total, what, number=number, measurement=measurement):
                if progress is not None:
                    share = (number + (done / total if total else 1.0)) / len(todo)
                    progress(int(1000 * share), 1000, f"{measurement.label}: {what}")

            value = measure_and_store(measurement, lab, cache, load, report, eval_limit)
        values[measurement.key] = value
        if measured is not None:
            measured[cache_key(measurement, eval_limit)] = value
    if progress is not None:
        progress(1000, 1000, "done")
    return values


# ----------------------------------------------------------------------------------------------
# What a step shows: its chart's data and its sentence


def singles_only(results: Mapping) -> dict:
    """The results with the merged scores blanked: the singles step shows base and single only."""
    tasks = {t: {**s, "merged": None, "normalized": None} for t, s in results["tasks"].items()}
    return {**results, "tasks": tasks, "average": {**results["average"], "merged": None, "normalized": None}}


def mean_matrix(matrices: Sequence[Sequence[Sequence[float | None]]]) -> list[list[float | None]]:
    """Entry-wise mean of equally sized matrices (None entries left out)."""
    size = len(matrices[0])
    mean = []
    for i in range(size):
        row = []
        for j in range(size):
            values = [m[i][j] for m in matrices if m[i][j] is not None]
            row.append(sum(values) / len(values) if values else None)
        mean.append(row)
    return mean


def overlap_of(factors: Mapping) -> list[list[float | None]]:
    """Input-subspace overlap averaged over the transformer blocks."""
    return mean_matrix([layer["input_overlap"] for layer in factors["layers"].values()])


def sign_conflicts_of(factors: Mapping) -> dict[str, float | None]:
    return {layer: values["sign_conflict_rate"] for layer, values in factors["layers"].items()}


def short_name(name: str) -> str:
    """A zoo adapter's task for chart labels ("sms_spam-standard" → "sms_spam")."""
    return name.rsplit("-", 1)[0] if "-" in name else name


def takeaway(step: Step, measured: Mapping[str, dict], tour: Tour) -> str:
    """The step's one-sentence takeaway, from the measured numbers alone."""
    own = measured[step.needs[0]]
    if step.takeaway in STUDY_STEPS:
        return _study_text(step, own, headline=False)
    if step.takeaway == "singles":
        return narrative.takeaway_singles(own)
    if step.takeaway == "naive":
        return narrative.takeaway_naive_merge(own, step.label)
    if step.takeaway == "overlap":
        names = [short_name(n) for n in own["adapters"]]
        return narrative.takeaway_overlap(overlap_of(own), names, "Averaged over the layers", own["rank"], own["dimension"])
    if step.takeaway == "signs":
        return narrative.takeaway_sign_conflicts(sign_conflicts_of(own), len(own["adapters"]), own.get("density", 1.0))
    reference = measured[step.reference] if step.reference else None
    if step.takeaway == "fix":
        return narrative.takeaway_fix(step.label, "plain task arithmetic", reference, own,
                                      reference["merge"]["seconds"], own["merge"]["seconds"])
    if step.takeaway == "variant":
        return narrative.takeaway_variant(step.label, reference, own)
    if step.takeaway == "summary":
        return narrative.takeaway_summary([(tour.measurements[k].label, measured[k]) for k in step.needs])
    raise ValueError(f"step {step.key}: unknown takeaway '{step.takeaway}'")


STUDY_STEPS = ("why", "seeds", "mechanism")


def _study_text(step: Step, study: Mapping, headline: bool) -> str:
    """A study step's headline or notes (merging.analysis.study_story), or why the study cannot be shown."""
    from merging.analysis import study_story

    if "error" in study:
        return "The seed study is not available" if headline else study["error"]
    if step.takeaway == "why":
        return (study_story.headline_why if headline else study_story.takeaway_why)(study["summary"])
    if step.takeaway == "seeds":
        return (study_story.headline_seeds if headline else study_story.takeaway_seeds)(study["summary"])
    return (study_story.headline_mechanism if headline else study_story.takeaway_mechanism)(study["ablations"])


def short_label(tour: Tour, key: str) -> str:
    """A measurement's label without the merge method it shares with the others ("OSRM adapters")."""
    return tour.measurements[key].label.split(" + ")[0]


def headline(step: Step, measured: Mapping[str, dict], tour: Tour) -> str:
    """The step's headline (merging.analysis.headlines: at most 15 words); `takeaway` is its speaker's notes."""
    from merging.analysis import headlines

    own = measured[step.needs[0]]
    if step.takeaway in STUDY_STEPS:
        return _study_text(step, own, headline=True)
    if step.takeaway == "singles":
        return headlines.singles(own)
    if step.takeaway == "naive":
        return headlines.naive(own, step.label)
    if step.takeaway == "overlap":
        return headlines.overlap_headline(overlap_of(own), own["rank"], own["dimension"])
    if step.takeaway == "signs":
        return headlines.signs(sign_conflicts_of(own), len(own["adapters"]))
    reference = measured[step.reference] if step.reference else None
    if step.takeaway == "fix":
        return headlines.fix(step.label.split(" (")[0], reference, own)
    if step.takeaway == "variant":
        return headlines.variant(short_label(tour, step.needs[0]), reference, own)
    if step.takeaway == "summary":
        return headlines.summary([(short_label(tour, k), measured[k]) for k in step.needs])
    raise ValueError(f"step {step.key}: unknown takeaway '{step.takeaway}'")


def summary_rows(step: Step, measured: Mapping[str, dict], tour: Tour) -> list[dict]:
    """One row per merge: its label, average merged and single accuracy with 95 % intervals."""
    rows = []
    for key in step.needs:
        results = measured[key]
        rows.append({
            "label": short_label(tour, key),
            "merged": narrative.average(results, "merged"),
            "merged_interval": narrative.average_interval(results, "merged"),
            "single": narrative.average(results, "single"),
            "single_interval": narrative.average_interval(results, "single"),
        })
    return rows



def figure(step: Step, measured: Mapping[str, dict], tour: Tour, presentation: bool = False):
    """The step's chart (merging.plots) and the figure name whose how-to-read line captions it."""
    from merging import plots

    own = measured[step.needs[0]]
    if step.chart in STUDY_STEPS:
        return study_figure(step, own, presentation)
    if step.chart == "singles":
        return plots.accuracy_bars(singles_only(own), title="Alone vs base body + head",
                                   presentation=presentation), "accuracy_bars"
    if step.chart == "accuracy":
        return plots.accuracy_bars(own, title="Merged vs alone", presentation=presentation), "accuracy_bars"
    if step.chart == "overlap":
        names = [short_name(n) for n in own["adapters"]]
        return plots.overlap_heatmap(overlap_of(own), names, title="Input overlap (layer mean)",
                                     presentation=presentation), "overlap_heatmap"
    if step.chart == "signs":
        from merging.analysis.metrics import chance_sign_conflict_rate

        count = len(own["adapters"])
        chance = chance_sign_conflict_rate(count, own.get("density", 1.0))
        return plots.sign_conflicts_by_layer(sign_conflicts_of(own), chance=chance, adapters=count,
                                             title="Sign conflicts per layer", presentation=presentation), \
            "sign_conflicts_by_layer"
    reference = measured[step.reference] if step.reference else None
    if step.chart == "change":
        # short titles: the headline names the fix; a two-line title ran into the y axis' title
        return plots.accuracy_delta(own, reference, title="Change vs task arithmetic",
                                    presentation=presentation), "accuracy_delta"
    if step.chart == "variant":
        return gain_and_cost(own, reference, title="Change vs the standard adapters",
                             presentation=presentation), "gain_and_cost"
    if step.chart == "summary":
        return merge_summary(summary_rows(step, measured, tour), presentation=presentation), "merge_summary"
    raise ValueError(f"step {step.key}: unknown chart '{step.chart}'")


def study_figure(step: Step, study: Mapping, presentation: bool = False):
    """The chart of a study step (merging.plots.study) and its figure name."""

    if "error" in study:
        return figures.seed_differences({}, title="Seed study not available", presentation=presentation), "seed_differences"
    summary = study["summary"]
    if step.chart == "why":
        best = best_predictor(summary)
        measure = best[0] if best else "feature_shift"
        return figures.why_scatter(summary["why"]["points"], measure, summary["why"].get(measure),
                                   title="Loss against the best measure" if best else "No measure predicts the loss",
                                   presentation=presentation, log_x=measure == "feature_shift"), "why_scatter"  # fmt: skip
    if step.chart == "seeds":
        return figures.seed_differences(summary["differences"], title="OSRM minus each baseline",
                                        presentation=presentation), "seed_differences"  # fmt: skip
    return figures.osrm_mechanism(study["ablations"], title="What OSRM's A reads", presentation=presentation), "osrm_mechanism"
