"""Numbers read cleanly on stage (issue 18): λ with at most two decimals and said once when every
adapter has the same; a change in points with one decimal, never "+0.0"."""

from __future__ import annotations

from merging.plots.merge import signed_points
from merging.store.run_labels import lambda_text, lambdas


def test_lambdas_have_two_decimals_and_equal_ones_are_said_once():
    assert lambdas([0.6182, 0.6182, 0.6182]) == "0.62"
    assert lambdas([1.0, 0.5]) == "1, 0.5"
    assert [lambda_text(v) for v in (0.0, 1.0, 0.05, 1.25, 0.999)] == ["0", "1", "0.05", "1.25", "1"]


def test_points_have_one_decimal_a_real_minus_and_no_signed_zero():
    assert signed_points(25.76) == "+25.8"
    assert signed_points(-3.04) == "\u22123.0"
    assert signed_points(0.04) == "0.0" and signed_points(-0.04) == "0.0"
