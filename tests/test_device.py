"""The library on the device it would use: merges, DO-Merging and evaluation against CPU references.

On CI (no GPU) these run on the CPU. `MERGESCOPE_TEST_DEVICE=cuda pytest tests/test_device.py` runs
them on a GPU, where they check the CUDA path against the same float64 CPU references; asking for
CUDA where there is none is an error, not a skip.
"""

from __future__ import annotations

import os

import pytest
import torch

from merging.engine.merge import merge_adapters
from merging.evaluation.evaluate import EvalSet, Evaluator, head_of
from merging.lab.lab import Lab
from merging.methods import get_method
from merging.models.devices import resolve_device
from merging.recipe.codec import recipe_from_dict
from merging.training.zoo import load_zoo, load_zoo_adapters
from tests.conftest import random_adapter
from tests.test_evaluation import TARGETS, TEXTS, _hand_loop, _random_adapter
from tests.tiny_models import tiny_bert

DEVICE = resolve_device(os.environ.get("MERGESCOPE_TEST_DEVICE", "cpu"))

# Small modules take the plain path; the 400-column one takes the streamed, row-blocked path.
MODULES = {
    "layer.0.query": (12, 10),
    "layer.0.value": (12, 10),
    "layer.1.query": (512, 400),
}


@pytest.fixture(scope="module")
def adapters():
    return [random_adapter(f"task{i}", MODULES, rank=r, scale=0.5, seed=10 + i) for i, r in enumerate([4, 2, 8])]


def _recipe(adapters, method: str, weights=(0.7, 1.0, 0.4), **fields):
    entries = [{"path": a.name, "weight": w} for a, w in zip(adapters, weights)]
    return recipe_from_dict({"adapters": entries, "method": method, "device": DEVICE.type, **fields})


def _keep_top(delta: torch.Tensor, density: float) -> torch.Tensor:
    """The int(density·numel) entries of largest |x|, the rest 0 (PEFT's magnitude prune), in float64."""
    k = int(density * delta.numel())
    kept = torch.zeros(delta.numel(), dtype=torch.float64)
    index = torch.topk(delta.abs().reshape(-1), k).indices
    kept[index] = delta.reshape(-1)[index]
    return kept.reshape(delta.shape)


def _reference(adapters, method: str, weights, density: float) -> dict[str, torch.Tensor]:
    """Each method in float64 on the CPU, written in the test suite from its paper / mergekit, not the
    library's own dense form: Σ λᵢ sᵢBᵢAᵢ by hand, TIES and KnOTS from test_method_oracles, Model
    Breadcrumbs from mergekit's magnitude_outliers (test_mergekit_config), TSV from test_tsv."""
    from tests.test_mergekit_config import mergekit_breadcrumbs
    from tests.test_method_oracles import knots_reference, ties_reference
    from tests.test_tsv import tsv_reference

    out = {}
    for module in MODULES:
        # built in float64 from the factors: float32 rounding noise would make KnOTS' concatenation full-rank
        deltas = [m.scale * (m.B.double() @ m.A.double()) for m in (a.modules[module] for a in adapters)]
        if method == "task_arithmetic":
            out[module] = sum(w * d for w, d in zip(weights, deltas))
        elif method == "ties":
            out[module] = ties_reference(deltas, weights, density, "total")
        elif method == "magnitude_prune":
            out[module] = sum(w * _keep_top(d, density) for w, d in zip(weights, deltas))
        elif method == "breadcrumbs":
            gamma = get_method("breadcrumbs").param("gamma").default
            out[module] = sum(w * mergekit_breadcrumbs(d, density, gamma) for w, d in zip(weights, deltas))
        elif method == "knots":
            out[module] = knots_reference(deltas, weights, "ties", density, "total")
        elif method == "tsv":
            out[module] = tsv_reference(deltas, weights)
        else:
            raise AssertionError(f"no oracle for {method}")
    return out


def test_the_device_under_test_is_the_one_asked_for():
    asked = os.environ.get("MERGESCOPE_TEST_DEVICE", "cpu")
    assert DEVICE.type == torch.device(asked).type


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "magnitude_prune", "breadcrumbs", "knots", "tsv"])
def test_deterministic_methods_on_the_device_equal_the_float64_reference(adapters, method):
    weights = [0.7, 1.0, 0.4]
    merged = merge_adapters(adapters, _recipe(adapters, method, weights, density=0.3, knots_inner="ties"))
    assert merged.device == str(DEVICE)
    expected = _reference(adapters, method, weights, 0.3)
    for module, reference in expected.items():
        got = merged.adapter.modules[module].delta().double()
        error = float(torch.linalg.matrix_norm(got - reference) / torch.linalg.matrix_norm(reference))
        assert error < 1e-4, (module, error)  # float32 on the device against float64


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_on_the_device_is_seeded_unbiased_and_keeps_about_density(adapters, method):
    weights = [1.0, 1.0, 1.0]
    first = merge_adapters(adapters, _recipe(adapters, method, weights, density=0.25, seed=3))
    again = merge_adapters(adapters, _recipe(adapters, method, weights, density=0.25, seed=3))
    other = merge_adapters(adapters, _recipe(adapters, method, weights, density=0.25, seed=4))
    big = "layer.1.query"
    delta = first.adapter.modules[big].delta()
    assert torch.equal(delta, again.adapter.modules[big].delta())  # same seed, same device: same merge
    assert not torch.equal(delta, other.adapter.modules[big].delta())
    if method == "dare_linear":
        # each kept entry is x / density: the merge is an unbiased estimate of task arithmetic
        exact = sum(a.modules[big].delta() for a in adapters)
        error = float(torch.linalg.matrix_norm(delta - exact) / torch.linalg.matrix_norm(exact))
        assert 0.5 < error < 3.0  # the estimator's spread, not a broken merge
        assert float((delta * exact).sum() / (exact * exact).sum()) == pytest.approx(1.0, abs=0.05)
    # the merge comes back factored (B·A), so a dropped entry is zero only up to the SVD's rounding
    # (cuSOLVER's Jacobi SVD leaves ~1e-5 of the largest entry)
    kept = float((delta.abs() > 1e-3 * delta.abs().max()).float().mean())
    # a position survives if any of the 3 updates keeps it: 1 − (1 − 0.25)³ ≈ 0.58 (TIES can drop more)
    assert 0.3 < kept < 0.62


def test_do_merging_on_the_device_lowers_interference_and_matches_the_cpu(adapters):
    options = {"decouple": True, "orthogonalize": True, "steps": 30}
    merged = merge_adapters(adapters, _recipe(adapters, "task_arithmetic", do_merging=options))
    report = merged.reports["layer.1.query"].orthogonalize
    assert report.loss[-1] < report.loss[0]
    if DEVICE.type != "cpu":
        on_cpu = merge_adapters(adapters, recipe_from_dict({
            "adapters": [{"path": a.name, "weight": w} for a, w in zip(adapters, (0.7, 1.0, 0.4))],
            "method": "task_arithmetic", "device": "cpu", "do_merging": options,
        }))
        for module in MODULES:
            a, b = merged.adapter.modules[module].delta(), on_cpu.adapter.modules[module].delta()
            assert float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b)) < 1e-3, module


def test_evaluator_on_the_device_equals_a_hand_written_cpu_loop():
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    cpu_model, _ = tiny_bert(num_labels=2, seed=0)
    evaluator = Evaluator(model, tokenizer, [EvalSet("toy", ["neg", "pos"], TEXTS, TARGETS)], device=DEVICE, batch_size=4)
    assert next(evaluator.model.parameters()).device.type == DEVICE.type
    for seed in range(3):
        adapter = _random_adapter(cpu_model, seed)
        expected = _hand_loop(cpu_model, tokenizer, adapter)
        assert evaluator.accuracy("toy", head_of(adapter, "classifier"), adapter.modules) == expected


def test_lab_on_the_device_reproduces_the_recorded_single_task_accuracies(tiny_zoo):
    zoo = load_zoo(tiny_zoo)
    lab = Lab(zoo.base_model, device=DEVICE.type)
    adapters = load_zoo_adapters(zoo, [a.name for a in zoo.adapters])
    for adapter, entry in zip(adapters, zoo.adapters):
        recipe = recipe_from_dict({"adapters": [{"path": str(entry.path), "name": entry.name}], "device": DEVICE.type})
        run = lab.merge_and_evaluate([adapter], recipe)
        # recorded on the CPU: one example may flip where two logits are within float error
        size = len(lab.evaluator.eval_sets[entry.task].texts)
        assert abs(run.evaluation.tasks[entry.task].merged - entry.single_task_accuracy) <= 1 / size + 1e-9, entry.name
