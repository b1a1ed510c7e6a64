"""A λ sweep really sweeps λ: λ = 0 scores the base model, λ = 1 the plain merge, any λ the merge
with those weights.

Checked through `Lab.sweep`, the function the Sweep page calls, on the tiny zoo (conftest). The
references come from a *separate* Lab (its own model and caches), so no cached score of the sweep
can answer for the reference. A sweep that ignored λ would merge with the recipe's own weights
(6.0 here) at every point; the score tests first check that this merge scores unlike both the base
model and the λ = 1 merge, so they can tell the two apart. Since the tiny zoo's adapters barely
change accuracies, a second pair of tests checks the merged bodies the sweep evaluates (caught on
their way into the evaluation): exactly zero at λ = 0, bitwise the plain merge at λ = 1.
"""

from __future__ import annotations

import pytest
import torch

from merging.engine.merge import merge_adapters
from merging.lab.lab import Lab
from merging.recipe.codec import recipe_from_dict
from merging.training.zoo import load_zoo, load_zoo_adapters


@pytest.fixture(scope="module")
def setting(tiny_zoo, one_thread):
    zoo = load_zoo(tiny_zoo)
    standard = [a for a in zoo.adapters if a.init == "standard"]
    adapters = load_zoo_adapters(zoo, [a.name for a in standard])
    return {
        "zoo": zoo,
        "entries": standard,
        "adapters": adapters,
        "sweep_lab": Lab(zoo.base_model, device="cpu"),
        "reference_lab": Lab(zoo.base_model, device="cpu"),
    }


def recipe(setting, weights, method: str = "task_arithmetic", **params):
    return recipe_from_dict(
        {
            "adapters": [{"path": str(e.path), "name": e.name, "weight": w} for e, w in zip(setting["entries"], weights)],
            "method": method,
            "device": "cpu",
            **params,
        }
    )


def merged_scores(evaluation) -> dict[str, float]:
    return {task: scores.merged for task, scores in evaluation.tasks.items()}


def reference(setting, weights, method: str = "task_arithmetic", **params):
    """The merge with these weights, scored by the other Lab."""
    run = setting["reference_lab"].merge_and_evaluate(setting["adapters"], recipe(setting, weights, method, **params))
    return run.evaluation


METHODS = [("task_arithmetic", {}), ("ties", {"density": 0.5})]
# The recipe's own weights in the sweeps below: a sweep that ignored λ would merge with these. On the
# tiny zoo they give merged scores unlike both the base model's and the λ = 1 merge's (checked).
OWN_WEIGHT = 6.0


@pytest.mark.slow
@pytest.mark.parametrize("method, params", METHODS)
def test_sweep_scores_the_base_model_at_zero_and_the_plain_merge_at_one(setting, method, params):
    n = len(setting["adapters"])
    grid = [[0.0] * n, [0.5] * n, [1.0] * n]
    swept = setting["sweep_lab"].sweep(setting["adapters"], recipe(setting, [OWN_WEIGHT] * n, method, **params), grid)
    assert [weights for weights, _ in swept] == grid
    at_zero, at_half, at_one = (evaluation for _, evaluation in swept)

    plain = reference(setting, [1.0] * n, method, **params)
    base = {task: scores.base for task, scores in plain.tasks.items()}
    ignoring_lambda = merged_scores(reference(setting, [OWN_WEIGHT] * n, method, **params))
    assert ignoring_lambda != base and ignoring_lambda != merged_scores(plain), "the case must tell λ apart"

    assert merged_scores(at_zero) == base
    assert merged_scores(at_one) == merged_scores(plain)
    assert merged_scores(at_half) == merged_scores(reference(setting, [0.5] * n, method, **params))
    # base and single-adapter scores do not depend on λ
    for evaluation in (at_zero, at_half, at_one):
        assert {t: s.base for t, s in evaluation.tasks.items()} == base
        assert {t: s.single for t, s in evaluation.tasks.items()} == {t: s.single for t, s in plain.tasks.items()}


@pytest.mark.slow
@pytest.mark.parametrize("method, params", METHODS)
def test_sweep_merges_a_zero_body_at_zero_and_the_plain_merge_body_at_one(setting, method, params, monkeypatch):
    """The bodies the sweep evaluates, caught on their way from merge_adapters to the evaluation:
    exactly zero at λ = 0 and, at λ = 1 and 0.5, bitwise the merge of a recipe with those weights."""
    import merging.lab.lab

    seen = []

    def spy(adapters, point, *args, **kwargs):
        merged = merge_adapters(adapters, point, *args, **kwargs)
        seen.append((point.weights, merged.adapter.modules))
        return merged

    monkeypatch.setattr(merging.lab.lab, "merge_adapters", spy)
    n = len(setting["adapters"])
    grid = [[0.0] * n, [0.5] * n, [1.0] * n]
    setting["sweep_lab"].sweep(setting["adapters"], recipe(setting, [OWN_WEIGHT] * n, method, **params), grid)
    monkeypatch.undo()
    assert [weights for weights, _ in seen] == grid
    zero_body = seen[0][1]
    assert zero_body and all(not bool(m.delta().any()) for m in zero_body.values())
    for weights, body in seen[1:]:
        expected = merge_adapters(setting["adapters"], recipe(setting, weights, method, **params)).adapter.modules
        assert set(body) == set(expected)
        for name in expected:
            assert torch.equal(body[name].delta(), expected[name].delta()), (weights, name)
        assert any(bool(m.delta().any()) for m in body.values())


@pytest.mark.slow
def test_two_adapter_grid_points_are_merges_with_those_two_weights(setting):
    """The heatmap mode: each (λ₁, λ₂) point is the merge with weights [λ₁, λ₂]."""
    assert len(setting["adapters"]) == 2
    grid = [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    swept = setting["sweep_lab"].sweep(setting["adapters"], recipe(setting, [1.0, 1.0]), grid)
    base = {task: scores.base for task, scores in swept[0][1].tasks.items()}
    for weights, evaluation in swept:
        assert merged_scores(evaluation) == merged_scores(reference(setting, weights)), weights
    assert merged_scores(swept[2][1]) == base
    # one adapter alone (the other at λ = 0) is that adapter's single score on its own task
    for weights, evaluation in swept[:2]:
        kept = setting["entries"][weights.index(1.0)]
        assert evaluation.tasks[kept.task].merged == evaluation.tasks[kept.task].single, weights
