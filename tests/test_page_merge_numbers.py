"""AppTest: the numbers the Merge page shows are the merge's, not just well-labelled.

After a run on the page, the same recipe (read back from the page's URL) is scored outside the app:
each task's merged accuracy by a hand-written loop over the task's evaluation texts on the base model
read with transformers (tests/test_search.py's `_hand_accuracies`), and base / single / normalised by
a fresh Lab. The metrics and the accuracy chart's bars must show exactly those values.
"""

from __future__ import annotations

import json

import pytest

from merging.adapters.lora import load_adapter
from merging.lab.lab import Lab
from merging.recipe.codec import recipe_from_dict
from tests.conftest import assert_page_ok, wait_for_job
from tests.test_search import _hand_accuracies


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_the_merge_page_shows_the_merges_own_numbers(app_test, tiny_zoo, one_thread):
    at = app_test.run()
    assert not at.exception
    at.selectbox(key="merge_method").set_value("ties").run()
    at.slider(key="weight:sms_spam-standard").set_value(0.7).run()
    next(b for b in at.button if b.label == "Run merge").click()
    at = wait_for_job(at.run(), "merge")
    assert_page_ok(at)

    shown = json.loads(at.query_params["recipe"][0] if isinstance(at.query_params["recipe"], list)
                       else at.query_params["recipe"])
    assert shown["method"] == "ties" and shown["adapters"][0]["weight"] == pytest.approx(0.7)
    recipe = recipe_from_dict({**shown, "device": "cpu",
                               "adapters": [{**a, "path": str(tiny_zoo / a["name"])} for a in shown["adapters"]]})
    hand = _hand_accuracies(tiny_zoo, recipe)
    adapters = [load_adapter(a.path) for a in recipe.adapters]
    evaluation = Lab(str(tiny_zoo.parent / "tiny-bert"), device="cpu").merge_and_evaluate(adapters, recipe).evaluation
    assert {t: s.merged for t, s in evaluation.tasks.items()} == hand  # the two oracles agree first
    average = evaluation.average()

    assert _metric(at, "Average merged accuracy") == f"{100 * sum(hand.values()) / len(hand):.1f}%"
    assert _metric(at, "Normalised (merged / single)") == f"{100 * average['normalized']:.1f}%"
    assert _metric(at, "Average single-adapter accuracy") == f"{100 * average['single']:.1f}%"

    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bars = next(c for c in charts if "per task" in str(c["layout"].get("title", {}).get("text", "")).lower())
    by_name = {str(t.get("name")).lower(): dict(zip(t["x"], t["y"])) for t in bars["data"] if t.get("type") == "bar"}
    for task, scores in evaluation.tasks.items():
        assert by_name["merged"][task] == pytest.approx(hand[task])
        assert by_name["single adapter"][task] == pytest.approx(scores.single)
        assert by_name["base body + task head"][task] == pytest.approx(scores.base)
