"""The bootstrap intervals of merging/core/intervals.py, against hand-checkable cases, the normal
approximation and a literal resampling of the examples."""

from __future__ import annotations

import math

import pytest

from merging.core.intervals import (
    accuracy_interval,
    bootstrap_interval,
    bootstrap_mean_interval,
    counts_of,
    normal_interval,
)


def test_all_correct_or_all_wrong_gives_a_zero_width_interval():
    # every resample of an all-correct set is all correct: nothing to be unsure about
    assert accuracy_interval(50, 50) == (1.0, 1.0)
    assert accuracy_interval(0, 50) == (0.0, 0.0)


def test_one_example_half_the_time_right_can_only_resample_to_zero_or_one():
    # a 2-example set with one right resamples to 0, 0.5 or 1 (probabilities 1/4, 1/2, 1/4):
    # the 2.5 % and 97.5 % quantiles are therefore 0 and 1
    assert accuracy_interval(1, 2) == (0.0, 1.0)


def test_the_interval_matches_the_normal_approximation_for_a_large_set():
    low, high = accuracy_interval(140, 200)  # p = 0.7, n = 200: ±1.96·√(0.21/200) = ±0.0635
    n_low, n_high = normal_interval(140, 200)
    assert n_high - 0.7 == pytest.approx(1.96 * math.sqrt(0.7 * 0.3 / 200), abs=1e-3)
    assert low == pytest.approx(n_low, abs=0.01)
    assert high == pytest.approx(n_high, abs=0.01)
    assert low < 0.7 < high


def test_the_same_seed_gives_the_same_interval_and_another_seed_a_close_one():
    assert accuracy_interval(123, 200, seed=3) == accuracy_interval(123, 200, seed=3)
    a, b = accuracy_interval(123, 200, seed=3), accuracy_interval(123, 200, seed=4)
    assert a[0] == pytest.approx(b[0], abs=0.015) and a[1] == pytest.approx(b[1], abs=0.015)


def test_counts_are_the_example_level_bootstrap():
    # drawing Binomial(n, c/n) is resampling the examples: compare with a literal resampling of 0/1 scores
    scores = [1.0] * 130 + [0.0] * 70
    by_counts = accuracy_interval(130, 200, resamples=20000)
    by_examples = bootstrap_mean_interval(scores, resamples=20000)
    assert by_counts == pytest.approx(by_examples, abs=0.01)


def test_the_mean_over_tasks_is_narrower_than_one_task_alone():
    one = accuracy_interval(140, 200)
    mean = bootstrap_interval({"a": (140, 200), "b": (140, 200), "c": (140, 200), "d": (140, 200)})
    assert mean[0] < 0.7 < mean[1]
    # four independent sets: the spread shrinks by about √4 = 2
    assert (mean[1] - mean[0]) == pytest.approx((one[1] - one[0]) / 2, rel=0.2)


def test_counts_of_recovers_the_number_correct_and_refuses_a_non_fraction():
    assert counts_of(137 / 201, 201) == 137
    with pytest.raises(ValueError, match="not a fraction"):
        counts_of(0.5, 7)


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="bad counts"):
        accuracy_interval(5, 3)
    with pytest.raises(ValueError, match="level"):
        accuracy_interval(1, 3, level=1.0)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_interval([1.0, float("nan")])
