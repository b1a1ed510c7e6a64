"""The tour's sentences are functions of measured numbers: hand-made results in, the words out —
intervals from the bootstrap, "within noise" when the 95 % intervals overlap, and a cost called a cost."""

from __future__ import annotations

import numpy as np
import pytest

from merging.analysis import narrative as nv


def results(**tasks) -> dict:
    """EvaluationResult.to_dict()-shaped results; each task: (base, single, merged, n)."""
    rows = {
        name: {"base": b, "single": s, "merged": m, "normalized": (m / s if m is not None else None), "majority": 0.5, "n": n}
        for name, (b, s, m, n) in tasks.items()
    }

    def mean(key):
        values = [r[key] for r in rows.values() if r[key] is not None]
        return sum(values) / len(values) if values else None

    return {"tasks": rows, "average": {"base": mean("base"), "single": mean("single"), "merged": mean("merged")}}


# ----------------------------------------------------------------------------------------------
# Intervals


def test_interval_of_one_right_one_wrong_is_the_exact_bootstrap_by_hand():
    # Resampling 2 outcomes from {1, 0}: 0, 1 or 2 right with probabilities 1/4, 1/2, 1/4.
    # The 2.5 % quantile is 0 right, the 97.5 % quantile 2 right.
    assert nv.accuracy_interval(0.5, 2) == (0.0, 1.0)


def test_a_perfect_score_has_no_spread():
    assert nv.accuracy_interval(1.0, 200) == (1.0, 1.0)


def test_interval_matches_a_resampling_bootstrap_of_the_outcomes():
    outcomes = np.array([1] * 150 + [0] * 50)
    rng = np.random.default_rng(1)
    draws = rng.choice(outcomes, size=(20_000, outcomes.size), replace=True).mean(axis=1)
    oracle = np.quantile(draws, [0.025, 0.975])
    low, high = nv.accuracy_interval(0.75, 200)
    assert abs(low - oracle[0]) <= 2 / 200 + 1e-9  # both are Monte Carlo: a step or two apart at most
    assert abs(high - oracle[1]) <= 2 / 200 + 1e-9


def test_mean_interval_matches_resampling_each_task_on_its_own():
    tasks = [(0.9, 100), (0.6, 50)]
    rng = np.random.default_rng(2)
    means = []
    sets = [np.array([1] * round(a * n) + [0] * (n - round(a * n))) for a, n in tasks]
    for _ in range(5000):
        means.append(np.mean([rng.choice(s, size=s.size, replace=True).mean() for s in sets]))
    oracle = np.quantile(means, [0.025, 0.975])
    low, high = nv.mean_accuracy_interval(tasks)
    assert abs(low - oracle[0]) < 0.01 and abs(high - oracle[1]) < 0.01


def test_one_task_mean_interval_is_that_tasks_interval():
    assert nv.mean_accuracy_interval([(0.8, 50)]) == nv.accuracy_interval(0.8, 50)


def test_more_examples_give_a_narrower_interval():
    small, large = nv.accuracy_interval(0.7, 50), nv.accuracy_interval(0.7, 1000)
    assert large[1] - large[0] < small[1] - small[0]


@pytest.mark.parametrize("bad", [(0.5, 0), (1.5, 10), (-0.1, 10)])
def test_an_impossible_accuracy_is_refused(bad):
    with pytest.raises(ValueError):
        nv.accuracy_interval(*bad)


# ----------------------------------------------------------------------------------------------
# Words


def test_a_negative_change_is_written_with_a_real_minus():
    assert nv.points(-0.2125) == "\u221221.2 pp"
    assert nv.points(0.052) == "+5.2 pp"


def test_overlapping_intervals_are_within_noise_and_separate_ones_are_not():
    assert nv.evidence((0.60, 0.70), (0.68, 0.75)).startswith("within noise")
    assert nv.evidence((0.60, 0.65), (0.68, 0.75)).startswith("beyond noise")


def test_singles_say_the_average_gain_and_which_task_gains_least():
    r = results(a=(0.50, 0.90, None, 200), b=(0.50, 0.55, None, 200))
    text = nv.takeaway_singles(r)
    assert "from 50.0 %" in text and "to 72.5 %" in text and "+22.5 pp" in text
    assert "a gains most (+40.0 pp), b least (+5.0 pp)" in text
    assert "On b the adapter's gain is within noise" in text  # 50 % vs 55 % on 200 examples


def test_naive_merge_says_what_share_it_keeps_and_which_task_loses_most():
    r = results(a=(0.5, 0.9, 0.6, 200), b=(0.5, 0.8, 0.78, 200))
    text = nv.takeaway_naive_merge(r, "Task arithmetic")
    # the mean of merged ÷ single per task, as the Merge page's "normalised": (0.6/0.9 + 0.78/0.8) / 2
    assert text.startswith("Task arithmetic keeps 82 % of single-task accuracy on average")
    assert "a loses most (\u221230.0 pp)." in text


def test_naive_merge_calls_a_small_loss_on_few_examples_noise():
    r = results(a=(0.5, 0.9, 0.85, 40), b=(0.5, 0.8, 0.8, 40))
    assert "a loses most (\u22125.0 pp, within noise)" in nv.takeaway_naive_merge(r)


def test_a_fix_that_lowers_accuracy_is_said_to_cost():
    before = results(a=(0.5, 0.9, 0.80, 200), b=(0.5, 0.8, 0.75, 200))
    after = results(a=(0.5, 0.9, 0.60, 200), b=(0.5, 0.8, 0.55, 200))
    text = nv.takeaway_fix("Switch X", "plain task arithmetic", before, after)
    assert text.startswith("Switch X costs average merged accuracy")
    assert "\u221220.0 pp" in text and "beyond noise" in text
    assert "raises" not in text


def test_a_small_gain_is_a_gain_within_noise_and_its_task_cost_is_named():
    before = results(a=(0.5, 0.9, 0.70, 200), b=(0.5, 0.8, 0.70, 200))
    after = results(a=(0.5, 0.9, 0.78, 200), b=(0.5, 0.8, 0.66, 200))
    text = nv.takeaway_fix("TIES", "plain task arithmetic", before, after)
    assert "TIES raises the average merged accuracy from 70.0 % to 72.0 % (+2.0 pp, within noise" in text
    assert "its cost: b loses 4.0 pp (within noise)" in text


def test_a_slow_fix_states_its_merge_time():
    r = results(a=(0.5, 0.9, 0.70, 200))
    text = nv.takeaway_fix("Orthogonalize", "plain task arithmetic", r, r, reference_seconds=0.02, seconds=8.0)
    assert "leaves the average merged accuracy of plain task arithmetic unchanged" in text
    assert "the merge takes 8.0 s instead of under 0.1 s" in text


def test_a_variant_trades_single_task_accuracy_for_merged_accuracy_in_words():
    standard = results(a=(0.5, 0.90, 0.60, 200), b=(0.5, 0.80, 0.60, 200))
    variant = results(a=(0.5, 0.80, 0.70, 200), b=(0.5, 0.70, 0.70, 200))
    text = nv.takeaway_variant("OSRM", standard, variant)
    assert text.startswith("OSRM raises merged accuracy under task arithmetic from 60.0 % to 70.0 % (+10.0 pp")
    assert "and costs single-task accuracy from 85.0 % to 75.0 % (\u221210.0 pp" in text
    # (0.7/0.8 + 0.7/0.7) / 2 = 94 % against (0.6/0.9 + 0.6/0.8) / 2 = 71 %
    assert "it keeps 94 % of its own single-task accuracy (standard: 71 %)" in text


def test_a_variant_that_loses_on_both_counts_says_lowers_and_costs():
    standard = results(a=(0.5, 0.9, 0.7, 200))
    variant = results(a=(0.5, 0.8, 0.6, 200))
    text = nv.takeaway_variant("OSRM (samples)", standard, variant)
    assert "OSRM (samples) lowers merged accuracy" in text and "costs single-task accuracy" in text


def test_sign_conflict_sentence_compares_with_chance_for_that_many_adapters():
    text = nv.takeaway_sign_conflicts({"0": 0.80, "1": 0.70}, adapters=5)
    assert text.startswith("On 75 % of the weight entries the 5 adapters change")
    # five random signs agree on an entry 2 · 2⁻⁵ of the time: 93.75 % disputed
    assert "layer 0 most: 80 %" in text and "fewer than 5 independent random updates would (94 %)" in text
    two = nv.takeaway_sign_conflicts({"0": 0.80}, adapters=2)
    assert "more than 2 independent random updates would (50 %)" in two


def test_overlap_sentence_uses_the_off_diagonal_and_independent_subspaces():
    matrix = [[1.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]]
    text = nv.takeaway_overlap(matrix, ["a", "b", "c"], "In layer 0", rank=8, dimension=400)
    assert "overlap 0.30 on average" in text  # (0.5 + 0.1 + 0.3) / 3, the diagonal left out
    assert "15× what independent rank-8 subspaces of 400 dimensions give (≈ 0.02)" in text
    assert "most: a and b (0.50)" in text


def test_summary_names_the_best_merge_and_those_within_its_noise():
    rows = [
        ("TA", results(a=(0.5, 0.9, 0.60, 200))),
        ("TIES", results(a=(0.5, 0.9, 0.75, 200))),
        ("DARE", results(a=(0.5, 0.9, 0.73, 200))),
    ]
    text = nv.takeaway_summary(rows)
    assert text.startswith("Best here: TIES at 75.0 %")
    assert text.endswith("within its noise: DARE.")


def test_stored_intervals_are_used_when_the_result_has_them():
    # The evaluation JSON's own intervals (merging.evaluation.evaluate), no n: the sentence quotes them.
    before = {"tasks": {"a": {"merged": 0.70, "interval": {"merged": [0.60, 0.80]}}},
              "average_interval": {"merged": [0.60, 0.80]}}
    after = {"tasks": {"a": {"merged": 0.72, "interval": {"merged": [0.62, 0.82]}}},
             "average_interval": {"merged": [0.62, 0.82]}}
    text = nv.takeaway_fix("This run", "the previous run", before, after)
    assert "within noise: 95 % intervals 60.0–80.0 % and 62.0–82.0 % overlap" in text


def test_results_without_intervals_or_sizes_claim_no_difference():
    before = {"tasks": {"a": {"merged": 0.50}}}
    after = {"tasks": {"a": {"merged": 0.90}}}
    text = nv.takeaway_fix("This run", "run 1", before, after)
    assert "+40.0 pp, no interval known, so not a claimed difference" in text
    assert "beyond noise" not in text
