"""Model Breadcrumbs: the band between the largest gamma and the smallest entries, as mergekit means it."""

from __future__ import annotations

import pytest
import torch

from merging.adapters.lora import LoraModule
from merging.engine.merge import merge_adapters
from merging.methods import get_method, keep_top_magnitude
from merging.methods.breadcrumbs import band_counts, keep_magnitude_band
from merging.recipe.codec import recipe_from_dict
from tests.conftest import TWO_LAYERS, random_adapter


def mergekit_style_band(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """An independent reference written from mergekit's `magnitude_outliers`: sort ascending by |x|,
    drop the n_bot smallest and the n_top largest (float64, a full sort; n_top = 0 handled)."""
    if density >= 1:
        return delta.clone()
    numel = delta.numel()
    target = int(density * numel)
    n_top = int(gamma * numel)
    n_bot = numel - target - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    order = torch.sort(delta.abs().reshape(-1).double(), stable=True).indices
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[order[n_bot : numel - n_top]] = True
    return torch.where(mask.reshape(delta.shape), delta, torch.zeros_like(delta))


def test_breadcrumbs_hand_example_drops_the_largest_and_the_smallest():
    delta = torch.tensor([[1.0, -5.0, 3.0, 0.5], [2.0, -4.0, 0.1, 6.0]])
    # 8 entries: gamma 0.25 drops the 2 largest (6, -5); density 0.5 keeps the next 4 (-4, 3, 2, 1)
    kept = keep_magnitude_band(delta, density=0.5, gamma=0.25)
    assert torch.equal(kept, torch.tensor([[1.0, 0.0, 3.0, 0.0], [2.0, -4.0, 0.0, 0.0]]))


def test_when_density_and_gamma_overlap_fewer_are_dropped_from_the_top():
    delta = torch.tensor([[4.0, -3.0, 2.0, 1.0]])
    # keep int(0.75·4) = 3; gamma asks to drop 2 from the top but only 1 can go
    assert band_counts(4, 0.75, 0.5) == (1, 3)
    assert torch.equal(keep_magnitude_band(delta, 0.75, 0.5), torch.tensor([[0.0, -3.0, 2.0, 1.0]]))


def test_density_one_keeps_the_update_whatever_gamma():
    delta = torch.tensor([[4.0, -3.0, 2.0, 1.0]])
    assert torch.equal(keep_magnitude_band(delta, 1.0, 0.5), delta)


def test_gamma_zero_is_magnitude_pruning_where_mergekit_would_drop_everything():
    delta = torch.randn(30, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep_magnitude_band(delta, 0.3, 0.0), keep_top_magnitude(delta, 0.3))


@pytest.mark.parametrize("shape", [(17, 23), (1024, 1024)])  # the plain cut and the sampled fast path
@pytest.mark.parametrize("density, gamma", [(0.9, 0.01), (0.5, 0.1), (0.2, 0.3), (0.6, 0.6)])
def test_the_band_equals_the_sort_based_reference(shape, density, gamma):
    delta = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(keep_magnitude_band(delta, density, gamma), mergekit_style_band(delta, density, gamma))


def test_ties_at_the_cut_keep_exactly_the_band_count():
    delta = torch.randint(-3, 4, (1024, 1024), generator=torch.Generator().manual_seed(2)).float()
    n_top, n_keep = band_counts(delta.numel(), 0.4, 0.05)
    kept = keep_magnitude_band(delta, 0.4, 0.05)
    assert int((kept != 0).sum()) == n_keep
    # the top 5% are all 3s (2/7 of the entries are ±3): n_top of them go, the rest stay
    assert int((kept.abs() == 3).sum()) == int((delta.abs() == 3).sum()) - n_top


def _adapters():
    return [random_adapter(f"t{i}", TWO_LAYERS, rank=r, seed=30 + i) for i, r in enumerate([4, 2, 3])]


def test_breadcrumbs_merge_is_the_weighted_sum_of_the_bands():
    adapters = _adapters()
    weights = [1.0, 0.5, -0.7]
    recipe = recipe_from_dict({"adapters": [{"path": a.name, "weight": w} for a, w in zip(adapters, weights)],
                               "method": "breadcrumbs", "density": 0.6, "device": "cpu"})
    merged = merge_adapters(adapters, recipe)
    for module in TWO_LAYERS:
        expected = sum(w * mergekit_style_band(a.modules[module].delta().double(), 0.6, 0.01)
                       for a, w in zip(adapters, weights))
        assert torch.allclose(merged.adapter.modules[module].delta().double(), expected, atol=1e-5)


def test_breadcrumbs_ties_elects_a_sign_over_the_bands():
    a = torch.tensor([[4.0, -1.0, 0.5, 2.0, 3.0]])
    b = torch.tensor([[2.0, 3.0, -0.2, -1.0, -2.5]])
    # 5 entries, gamma 0.2 drops 1 from the top, density 0.6 keeps the next 3:
    # a -> [0, -1, 0, 2, 3] (4 and 0.5 dropped); b -> [2, 0, 0, -1, -2.5] (3 and -0.2 dropped)
    # total sign per entry: [+, -, +(0), +, +(0.5)]; agreeing mean: [2, -1, 0, 2, 3]
    merged = get_method("breadcrumbs_ties").merge_dense([a, b], [1.0, 1.0], density=0.6, gamma=0.2)
    assert torch.equal(merged, torch.tensor([[2.0, -1.0, 0.0, 2.0, 3.0]]))


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("gamma", [0.0, 0.02, 0.5])
def test_streamed_breadcrumbs_from_factors_equal_the_dense_merge(method, gamma):
    generator = torch.Generator().manual_seed(3)
    modules = [
        LoraModule(torch.randn(16, 640, generator=generator), torch.randn(768, 16, generator=generator), 0.5)
        for _ in range(3)
    ]
    modules.append(None)  # an adapter lacking the module contributes zero
    weights = [0.3, 1.0, 0.7, 0.9]
    spec = get_method(method)
    dense = [m.delta() if m is not None else torch.zeros(768, 640) for m in modules]
    expected = spec.merge_dense(dense, weights, density=0.4, gamma=gamma)
    streamed = spec.merge_streamed(modules, weights, density=0.4, gamma=gamma)
    assert torch.allclose(streamed, expected, atol=1e-5, rtol=1e-5)
    kept_first = keep_magnitude_band(dense[0], 0.4, gamma)
    assert int((kept_first != 0).sum()) == int(0.4 * dense[0].numel())
