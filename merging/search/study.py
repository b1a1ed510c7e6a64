"""Find the coefficients: an Optuna study over per-adapter λ (and optionally any parameter the method registry marks searchable: density, gamma, epsilon, …),
each trial one merge + one evaluation, run in-process or spread over Ray actors.

Why a search: with five adapters and a density the space is too big for a grid, and each point
costs a full evaluation. LoraHub showed that a gradient-free search over per-adapter weights
recovers most of the multi-task accuracy; TPE (the default) and CMA-ES are Optuna's two samplers
that suit a few-dozen-trial budget over a handful of continuous parameters.

Honest objective. Trials are scored on a *dev* set the final report never scores
(merging.search.split): the recipe's `dev` file for a task, else a seeded sample of at most half
the rows of its evaluation file (the report scores the other rows), else — a demo task without an
evaluation file — a class-stratified, seeded sample of the examples the adapter was trained on
(`carve_dev_split`; the evaluation split is disjoint from training by construction). Objectives
are scores to maximise, or a causal task's completion `loss` to minimise (`direction`). The final report re-scores the best recipe on the
evaluation split with a 95 % bootstrap interval, beside uniform λ = 1 and the best shared λ from a
sweep (that λ is also chosen on dev). Dev accuracies flatter every single adapter (it saw those
examples), which is why they choose coefficients and are never shown as results.

Backends. In-process by default: one scorer, trials one after another, no Ray import at all.
With Ray, each worker is an actor that loads the base model once (a Lab of its own) and scores
many trials; the loop is Optuna's ask/tell with one Ray future per busy worker. A trial whose
actor dies is resubmitted to a fresh actor (at most `max_retries` times), so the search goes on.
Every finished trial goes to the run store at once: a crash loses only the trials in flight.
The Ray pieces live in merging/search/ray_backend.py, imported only when a search asks for Ray.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from merging.adapters.lora import Adapter
from merging.core.intervals import bootstrap_interval
from merging.core.progress import Progress
from merging.evaluation.evaluate import EvalSet, EvaluationResult, Evaluator
from merging.lab.catalog import merge_inputs, resolve_base_model, resolve_inputs
from merging.lab.lab import Lab, tasked
from merging.methods import REGISTRY, get_method
from merging.recipe.codec import Recipe
from merging.search.split import DEFAULT_DEV_SIZE, plan_splits, split_sets
from merging.search.trials import (
    INSTALL_HINT,
    MAX_RETRIES,
    PACKAGE_DIR,
    Scorer,
    SearchError,
    TrialOutcome,
    require_optuna,
    score_trial,
)
from merging.store.stored_runs import record_run
from merging.tasks.completions import file_format

OBJECTIVES = ("average", "normalized", "worst_task", "loss")
MINIMIZED = ("loss",)  # lower is better; every other objective is maximised
OBJECTIVE_MEANINGS = {
    "average": "mean merged score over tasks (accuracy, or exact match for causal tasks); higher is better",
    "normalized": "mean of merged / single-adapter score over tasks; higher is better",
    "worst_task": "the smallest merged / single-adapter score ratio (the task that lost most); higher is better",
    "loss": "mean merged completion loss over causal tasks (nats per token); lower is better",
}
SAMPLERS = ("tpe", "cmaes")
SEARCHABLE = ("weights",)  # always; besides it, each method's parameters the registry marks searchable
DEFAULT_WEIGHT_BOUNDS = (0.0, 1.5)
DEFAULT_DENSITY_BOUNDS = (0.1, 1.0)
SHARED_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def missing_packages() -> list[str]:
    """The optional packages of the search that are not installed (for the page and the CLI)."""
    import importlib.util

    return [name for name in ("optuna", "ray") if importlib.util.find_spec(name) is None]


# ----------------------------------------------------------------------------------------------
# The one place a trial's parameters become a Recipe, and a Recipe becomes a Merge-page link


def trial_recipe(base: Recipe, params: Mapping[str, float]) -> Recipe:
    """The recipe a trial scores: `base` with `weights.<adapter name>` and the method's searched
    parameters (density, gamma, epsilon, fraction, …: any key that is not a weight) from `params`.

    Parameters the trial does not set keep the base recipe's values. A trial whose values break a
    rule across the method's parameters raises (RecipeError/MethodError), as the Recipe refuses it.
    """

    weights = [float(params.get(f"weights.{ref.display_name}", ref.weight)) for ref in base.adapters]
    recipe = base.with_weights(weights)
    method = get_method(base.method)
    tuned = {
        key: int(value) if method.param(key).kind == "int" else float(value)
        for key, value in params.items()
        if not key.startswith("weights.") and method.has_param(key)
    }
    if tuned:
        recipe = replace(recipe, parameters={**recipe.parameters, **tuned})
    return recipe


def trial_refusal(base: Recipe, params: Mapping[str, float]) -> str | None:
    """Why the recipe of these trial values is not valid (a rule across parameters), or None."""
    try:
        trial_recipe(base, params)
    except ValueError as err:
        return str(err)
    return None


def merge_link(recipe: Recipe) -> str:
    """The query string that opens a recipe on the Merge page."""
    return "?recipe=" + quote(recipe.to_url())


def searchable_parameters(recipe: Recipe) -> tuple[str, ...]:
    """What a search may vary for this recipe's method: the weights always, and the parameters the
    registry marks searchable (density, gamma, epsilon, TSV's fraction, …)."""

    return ("weights", *(p.name for p in get_method(recipe.method).searchable))


# ----------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class SearchSpace:
    """Per-adapter λ within `weight_bounds` (when `weights` is searched) and each searched method
    parameter within its bounds (`param_bounds`: name -> (low, high); `int_params` are drawn as
    whole numbers). `start` is the first trial: the base recipe's values. `refusal(params)`: why a
    trial's values make no valid recipe (a rule across parameters), told as a failed trial."""

    names: tuple[str, ...]
    weight_bounds: tuple[float, float] | None = DEFAULT_WEIGHT_BOUNDS
    param_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    start: Mapping[str, float] = field(default_factory=dict)
    int_params: tuple[str, ...] = ()
    refusal: Callable[[Mapping[str, float]], str | None] | None = field(default=None, compare=False)

    @property
    def density_bounds(self) -> tuple[float, float] | None:  # the earlier name, still read
        return self.param_bounds.get("density")

    def suggest(self, trial) -> dict[str, float]:
        params: dict[str, float] = {}
        if self.weight_bounds is not None:
            low, high = self.weight_bounds
            for name in self.names:
                params[f"weights.{name}"] = trial.suggest_float(f"weights.{name}", low, high)
        for name, (low, high) in self.param_bounds.items():
            if name in self.int_params:
                params[name] = trial.suggest_int(name, int(low), int(high))
            else:
                params[name] = trial.suggest_float(name, low, high)
        return params


def _bounds(value: Sequence[float], what: str, floor: float | None = None, ceiling: float | None = None):
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise SearchError(f"{what}: expected two numbers LOW,HIGH, got {value!r}") from err
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SearchError(f"{what}: expected finite LOW < HIGH, got {low:g},{high:g}")
    if (floor is not None and low < floor) or (ceiling is not None and high > ceiling):
        raise SearchError(f"{what}: must lie within [{floor:g}, {ceiling:g}], got {low:g},{high:g}")
    return low, high


def space_for(
    recipe: Recipe,
    params: Sequence[str] = ("weights",),
    weight_bounds: Sequence[float] = DEFAULT_WEIGHT_BOUNDS,
    density_bounds: Sequence[float] | None = None,
    param_bounds: Mapping[str, Sequence[float]] | None = None,
) -> SearchSpace:
    """The space a search explores for `recipe`; names what is wrong with `params` or the bounds.

    `params`: "weights" and/or any parameter the registry marks searchable for the recipe's method.
    Each parameter's bounds: `param_bounds[name]` (CLI: --param-bounds NAME=LOW,HIGH), for density
    also `density_bounds` (--density-bounds), else the registry's search bounds.
    """

    method = get_method(recipe.method)
    params = tuple(dict.fromkeys(params))
    allowed = searchable_parameters(recipe)
    anywhere = {p.name for m in REGISTRY.values() for p in m.searchable}
    unknown = [p for p in params if p not in allowed and p not in anywhere]
    if unknown or not params:
        raise SearchError(f"--params: {', '.join(unknown) or 'nothing'} is not searchable (allowed for "
                          f"{recipe.method}: {', '.join(allowed)})")
    for name in params:
        if name not in allowed:
            what = "no" if not method.has_param(name) else "a fixed"
            raise SearchError(f"--params {name}: method '{recipe.method}' has {what} {name} "
                              f"(searchable for it: {', '.join(allowed)})")
    given = dict(param_bounds or {})
    for name in given:
        if name not in params:
            raise SearchError(f"--param-bounds {name}: not searched; add it to --params (searched: {', '.join(params)})")
    if density_bounds is not None and "density" not in given:
        given["density"] = density_bounds
    weights = _bounds(weight_bounds, "--bounds") if "weights" in params else None
    bounds: dict[str, tuple[float, float]] = {}
    for name in params:
        if name == "weights":
            continue
        param = method.param(name)
        flag = "--density-bounds" if name == "density" and "density" not in (param_bounds or {}) else f"--param-bounds {name}"
        low, high = _bounds(given.get(name, param.search), flag, param.minimum, param.maximum)
        if param.exclusive_minimum and low <= param.minimum:
            raise SearchError(f"{flag}: the {name} must stay above {param.minimum:g}")
        bounds[name] = (low, high)
    start: dict[str, float] = {}
    if weights is not None:  # uniform λ = 1 (clipped into the bounds): the usual first guess
        start.update({f"weights.{r.display_name}": min(max(1.0, weights[0]), weights[1]) for r in recipe.adapters})
    for name, (low, high) in bounds.items():
        start[name] = min(max(recipe.parameters[name], low), high)
    return SearchSpace(
        tuple(r.display_name for r in recipe.adapters), weights, bounds, start,
        int_params=tuple(n for n in bounds if method.param(n).kind == "int"),
        refusal=functools.partial(trial_refusal, recipe),
    )


def make_sampler(name: str, seed: int):
    optuna = require_optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CMA-ES sampler needs it)
        except ImportError as err:
            raise SearchError(f"--sampler cmaes needs the 'cmaes' package; run: {INSTALL_HINT}") from err
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise SearchError(f"--sampler: {name!r} is not allowed (allowed: {', '.join(SAMPLERS)})")


# ----------------------------------------------------------------------------------------------
# The dev split and the objective


def direction(objective: str) -> str:
    """"minimize" for the completion loss, "maximize" for the scores."""
    return "minimize" if objective in MINIMIZED else "maximize"


def better(objective: str) -> Callable:
    """The function that picks the best of several objective values (min for the loss, else max)."""
    return min if objective in MINIMIZED else max


def objective_value(evaluation: EvaluationResult, objective: str) -> float:
    """The number a trial optimises (see `direction`).

    average: mean merged accuracy (exact match for causal tasks) over tasks. normalized: mean of
    merged / single-adapter score. worst_task: the smallest merged / single ratio, i.e. the task
    that lost most to the merge (ratios, not raw accuracies: a 6-class task would otherwise always
    be the worst one). loss: the mean over causal tasks of the merged completion loss (lower is
    better). NaN when nothing can be scored (e.g. a single adapter at 0 %, or the loss of a
    classification task); such a trial counts as failed.
    """
    if objective == "loss":
        losses = [s.loss.get("merged") if s.loss else None for s in evaluation.tasks.values()]
        value = sum(losses) / len(losses) if losses and None not in losses else None
    elif objective == "average":
        value = evaluation.average()["merged"]
    elif objective == "normalized":
        value = evaluation.average()["normalized"]
    elif objective == "worst_task":
        ratios = [s.normalized for s in evaluation.tasks.values() if s.normalized is not None]
        value = min(ratios) if ratios else None
    else:
        raise SearchError(f"--objective: {objective!r} is not allowed (allowed: {', '.join(OBJECTIVES)})")
    return float("nan") if value is None else float(value)


def merged_counts(evaluation: EvaluationResult, evaluator: Evaluator) -> dict[str, tuple[int, int]]:
    """(correct, scored) per task of a merged evaluation (scores are exact fractions c / n)."""
    counts = {}
    for task, scores in evaluation.tasks.items():
        scored = scores.examples or len(evaluator.eval_sets[task].targets)
        counts[task] = (round(scores.merged * scored), scored)
    return counts


# ----------------------------------------------------------------------------------------------
# Scoring a trial: the Lab's merge + evaluate, on dev sets


class DevLab(Lab):
    """A Lab that shares another Lab's loaded model (and its lock) but scores the dev sets.

    Everything Lab does — merge_and_evaluate, sweep, the caches — runs unchanged; only the
    evaluator differs. `prepare` refuses a task without a dev set instead of loading its
    evaluation split, so the evaluation data cannot slip into a trial's score.
    """

    def __init__(self, lab: Lab, dev_sets: Sequence[EvalSet]):  # no super().__init__(): it would load another model
        self._setup(lab.base_model, lab.model, lab.tokenizer, lab.kind, lab.device, lab.max_length)
        for dev_set in dev_sets:
            self.evaluator.add_eval_set(dev_set)
        self.lock = lab.lock  # one model in memory: its users take turns

    def prepare(self, adapters: Sequence[Adapter], recipe: Recipe | None = None) -> list[Adapter]:
        named = tasked(adapters, recipe)
        missing = sorted({a.task for a in named} - set(self.evaluator.eval_sets))
        if missing:
            raise SearchError(f"no dev set for task(s) {', '.join(map(str, missing))}")
        return named


@dataclass(frozen=True)
class SearchSettings:
    """Everything a worker needs to score trials (picklable: it travels to Ray actors)."""

    recipe: Recipe
    objective: str = "average"
    dev_size: int = DEFAULT_DEV_SIZE
    dev_seed: int = 0


def recipe_adapters(recipe: Recipe, lab: Lab) -> list[Adapter]:
    """The recipe's adapters with its `osrm` mode applied (merging.lab.catalog: twins, post-hoc)."""

    return merge_inputs(recipe, lab_for=lambda _base_model: lab).adapters


def load_lab(recipe: Recipe, adapters: Sequence[Adapter] | None = None) -> Lab:
    """The Lab of the recipe's base model (merging.lab.catalog's one resolution)."""

    adapters = adapters if adapters is not None else resolve_inputs(recipe).adapters
    return Lab(resolve_base_model(recipe, adapters), device=recipe.device)


class TrialScorer:
    """Loads (or borrows) a Lab once, carves the dev sets once, then scores many trials."""

    def __init__(self, settings: SearchSettings, lab: Lab | None = None):
        if settings.objective not in OBJECTIVES:
            raise SearchError(f"--objective: {settings.objective!r} is not allowed (allowed: {', '.join(OBJECTIVES)})")

        self.settings = settings
        self.lab = lab or load_lab(settings.recipe)
        self.adapters = recipe_adapters(settings.recipe, self.lab)
        self.splits = plan_splits(settings.recipe, self.adapters, settings.dev_size, settings.dev_seed)
        dev_sets, self.final_sets = split_sets(self.splits, self.lab, self.adapters, settings.recipe)
        self.dev_lab = DevLab(self.lab, dev_sets)

    def final_lab(self) -> Lab:
        """The Lab the final report scores on: the held-out rows of the evaluation files, or the
        lab itself when every task is a training-split task (its evaluation split is held out)."""
        return self.lab if self.final_sets is None else DevLab(self.lab, self.final_sets)

    def __call__(self, params: dict) -> tuple[float, dict]:
        run = self.dev_lab.merge_and_evaluate(self.adapters, trial_recipe(self.settings.recipe, params))
        return objective_value(run.evaluation, self.settings.objective), run.evaluation.to_dict()


# ----------------------------------------------------------------------------------------------
# Backends: where trials run


class InProcessBackend:
    """One scorer in this process; `next_finished` runs the oldest submitted trial."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.capacity = 1
        self.pending: deque = deque()
        self.deaths: list[dict] = []

    def submit(self, number: int, params: dict) -> None:
        self.pending.append((number, params))

    def next_finished(self) -> tuple[int, TrialOutcome | None]:
        number, params = self.pending.popleft()
        return number, score_trial(self.scorer, number, params)

    def close(self) -> None:
        self.pending.clear()


# ----------------------------------------------------------------------------------------------
# The study


@dataclass
class StudyResult:
    outcomes: list[TrialOutcome]
    failed: list[int]
    deaths: list[dict]
    seconds: float
    direction: str = "maximize"

    @property
    def best(self) -> TrialOutcome | None:
        finite = [o for o in self.outcomes if math.isfinite(o.dev_objective)]
        sign = -1.0 if self.direction == "minimize" else 1.0  # the earliest trial wins a tie
        return max(finite, key=lambda o: (sign * o.dev_objective, -o.number)) if finite else None


def run_study(
    space: SearchSpace,
    trials: int,
    backend,
    sampler: str = "tpe",
    seed: int = 0,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    progress: Progress | None = None,
    direction: str = "maximize",
) -> StudyResult:
    """Optuna's ask/tell over a backend: keep every worker busy, tell each result as it lands.

    The first trial is `space.start` (uniform λ = 1), so the search starts from the usual guess.
    A trial with a non-finite objective, or whose worker died more than the retries allow, is told
    as failed; it still uses one trial of the budget.
    """
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if trials < 1:
        raise SearchError(f"--trials: expected at least 1, got {trials}")
    study = optuna.create_study(direction=direction, sampler=make_sampler(sampler, seed))
    pick = min if direction == "minimize" else max
    if space.start:
        study.enqueue_trial(dict(space.start))
    start = time.perf_counter()
    asked: dict[int, Any] = {}
    outcomes: list[TrialOutcome] = []
    failed: list[int] = []
    submitted = 0
    try:
        while len(outcomes) + len(failed) < trials:
            while len(asked) < backend.capacity and submitted < trials:
                trial = study.ask()
                submitted += 1
                params = space.suggest(trial)
                if space.refusal is not None and space.refusal(params) is not None:
                    # values that break a rule across parameters (e.g. DELLA's density ± epsilon)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    failed.append(trial.number)
                    continue
                asked[trial.number] = trial
                backend.submit(trial.number, params)
            if not asked:
                continue
            number, outcome = backend.next_finished()
            trial = asked.pop(number)
            if outcome is None or not math.isfinite(outcome.dev_objective):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                failed.append(number)
            else:
                study.tell(trial, outcome.dev_objective)
                outcomes.append(outcome)
                if on_trial is not None:
                    on_trial(outcome)
            if progress is not None:
                done = len(outcomes) + len(failed)
                best = pick((o.dev_objective for o in outcomes), default=float("nan"))
                progress(done, trials, f"trial {done}/{trials}, best dev {best:.4f}")
    finally:
        backend.close()
    outcomes.sort(key=lambda o: o.number)
    return StudyResult(outcomes, sorted(failed), list(backend.deaths), time.perf_counter() - start, direction)


# ----------------------------------------------------------------------------------------------
# A whole search: study, run store, final report


@dataclass
class SearchResult:
    search_id: str
    objective: str
    backend: str
    study: StudyResult
    best_recipe: Recipe | None
    report: dict | None  # best / uniform / shared on the evaluation split (None when not asked)
    splits: list = field(default_factory=list)  # merging.search.split.TaskSplit per task

    def to_dict(self) -> dict:
        best = self.study.best
        return {
            "search_id": self.search_id,
            "objective": self.objective,
            "direction": direction(self.objective),
            "objective_meaning": OBJECTIVE_MEANINGS[self.objective],
            "split": [split.to_dict() for split in self.splits],
            "backend": self.backend,
            "best": {
                "recipe": self.best_recipe.to_dict() if self.best_recipe else None,
                "dev_objective": best.dev_objective if best else None,
                "trial": best.number if best else None,
                "evaluation": (self.report or {}).get("best", {}).get("evaluation"),
                "interval_95": (self.report or {}).get("best", {}).get("interval_95"),
            },
            "baselines": {k: v for k, v in (self.report or {}).items() if k != "best"},
            "trials": [o.to_dict() for o in self.study.outcomes],
            "failed_trials": self.study.failed,
            "worker_deaths": self.study.deaths,
            "seconds": round(self.study.seconds, 3),
            "trials_per_minute": round(60 * len(self.study.outcomes) / self.study.seconds, 3) if self.study.seconds else None,
        }


def store_trial(store, search_id: str, base: Recipe, objective: str, outcome: TrialOutcome, device: str) -> int:
    """One finished trial into the run store (kind `search-trial`). Its dev scores sit under
    `search.dev`, not as the run's accuracy: they are the search's yardstick, not a result."""
    block = {"search": {"id": search_id, "objective": objective, **outcome.to_dict(), "dev": outcome.dev}}
    summary = {"search": search_id, "trial": outcome.number, "dev_objective": outcome.dev_objective}
    return record_run(store, "search-trial", trial_recipe(base, outcome.params), extra=block, summary=summary,
                      device=device, seconds=outcome.seconds).id


def final_report(
    lab: Lab,
    dev_lab: Lab,
    adapters: Sequence[Adapter],
    base: Recipe,
    best: Recipe,
    objective: str,
    shared_grid: Sequence[float] = SHARED_GRID,
    progress: Progress | None = None,
) -> dict:
    """The best recipe, uniform λ = 1 and the best shared λ (chosen on dev), scored on the
    evaluation split, each with a 95 % bootstrap interval of its average merged accuracy."""
    n = len(base.adapters)
    shared_points = dev_lab.sweep(adapters, base, [[lam] * n for lam in shared_grid])
    shared_scores = [(weights[0], objective_value(result, objective)) for weights, result in shared_points]
    finite = [(lam, value) for lam, value in shared_scores if math.isfinite(value)]
    shared_lambda, shared_dev = better(objective)(finite, key=lambda p: p[1]) if finite else (1.0, float("nan"))
    candidates = {
        "best": best,
        "uniform": base.with_weights([1.0] * n),
        "shared": base.with_weights([shared_lambda] * n),
    }
    report: dict = {}
    for index, (label, recipe) in enumerate(candidates.items()):
        if progress is not None:
            progress(index, len(candidates), f"evaluation split: {label}")
        run = lab.merge_and_evaluate(adapters, recipe)
        low, high = bootstrap_interval(merged_counts(run.evaluation, lab.evaluator))
        report[label] = {
            "weights": recipe.weights,
            "evaluation": run.evaluation.to_dict(),
            "objective_on_evaluation": _finite_or_none(objective_value(run.evaluation, objective)),
            "interval_95": {"average_merged": [low, high]},
        }
    report["shared"]["lambda"] = shared_lambda
    report["shared"]["dev_objective"] = _finite_or_none(shared_dev)
    report["shared"]["grid"] = list(shared_grid)
    if progress is not None:
        progress(len(candidates), len(candidates), "done")
    return report


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run_search(
    recipe: Recipe,
    trials: int,
    objective: str = "average",
    params: Sequence[str] = ("weights",),
    weight_bounds: Sequence[float] = DEFAULT_WEIGHT_BOUNDS,
    density_bounds: Sequence[float] | None = None,
    sampler: str = "tpe",
    seed: int = 0,
    dev_size: int = DEFAULT_DEV_SIZE,
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    lab: Lab | None = None,
    store=None,
    report: bool = True,
    shared_grid: Sequence[float] = SHARED_GRID,
    progress: Progress | None = None,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    max_retries: int = MAX_RETRIES,
    on_submit: Callable[[int, Any], None] | None = None,
    param_bounds: Mapping[str, Sequence[float]] | None = None,
) -> SearchResult:
    """Search λ (and optionally any searchable parameter of the method: density, gamma, epsilon, …) for `recipe`, store every trial, report on the evaluation split.

    In-process unless `ray` is set: then a local Ray runtime (or the cluster at `ray_address`) runs
    `workers` actors (default: one per CPU of the cluster). `lab` lends an already-loaded Lab to the
    in-process scorer and the final report (the dashboard's cached one).
    """
    if objective not in OBJECTIVES:
        raise SearchError(f"--objective: {objective!r} is not allowed (allowed: {', '.join(OBJECTIVES)})")
    if sampler not in SAMPLERS:
        raise SearchError(f"--sampler: {sampler!r} is not allowed (allowed: {', '.join(SAMPLERS)})")
    if workers is not None and workers < 1:
        raise SearchError(f"--workers: expected at least 1, got {workers}")
    if not ray and workers not in (None, 1):
        raise SearchError("--workers: in-process runs one trial at a time; add --ray to run several workers")
    if trials < 1:
        raise SearchError(f"--trials: expected at least 1, got {trials}")
    if dev_size < 1:
        raise SearchError(f"--dev-size: expected at least 1 example per task, got {dev_size}")
    require_optuna()
    space = space_for(recipe, params, weight_bounds, density_bounds, param_bounds)
    settings = SearchSettings(recipe, objective, dev_size, seed)
    splits = planned_splits(recipe, objective, dev_size, seed)  # refuses a bad file before any model loads
    search_id = uuid.uuid4().hex[:12]
    device_name = {"value": recipe.device}

    def record(outcome: TrialOutcome) -> None:
        if store is not None:
            store_trial(store, search_id, recipe, objective, outcome, device_name["value"])
        if on_trial is not None:
            on_trial(outcome)

    def study_progress(done: int, total: int, what: str) -> None:
        if progress is not None:
            progress(done, total + 1, what)  # the last step is the final report

    if ray:
        from merging.search.ray_backend import RayBackend, RayRuntime, actor_options

        runtime = RayRuntime(ray_address)
        with runtime as ray_module:
            count = workers or max(1, int(ray_module.cluster_resources().get("CPU", 1)))
            count = min(count, trials)
            options = actor_options(ray_module, recipe.device, count)
            if not runtime.started:  # a runtime someone else started: its nodes share this file system
                options["runtime_env"] = {"env_vars": {"PYTHONPATH": str(PACKAGE_DIR.parent)}}
            backend = RayBackend(
                functools.partial(TrialScorer, settings), count, options, max_retries, on_submit
            )
            study = run_study(space, trials, backend, sampler, seed, record, study_progress, direction(objective))
        backend_name = f"ray ({ray_address or 'local'}, {count} workers)"
    else:
        scorer = TrialScorer(settings, lab)
        lab = scorer.lab
        device_name["value"] = str(lab.device)
        study = run_study(space, trials, InProcessBackend(scorer), sampler, seed, record, study_progress, direction(objective))
        backend_name = "in-process"

    best = study.best
    best_recipe = trial_recipe(recipe, best.params) if best else None
    final = None
    if report and best_recipe is not None:
        if progress is not None:
            progress(trials, trials + 1, "final report on the evaluation split")
        if ray:  # the trials ran in the actors: this process loads the model for the report
            scorer = TrialScorer(settings, lab or load_lab(recipe))
        lab = scorer.lab
        final = final_report(scorer.final_lab(), scorer.dev_lab, scorer.adapters, recipe, best_recipe, objective, shared_grid)
        if store is not None:
            block = {"search": {"id": search_id, "objective": objective, "direction": direction(objective),
                                "split": [split.to_dict() for split in splits], "backend": backend_name,
                                "dev_objective": best.dev_objective, "trial": best.number, "report": final,
                                "trials": len(study.outcomes), "failed_trials": study.failed}}
            summary = {"search": search_id, "trials": len(study.outcomes), "objective": objective}
            record_run(store, "search", best_recipe, final["best"]["evaluation"], extra=block, summary=summary,
                       device=str(lab.device), seconds=study.seconds)
    if progress is not None:
        progress(trials + 1, trials + 1, "done")
    return SearchResult(search_id, objective, backend_name, study, best_recipe, final, splits)


def planned_splits(recipe: Recipe, objective: str, dev_size: int, seed: int) -> list:
    """Each task's dev/final plan (merging.search.split), from the files alone; the loss objective
    is refused unless every task is a causal one (a classification task has no completion loss)."""

    splits = plan_splits(recipe, resolve_inputs(recipe).adapters, dev_size, seed)
    if objective == "loss":
        plain = [s.task for s in splits if s.eval_file is None or file_format(s.eval_file) == "classification"]
        if plain:
            raise SearchError(
                f"--objective loss: task(s) {', '.join(plain)} are classification tasks, which have no completion "
                "loss; use average, normalized or worst_task"
            )
    return splits
