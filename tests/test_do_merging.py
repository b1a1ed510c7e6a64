"""DO-Merging's two switches: decouple (magnitude / direction) and orthogonalize."""

from __future__ import annotations

import math

import pytest
import torch

from merging.engine.merge import merge_adapters
from merging.methods.do_merging import (
    column_magnitudes,
    directions,
    merge_magnitudes,
    orthogonalize,
    pairwise_cosines,
    unit_columns,
)
from merging.recipe.codec import recipe_from_dict
from tests.conftest import TWO_LAYERS, random_adapter


def test_decoupled_parts_recombine_to_the_update():
    delta = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, -1.0]])
    magnitudes = column_magnitudes(delta)
    assert torch.allclose(magnitudes, torch.tensor([5.0, 0.0, math.sqrt(2)]))
    unit = directions(delta, magnitudes)
    assert torch.allclose(unit[:, 0], torch.tensor([0.6, 0.8]))
    assert torch.equal(unit[:, 1], torch.zeros(2))  # a zero column has no direction, and stays finite
    assert torch.allclose(unit * magnitudes, delta)


def test_merge_magnitudes_rules():
    m1, m2 = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 2.0])
    assert torch.allclose(merge_magnitudes([m1, m2], [1.0, 1.0], "mean"), torch.tensor([2.0, 3.0]))
    assert torch.allclose(merge_magnitudes([m1, m2], [1.0, 1.0], "sum"), torch.tensor([4.0, 6.0]))
    assert torch.allclose(merge_magnitudes([m1, m2], [1.0, 1.0], "max"), torch.tensor([3.0, 4.0]))
    # a common λ scales the mean (it is Σλm/n, not Σλm/Σλ)
    assert torch.allclose(merge_magnitudes([m1, m2], [0.5, 0.5], "mean"), torch.tensor([1.0, 1.5]))
    with pytest.raises(ValueError, match="unknown magnitude rule"):
        merge_magnitudes([m1], [1.0], "median")


def test_orthogonalize_lowers_the_cosines_and_reports_a_falling_loss():
    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(8, 6, generator=generator)
    dirs = [unit_columns(shared + 0.3 * torch.randn(8, 6, generator=generator)) for _ in range(3)]
    moved, report = orthogonalize(dirs, steps=100, lr=0.02, mu=0.1)
    before = torch.tensor(report.cosine_before)
    after = torch.tensor(report.cosine_after)
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    assert before[off_diagonal].abs().min() > 0.5  # they start alike
    assert after[off_diagonal].abs().max() < before[off_diagonal].abs().min()
    assert report.loss[-1] < report.loss[0]
    assert len(report.loss) == 100
    assert torch.allclose(pairwise_cosines(moved), after, atol=1e-6)
    assert 0.0 < report.relative_change < 1.0


def test_orthogonalize_penalty_keeps_directions_close():
    generator = torch.Generator().manual_seed(1)
    dirs = [torch.randn(5, 5, generator=generator) for _ in range(2)]
    _, loose = orthogonalize(dirs, steps=60, lr=0.02, mu=0.0)
    _, tight = orthogonalize(dirs, steps=60, lr=0.02, mu=100.0)
    assert tight.relative_change < loose.relative_change


def test_orthogonal_inputs_barely_move():
    first = torch.zeros(4, 4)
    first[0, 0] = 1.0
    second = torch.zeros(4, 4)
    second[1, 1] = 1.0
    moved, report = orthogonalize([first, second], steps=20, lr=0.01, mu=1.0)
    assert report.loss[0] == pytest.approx(0.0)
    assert torch.allclose(moved[0], first, atol=1e-6)


def _recipe(names, **fields):
    return recipe_from_dict({"adapters": [{"path": n} for n in names], **fields})


def test_decouple_with_one_adapter_returns_it():
    adapter = random_adapter("a", TWO_LAYERS, seed=3)
    merged = merge_adapters([adapter], _recipe(["a"], do_merging={"decouple": True}))
    for module in TWO_LAYERS:
        assert torch.allclose(merged.adapter.modules[module].delta(), adapter.modules[module].delta(), atol=1e-5)


def test_decouple_of_identical_adapters_returns_the_adapter_for_every_method():
    adapter = random_adapter("a", TWO_LAYERS, seed=4)
    twins = [adapter, random_adapter("b", TWO_LAYERS, seed=4)]
    for method in ("task_arithmetic", "ties", "knots"):
        merged = merge_adapters(twins, _recipe(["a", "b"], method=method, do_merging={"decouple": True}))
        for module in TWO_LAYERS:
            expected = adapter.modules[module].delta()
            assert torch.allclose(merged.adapter.modules[module].delta(), expected, atol=1e-4), method


def test_decouple_merges_magnitude_and_direction_separately():
    # adapter a is large on feature 0, adapter b small; directions orthogonal in the output space
    a = random_adapter("a", {"m": (2, 2)}, rank=1, seed=0)
    b = random_adapter("b", {"m": (2, 2)}, rank=1, seed=1)
    merged = merge_adapters([a, b], _recipe(["a", "b"], do_merging={"decouple": True}))
    delta_a, delta_b = a.modules["m"].delta(), b.modules["m"].delta()
    result = merged.adapter.modules["m"].delta()
    expected_magnitude = (column_magnitudes(delta_a) + column_magnitudes(delta_b)) / 2
    assert torch.allclose(column_magnitudes(result), expected_magnitude, atol=1e-5)
    expected_direction = unit_columns(unit_columns(delta_a) + unit_columns(delta_b))
    assert torch.allclose(unit_columns(result), expected_direction, atol=1e-5)


def test_orthogonalize_switch_reports_per_module():
    adapters = [random_adapter(n, TWO_LAYERS, seed=i) for i, n in enumerate("ab")]
    merged = merge_adapters(
        adapters, _recipe(["a", "b"], do_merging={"orthogonalize": True, "steps": 10, "lr": 0.01, "mu": 1.0})
    )
    for module in TWO_LAYERS:
        report = merged.reports[module].orthogonalize
        assert report is not None and len(report.loss) == 10
        assert len(report.cosine_before) == 2
    # with zero steps nothing moves: the result is plain task arithmetic
    still = merge_adapters(adapters, _recipe(["a", "b"], do_merging={"orthogonalize": True, "steps": 0}))
    for module in TWO_LAYERS:
        expected = adapters[0].modules[module].delta() + adapters[1].modules[module].delta()
        assert torch.allclose(still.adapter.modules[module].delta(), expected, atol=1e-4)


@pytest.mark.parametrize("size", [16, 256])
def test_default_settings_lower_the_loss_at_any_module_size(size):
    """lr and μ are relative: the defaults must help on a small and on a large module alike."""
    generator = torch.Generator().manual_seed(size)
    shared = torch.randn(size, size, generator=generator)
    dirs = [unit_columns(shared + torch.randn(size, size, generator=generator)) for _ in range(4)]
    moved, report = orthogonalize(dirs)  # steps=50, lr=0.01, mu=1.0
    assert report.loss[-1] < 0.5 * report.loss[0]
    assert 0.0 < report.relative_change < 0.3  # a small perturbation, as the method intends
    for before, after in zip(dirs, moved):
        assert torch.allclose(torch.linalg.matrix_norm(after), torch.linalg.matrix_norm(before), rtol=0.3)
