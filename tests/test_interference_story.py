"""merging/analysis/interference_story.py: the Interference page's one-line takeaways, read from the numbers,
and one y scale for panels that are compared (issue 18)."""

from __future__ import annotations

from merging.analysis import interference_story as telling
from merging.plots import magnitude_variance_by_layer


def _metrics(cv_a, cv_b, spread):
    return {"adapters": ["a", "b"], "layers": {
        "0": {"column_norm_cv": [cv_a, cv_b], "norm_variance_across": spread[0]},
        "1": {"column_norm_cv": [cv_b, cv_a], "norm_variance_across": spread[1]},
    }}


def test_magnitude_names_the_cv_range_and_the_layer_whose_sizes_differ_most():
    text = telling.magnitude([("Standard LoRA", _metrics(0.5, 1.25, (0.1, 0.4))),
                              ("OSRM initialisation", _metrics(0.2, 0.3, (0.3, 0.05)))])
    assert text == ("Magnitudes — Standard LoRA: CV 0.50–1.25, sizes differ most in layer 1; "
                    "OSRM initialisation: CV 0.20–0.30, sizes differ most in layer 0")


def test_overlap_cosine_signs_dpi_and_cross_read_the_off_diagonal():
    matrix = [[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]]  # off-diagonal mean 0.2
    assert telling.overlap([("x", matrix)], chance=0.02) == "Subspaces — mean overlap 0.20 (10× chance)"
    assert telling.cosine([("x", [[1, -0.05], [-0.05, 1]])]) == "Task vectors — nearly orthogonal (mean |cos| 0.05)"
    assert telling.signs([("x", {"0": 0.4, "1": 0.6}, 0.94)]) == "Signs — 50 % of entries disagree — below chance (94 %)"
    assert telling.dpi([("x", [[1, 0.5], [0.25, 1]])]) == \
        "Data-parameter interference — other adapters answer at 0.38× the task's own"
    cross = {"adapters": ["a", "b"], "tasks": ["a", "b"], "accuracy": [[0.9, 0.4], [0.5, 0.8]]}
    assert telling.cross([("x", cross)]) == "Cross-task accuracy — own task 85.0 %, others 45.0 %"
    shared = {"adapters": ["a1", "a2", "b"], "tasks": ["a", "b"], "accuracy": [[0.9, 0.4], [0.8, 0.4], [0.5, 0.8]]}
    assert telling.cross([("x", shared)]) == "Cross-task accuracy — not one adapter per task"


def test_every_section_says_which_way_is_good_and_the_symbols_are_explained():
    assert set(telling.GOOD) == {"magnitude", "overlap", "mechanism", "magnitude_claims", "cosine", "signs",
                                 "dpi", "cross"}
    assert all("better" in line or "good" in line for line in telling.GOOD.values())
    assert "‖ΔW‖_F" in telling.EXPLAIN["magnitude"] and "CV of column norms" in telling.EXPLAIN["magnitude"]


def test_compared_panels_get_one_y_scale_from_the_largest_value():
    small = magnitude_variance_by_layer(_metrics(0.5, 1.0, (0.1, 0.2)), presentation=True)
    large = magnitude_variance_by_layer(_metrics(0.2, 3.0, (0.3, 0.05)), presentation=True)
    telling.share_y([small, large])
    for figure in (small, large):
        assert list(figure.layout.yaxis.range) == [0, 3.0 * 1.08]  # the CV panel: the largest CV
        assert list(figure.layout.yaxis2.range) == [0, 0.3 * 1.08]  # the size-variance panel
