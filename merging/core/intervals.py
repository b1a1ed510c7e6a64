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


# ----------------------------------------------------------------------------------------------
# Over training seeds: Student t intervals and paired differences; correlations


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz), accurate to ~1e-12 for the t distribution's use."""
    import math

    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below the mean
        return 1.0 - _regularized_beta(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 400):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * result


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T ≤ t) = p (bisection on :func:`student_t_cdf`; df ≥ 1)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"need 0 < p < 1 and df ≥ 1, got p={p}, df={df}")
    low, high = -1e6, 1e6
    for _ in range(200):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the Student t interval of the mean of independent values (e.g. one per
    training seed). With one value the interval is unbounded (nan): one seed decides nothing."""
    _check_level(level)
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = student_t_quantile(0.5 + level / 2.0, n - 1) * sd / n**0.5
    return mean, mean - half, mean + half


def paired_difference(first: Sequence[float], second: Sequence[float], level: float = LEVEL) -> dict:
    """first − second, paired by position (same seed, same data): the mean difference with its
    Student t interval over the pairs, and whether it survives (the interval excludes 0)."""
    if len(first) != len(second):
        raise ValueError(f"paired values need equal lengths, got {len(first)} and {len(second)}")
    differences = [a - b for a, b in zip(first, second)]
    mean, low, high = mean_interval(differences, level)
    survives = bool(low == low and (low > 0.0 or high < 0.0))  # nan (one pair) never survives
    return {"mean": mean, "low": low, "high": high, "n": len(differences), "survives": survives,
            "differences": differences}  # fmt: skip


def correlation_interval(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> dict:
    """Pearson's r with its Fisher-z interval (n ≥ 4); r is nan when either variable is constant."""
    import math
    from statistics import NormalDist

    _check_level(level)
    n = len(x)
    if n != len(y):
        raise ValueError(f"x and y need equal lengths, got {n} and {len(y)}")
    if n < 4:
        raise ValueError(f"a correlation interval needs at least 4 points, got {n}")
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0.0 or syy == 0.0:
        return {"r": float("nan"), "low": float("nan"), "high": float("nan"), "n": n, "survives": False}
    r = sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(sxx * syy)
    r = max(-1.0, min(1.0, r))
    z = math.atanh(max(-0.999999, min(0.999999, r)))
    half = NormalDist().inv_cdf(0.5 + level / 2.0) / math.sqrt(n - 3)
    low, high = math.tanh(z - half), math.tanh(z + half)
    return {"r": r, "low": low, "high": high, "n": n, "survives": low > 0.0 or high < 0.0}
