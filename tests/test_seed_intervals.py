"""Intervals over training seeds and correlations (merging.core.intervals), against published tables and
an independent Monte-Carlo oracle."""

from __future__ import annotations

import math
import random

import pytest

from merging.core.intervals import (
    correlation_interval,
    mean_interval,
    paired_difference,
    student_t_cdf,
    student_t_quantile,
)


@pytest.mark.parametrize(
    ("df", "quantile"),
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452), (1000, 1.9623)],
)
def test_t_quantile_matches_the_printed_table(df, quantile):
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=2e-4)


def test_t_cdf_is_symmetric_and_matches_the_cauchy_case():
    for t in (-3.0, -0.5, 0.0, 0.7, 2.5):
        assert student_t_cdf(t, 5) + student_t_cdf(-t, 5) == pytest.approx(1.0, abs=1e-12)
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-10)  # df 1 = Cauchy


def test_mean_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = random.Random(0)
    covered = 0
    for _ in range(2000):
        values = [rng.gauss(3.0, 2.0) for _ in range(5)]
        _, low, high = mean_interval(values)
        covered += low <= 3.0 <= high
    assert 0.935 <= covered / 2000 <= 0.965


def test_one_seed_decides_nothing_and_a_paired_difference_says_when_it_survives():
    mean, low, high = mean_interval([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert not paired_difference([0.7], [0.6])["survives"]
    clear = paired_difference([0.80, 0.82, 0.81, 0.83, 0.80], [0.70, 0.71, 0.72, 0.70, 0.71])
    assert clear["survives"] and clear["low"] > 0 and clear["mean"] == pytest.approx(0.104)
    noisy = paired_difference([0.80, 0.60, 0.75, 0.65, 0.70], [0.70, 0.72, 0.68, 0.71, 0.69])
    assert not noisy["survives"] and noisy["low"] < 0 < noisy["high"]
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_correlation_interval_hand_cases():
    perfect = correlation_interval([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert perfect["r"] == pytest.approx(1.0) and perfect["survives"]
    flat = correlation_interval([1, 2, 3, 4], [5, 5, 5, 5])
    assert math.isnan(flat["r"]) and not flat["survives"]
    rng = random.Random(1)
    x = [rng.random() for _ in range(30)]
    y = [rng.random() for _ in range(30)]
    unrelated = correlation_interval(x, y)
    assert unrelated["low"] < unrelated["r"] < unrelated["high"] and unrelated["n"] == 30
    with pytest.raises(ValueError, match="at least 4"):
        correlation_interval([1, 2, 3], [1, 2, 3])
