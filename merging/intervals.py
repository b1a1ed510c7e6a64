"""95 % intervals for accuracies: a percentile bootstrap over the evaluation set, seeded.

Why a bootstrap: a difference of a few points between two merges means nothing on ~200 examples per
task unless it is larger than the noise of the evaluation set itself. Resampling the evaluation set
with replacement and recomputing the score shows that noise without assuming a distribution.

Why counts are enough for an accuracy: drawing n examples with replacement from a set with c correct
makes the number correct Binomial(n, c/n), so drawing that Binomial directly *is* the example-level
bootstrap, without materialising the examples (``bootstrap_mean_interval`` resamples the examples
themselves for per-example scores that are not 0/1, e.g. a loss; a test checks the two agree).
For the mean over tasks each task is resampled independently (tasks have separate evaluation sets).

Pure numpy, no torch; the same seed gives the same interval. As a sanity check, for large n and p
away from 0 and 1 the interval is close to the normal approximation p ± 1.96·√(p(1−p)/n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 4000
SEED = 0


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    return float(np.quantile(draws, tail)), float(np.quantile(draws, 1.0 - tail))


def bootstrap_interval(
    counts: Mapping[str, tuple[int, int]], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over tasks of accuracy, from (correct, scored) per task."""
    _check_level(level)
    if not counts:
        raise ValueError("no task to bootstrap")
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for task, (correct, scored) in counts.items():
        if scored <= 0 or not 0 <= correct <= scored:
            raise ValueError(f"task {task}: bad counts (correct={correct}, scored={scored})")
        means += rng.binomial(scored, correct / scored, size=resamples) / scored
    return _percentiles(means / len(counts), level)


def accuracy_interval(
    correct: int, scored: int, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """The bootstrap interval of one accuracy correct/scored (all or none correct → a zero-width interval)."""
    return bootstrap_interval({"task": (correct, scored)}, level, resamples, seed)


def counts_of(accuracy: float, scored: int) -> int:
    """The number correct behind an accuracy that is an exact fraction correct/scored (as evaluation stores it)."""
    correct = round(accuracy * scored)
    if abs(correct / scored - accuracy) > 1e-9:  # stored accuracies are exact c/n up to float rounding
        raise ValueError(f"accuracy {accuracy} is not a fraction of {scored} examples")
    return correct


def bootstrap_mean_interval(
    values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example scores, resampling the examples."""
    _check_level(level)
    scores = np.asarray(values, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no examples to bootstrap")
    if not np.isfinite(scores).all():
        raise ValueError("per-example scores must be finite")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, scores.size, size=(resamples, scores.size))
    return _percentiles(scores[picks].mean(axis=1), level)


def normal_interval(correct: int, scored: int, level: float = LEVEL) -> tuple[float, float]:
    """The normal (Wald) approximation p ± z·√(p(1−p)/n), for comparison with the bootstrap."""
    from statistics import NormalDist

    _check_level(level)
    p = correct / scored
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    half = z * (p * (1.0 - p) / scored) ** 0.5
    return p - half, p + half
