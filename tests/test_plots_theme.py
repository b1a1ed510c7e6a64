"""merging/plots/theme.py: on a dark theme a chart is not a white box with black ink (issue 18)."""

from __future__ import annotations

import json

from merging.plots.theme import INK, for_theme
from merging.plots.tour import gain_and_cost, merge_summary


def _result(single_a, merged_a, single_b, merged_b):
    return {"tasks": {"a": {"single": single_a, "merged": merged_a, "n": 100},
                      "b": {"single": single_b, "merged": merged_b, "n": 100}},
            "average": {"single": (single_a + single_b) / 2, "merged": (merged_a + merged_b) / 2}}


def _figures():
    yield gain_and_cost(_result(0.9, 0.8, 0.8, 0.7), _result(0.9, 0.6, 0.8, 0.6), presentation=True)
    yield merge_summary([{"label": "TIES", "merged": 0.7, "merged_interval": (0.65, 0.75), "single": 0.85},
                         {"label": "Task arithmetic", "merged": 0.6, "merged_interval": (0.55, 0.65), "single": 0.85}])


def test_a_dark_chart_has_no_white_background_and_no_black_ink():
    for figure in _figures():
        before = json.loads(figure.to_json())
        assert "#000000" in json.dumps(before["data"]) + json.dumps(before["layout"].get("shapes", []))
        dark = json.loads(for_theme(figure, "dark").to_json())
        layout = dark["layout"]
        assert layout["paper_bgcolor"] == "rgba(0,0,0,0)" and layout["plot_bgcolor"] == "rgba(0,0,0,0)"
        assert layout["font"]["color"] == INK["dark"]
        drawn = json.dumps(dark["data"]) + json.dumps(layout.get("shapes", [])) + json.dumps(layout.get("annotations", []))
        assert "#000000" not in drawn
        # the meaning colours stay
        assert json.dumps(before["data"]).count("#E69F00") == drawn.count("#E69F00")


def test_a_light_theme_or_an_unknown_one_leaves_the_chart_as_it_is():
    for figure in _figures():
        before = figure.to_json()
        assert for_theme(figure, "light").to_json() == before
        assert for_theme(figure, None).to_json() == before
