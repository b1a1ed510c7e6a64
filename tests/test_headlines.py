"""merging/analysis/headlines.py: one short headline per Tour step, numbers said cleanly (issue 18)."""

from __future__ import annotations

from merging.analysis import headlines
from merging.analysis.narrative import MINUS


def _result(rows: dict[str, dict], n: int = 200) -> dict:
    return {"tasks": {t: {**v, "n": n} for t, v in rows.items()}}


REFERENCE = _result({"a": {"single": 0.90, "merged": 0.60, "base": 0.50},
                     "b": {"single": 0.80, "merged": 0.70, "base": 0.40}})


def test_a_gain_is_said_with_one_decimal_and_its_noise():
    better = _result({"a": {"single": 0.90, "merged": 0.80}, "b": {"single": 0.80, "merged": 0.80}})
    text = headlines.fix("TIES", REFERENCE, better)
    assert text == "TIES gains 15.0 pp merged accuracy (beyond noise)"  # (0.80 - 0.65) × 100
    assert headlines.words(text) <= headlines.MAX_WORDS


def test_a_change_that_rounds_to_zero_is_no_change_never_plus_zero():
    same = _result({"a": {"single": 0.90, "merged": 0.6003}, "b": {"single": 0.80, "merged": 0.70}}, n=10_000)
    text = headlines.fix("DARE-TIES", REFERENCE, same)
    assert text == "DARE-TIES: no change in merged accuracy"
    assert "+0.0" not in text
    variant = headlines.variant("OSRM adapters", REFERENCE, same)
    assert variant == "OSRM adapters: no change, merged or alone"


def test_a_cost_is_said_as_a_cost_and_a_small_one_within_noise():
    worse = _result({"a": {"single": 0.90, "merged": 0.59}, "b": {"single": 0.80, "merged": 0.69}}, n=100)
    text = headlines.fix("DO-Merging's decouple switch", REFERENCE, worse)
    assert text.startswith("DO-Merging's decouple switch costs 1.0 pp")
    assert text.endswith("(within noise)")
    assert MINUS not in text and "-" not in text.split("switch")[1]


def test_the_variant_headline_says_both_changes_with_signs():
    variant = _result({"a": {"single": 0.85, "merged": 0.80}, "b": {"single": 0.75, "merged": 0.80}})
    text = headlines.variant("OSRM adapters", REFERENCE, variant)
    assert text == f"OSRM adapters: merged +15.0 pp (beyond noise), alone {MINUS}5.0 pp"
    assert headlines.words(text) <= headlines.MAX_WORDS


def test_singles_naive_and_summary_fit_the_limit_and_name_their_numbers():
    assert headlines.singles(REFERENCE) == "Alone, each adapter lifts its task from 45.0 % to 85.0 % on average"
    # merged ÷ single: 0.65 / 0.85 = 76 %; task a loses 30 pp, b 10 pp
    assert headlines.naive(REFERENCE) == "One merge keeps 76 % of single-task accuracy; a loses most"
    best = _result({"a": {"single": 0.9, "merged": 0.9}, "b": {"single": 0.9, "merged": 0.9}}, n=1000)
    text = headlines.summary([("Task arithmetic (λ = 1)", REFERENCE), ("OSRM (per-sample rows) adapters", best)])
    assert text == "Best: OSRM (per-sample rows) adapters, 90.0 % merged; clearly ahead of the rest"
    assert headlines.words(text) <= headlines.MAX_WORDS


def test_overlap_and_signs_compare_with_chance():
    matrix = [[1.0, 0.3, 0.2], [0.3, 1.0, 0.1], [0.2, 0.1, 1.0]]  # mean off-diagonal 0.2; chance 8/384
    assert headlines.overlap_headline(matrix, 8, 384) == \
        "Different tasks' adapters read the same input directions: 10× chance"
    assert headlines.overlap_headline([[1, 0.01], [0.01, 1]], 8, 384).endswith("(0.01 overlap)")
    assert headlines.signs({"0": 0.4, "1": 0.5}, 5) == "On 45 % of changed weights, the adapters push in opposite directions"
