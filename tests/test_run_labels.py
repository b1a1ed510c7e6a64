"""The one-line recipe a run's header states: every setting that changes the merge, from to_dict() alone."""

from __future__ import annotations

from merging.methods.do_merging import DoMergingOptions
from merging.recipe.codec import AdapterRef, Recipe
from merging.store.run_labels import describe_recipe, run_label


def test_a_plain_recipe_reads_as_one_line():
    recipe = Recipe(adapters=(AdapterRef("zoo/sst2-standard", 1.0, "sst2-standard"), AdapterRef("zoo/trec", 0.6)),
                    method="task_arithmetic")
    text = describe_recipe(recipe.to_dict())
    assert text.startswith("Task arithmetic of")
    assert "sst2-standard ×1, trec ×0.6" in text  # a nameless adapter is named after its folder
    assert "no OSRM" in text and "exact rank" in text and "seed 0" in text
    assert "DO" not in text  # switches that are off are not listed


def test_every_setting_that_changes_the_merge_is_stated():
    recipe = Recipe(
        adapters=(AdapterRef("a", 1.0, "a", parameters={"density": 0.3}), AdapterRef("b", 0.5, "b")),
        method="ties", parameters={"density": 0.5, "sign": "total"}, rank=4, seed=3, osrm="twins",
        do_merging=DoMergingOptions(decouple=True, orthogonalize=True, steps=20, lr=0.05, mu=2.0),
    )
    text = describe_recipe(recipe.to_dict())
    for part in ("TIES (density 0.5, sign total)", "a ×1 [density 0.3]", "b ×0.5", "OSRM twins", "rank 4",
                 "DO decouple (mean)", "DO orthogonalize (20 steps, lr 0.05, μ 2)", "seed 3"):
        assert part in text, (part, text)


def test_run_labels_name_unstored_runs_as_such():
    assert run_label(None) == "unstored run"
    assert run_label(12) == "run 12"
    assert run_label(12, "plain TA") == "'plain TA' (run 12)"
