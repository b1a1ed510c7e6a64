"""Independent oracles for the merge methods whose result is not a plain weighted sum.

Every merge here goes through the public entry point, `merging.engine.merge.merge_adapters(adapters,
recipe)`, with a recipe built by ONE helper (`_recipe`), and is compared with a reference written
from the papers in this file, in float64, without using merging.methods:

* TIES with unequal weights: trim (keep the top int(density·numel) entries by |x|), multiply by λᵢ,
  elect a sign per entry (sign of Σ, or of Σ sign, ties to +), mean over the agreeing non-zero
  entries (divided by their count, not by Σλ);
* KnOTS-TIES: the SVD of the concatenated dense updates [ΔW₁ … ΔWₙ] = UΣ[V₁ᵀ … Vₙᵀ], TIES on the
  blocks ΣVᵢᵀ = UᵀΔWᵢ, mapped back with U;
* DARE / dare_linear: the random masks cannot be reproduced without copying the implementation, so
  the oracles are statistical: (1) over many seeds the mean of the merges converges to the
  unsparsified weighted sum (DARE's rescale makes it unbiased), within 5 standard errors per entry;
  (2) on updates built so that each adapter's masks can be read back from the merge, the kept
  fraction of each mask is within 5 binomial standard deviations of the density, every kept entry is
  exactly x/p, and two adapters' masks are independent (they agree on p² + (1−p)² of the entries).

Tests that could pass for the wrong reason also check that the wrong answer is far off (e.g. TIES
electing on the unweighted updates, DARE without its 1/p rescale), so the case really tells them apart.
"""

from __future__ import annotations

import math

import pytest
import torch

from merging.adapters.lora import Adapter, LoraModule
from merging.engine.merge import merge_adapters
from merging.recipe.codec import recipe_from_dict
from tests.conftest import TWO_LAYERS, random_adapter

Z_LIMIT = 5.0  # standard errors allowed between a statistic and its expectation


def _recipe(method: str, weights, **params):
    """The only place this file builds a recipe (legacy flat keys: density, sign, knots_inner)."""
    data = {
        "adapters": [{"path": f"adapter{i}", "weight": float(w)} for i, w in enumerate(weights)],
        "method": method,
        "device": "cpu",
        **params,
    }
    return recipe_from_dict(data)


def _merged(adapters: list[Adapter], recipe) -> dict[str, torch.Tensor]:
    """The merged dense updates, float64, by module name."""
    result = merge_adapters(adapters, recipe)
    return {name: module.delta().double() for name, module in result.adapter.modules.items()}


def _dense64(module: LoraModule) -> torch.Tensor:
    return (module.B.double() * module.scale) @ module.A.double()


# ----------------------------------------------------------------------------------------------
# A float64 TIES written from the paper


def ties_reference(deltas: list[torch.Tensor], weights, density: float, sign_rule: str = "total") -> torch.Tensor:
    """Trim → λ → elect → disjoint mean, one entry at a time in spirit, on float64 tensors."""
    trimmed = []
    for delta in deltas:
        k = int(density * delta.numel())
        kept = torch.zeros(delta.numel(), dtype=torch.float64)
        if k > 0:
            index = torch.topk(delta.abs().reshape(-1), k).indices
            kept[index] = delta.reshape(-1)[index]
        trimmed.append(kept.reshape(delta.shape))
    weighted = torch.stack([w * t for w, t in zip(weights, trimmed)])
    votes = weighted.sum(0) if sign_rule == "total" else torch.sign(weighted).sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0).double()
    agrees = (weighted != 0) & (torch.sign(weighted) == elected)
    count = agrees.sum(0)
    total = (weighted * agrees).sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def _close(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest error relative to the expected matrix's largest entry."""
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-30))


@pytest.fixture
def adapters() -> list[Adapter]:
    return [random_adapter(f"task{i}", TWO_LAYERS, rank=r, seed=10 + i) for i, r in enumerate([4, 2, 4])]


def test_ties_reference_is_right_on_a_hand_checked_example():
    """The reference itself, on numbers worked out by hand (so the oracle is not just code vs code)."""
    first = torch.tensor([[3.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    second = torch.tensor([[-2.0, 4.0], [1.0, -0.1]], dtype=torch.float64)
    # density 0.5 keeps 2 of 4: first keeps 3 and 2, second keeps -2 and 4
    # λ = (1, 2): weighted first [[3, 0], [0, 2]], second [[-4, 8], [0, 0]]
    # votes (total): [[-1, 8], [0, 2]] → signs [[-, +], [+, +]]
    # agreeing means: [[-4, 8], [0 (nobody), 2]]
    expected = torch.tensor([[-4.0, 8.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.equal(ties_reference([first, second], [1.0, 2.0], 0.5), expected)
    # frequency: entry (0,0) has one + and one -: a tie goes to +, so the mean is 3
    frequency = torch.tensor([[3.0, 8.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.equal(ties_reference([first, second], [1.0, 2.0], 0.5, "frequency"), frequency)


@pytest.mark.parametrize("sign_rule", ["total", "frequency"])
@pytest.mark.parametrize("weights", [(1.0, 0.3, 0.7), (0.9, -0.4, 1.5)])
def test_ties_with_unequal_weights_matches_a_float64_reference(adapters, weights, sign_rule):
    density = 0.4
    merged = _merged(adapters, _recipe("ties", weights, density=density, sign=sign_rule))
    wrong_order_differs = False
    for name in TWO_LAYERS:
        deltas = [_dense64(a.modules[name]) for a in adapters]
        expected = ties_reference(deltas, weights, density, sign_rule)
        assert _close(merged[name], expected) < 2e-5, name
        # the case tells the paper's order from electing on the unweighted updates (λ after the vote)
        unweighted_vote = ties_reference(deltas, [1.0] * len(weights), density, sign_rule)
        signs = torch.where(unweighted_vote >= 0, 1.0, -1.0).double()
        trimmed = [ties_reference([d], [1.0], density) for d in deltas]
        weighted = torch.stack([w * t for w, t in zip(weights, trimmed)])
        agrees = (weighted != 0) & (torch.sign(weighted) == signs)
        after = (weighted * agrees).sum(0) / agrees.sum(0).clamp(min=1)
        wrong_order_differs |= _close(after, expected) > 1e-3
    if sign_rule == "total" or min(weights) < 0:  # positive λ cannot change a head count
        assert wrong_order_differs


def test_ties_with_density_one_and_equal_weights_is_the_disjoint_mean(adapters):
    merged = _merged(adapters, _recipe("ties", [1.0, 1.0, 1.0], density=1.0))
    for name in TWO_LAYERS:
        stacked = torch.stack([_dense64(a.modules[name]) for a in adapters])
        sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
        agree = torch.sign(stacked) == sign
        expected = (stacked * agree).sum(0) / agree.sum(0)
        assert _close(merged[name], expected) < 2e-5, name


# ----------------------------------------------------------------------------------------------
# KnOTS


def knots_reference(deltas: list[torch.Tensor], weights, inner: str, density: float, sign_rule: str) -> torch.Tensor:
    """SVD of [ΔW₁ … ΔWₙ] in float64, the inner merge on the blocks UᵀΔWᵢ = ΣVᵢᵀ, back with U."""
    concatenated = torch.cat(deltas, dim=1)
    U, S, _ = torch.linalg.svd(concatenated, full_matrices=False)
    rank = int((S > S[0] * max(concatenated.shape) * 1e-12).sum())
    U = U[:, :rank]
    blocks = [U.T @ delta for delta in deltas]
    if inner == "ties":
        merged_block = ties_reference(blocks, weights, density, sign_rule)
    else:
        merged_block = sum(w * b for w, b in zip(weights, blocks))
    return U @ merged_block


@pytest.mark.parametrize("sign_rule, density", [("total", 0.3), ("frequency", 1.0)])
def test_knots_ties_matches_a_float64_dense_reference(adapters, sign_rule, density):
    """Any sign convention of the singular vectors gives the same merge here: flipping a row of
    every block flips its votes and its mean together, as long as no vote is exactly 0 (a tie goes
    to +). With the total rule a zero sum does not happen on random data; with the frequency rule
    three untrimmed adapters (density 1) never tie. The tied case is the next test."""
    weights = (1.0, 0.5, 0.8)
    recipe = _recipe("knots", weights, knots_inner="ties", density=density, sign=sign_rule)
    merged = _merged(adapters, recipe)
    for name in TWO_LAYERS:
        deltas = [_dense64(a.modules[name]) for a in adapters]
        expected = knots_reference(deltas, weights, "ties", density, sign_rule)
        assert _close(merged[name], expected) < 1e-4, name
        # KnOTS-TIES is not TIES on the raw updates: the aligned space changes what is kept
        assert _close(ties_reference(deltas, weights, density, sign_rule), expected) > 1e-2, name


def test_knots_ties_with_tied_frequency_votes_matches_the_reference_in_its_own_frame(adapters):
    """With trimming, frequency votes tie (one +, one −, one trimmed) and a tie goes to +, so the
    result depends on the arbitrary sign of each singular vector. The merged adapter's B is KnOTS'
    U (factored output, exact rank); the reference takes its column signs from it and must then
    agree to round-off. (Which sign the library picks is LAPACK's choice, which is why the result
    changes with the order of the adapters: see the order test at the end of this file.)"""
    weights, density = (1.0, 0.5, 0.8), 0.3
    result = merge_adapters(adapters, _recipe("knots", weights, knots_inner="ties", density=density, sign="frequency"))
    for name in TWO_LAYERS:
        module = result.adapter.modules[name]
        deltas = [_dense64(a.modules[name]) for a in adapters]
        concatenated = torch.cat(deltas, dim=1)
        U, _, _ = torch.linalg.svd(concatenated, full_matrices=False)
        U_library = module.B.double() * module.scale
        assert U_library.shape[1] == sum(a.modules[name].rank for a in adapters)
        U = U[:, : U_library.shape[1]]
        assert torch.allclose((U.T @ U_library).abs(), torch.eye(U.shape[1], dtype=torch.float64), atol=1e-4)
        U = U * torch.sign((U * U_library).sum(0))
        expected = U @ ties_reference([U.T @ d for d in deltas], weights, density, "frequency")
        assert _close(module.delta().double(), expected) < 1e-4, name


def test_knots_with_task_arithmetic_inside_is_the_weighted_sum(adapters):
    """U spans every update's columns, so U·Σλᵢ(UᵀΔWᵢ) = ΣλᵢΔWᵢ: the alignment loses nothing."""
    weights = (1.0, -0.5, 0.25)
    merged = _merged(adapters, _recipe("knots", weights, knots_inner="task_arithmetic"))
    for name in TWO_LAYERS:
        deltas = [_dense64(a.modules[name]) for a in adapters]
        expected = sum(w * d for w, d in zip(weights, deltas))
        assert _close(merged[name], expected) < 2e-5, name
        assert _close(merged[name], knots_reference(deltas, weights, "task_arithmetic", 1.0, "total")) < 2e-5


# ----------------------------------------------------------------------------------------------
# DARE: the expectation over masks


def _z_max(samples_mean: torch.Tensor, expected: torch.Tensor, standard_error: torch.Tensor) -> float:
    return float(((samples_mean - expected).abs() / standard_error).max())


@pytest.mark.parametrize("method", ["dare_linear"])
def test_dare_merges_average_over_seeds_to_the_unsparsified_sum(adapters, method):
    """E[mask/p ⊙ x] = x: the mean of N seeded merges is Σλᵢ ΔWᵢ within Z_LIMIT standard errors,
    where one entry's variance is Σ λᵢ² xᵢ² (1 − p)/p over the N merges."""
    weights, density, seeds = (1.0, 0.6, -0.8), 0.5, 1000
    total = None
    for seed in range(seeds):
        merged = _merged(adapters, _recipe(method, weights, density=density, seed=seed))
        total = merged if total is None else {n: total[n] + merged[n] for n in merged}
    for name in TWO_LAYERS:
        deltas = [_dense64(a.modules[name]) for a in adapters]
        expected = sum(w * d for w, d in zip(weights, deltas))
        variance = sum((w * d) ** 2 for w, d in zip(weights, deltas)) * (1 - density) / density
        standard_error = (variance / seeds).sqrt()
        mean = total[name] / seeds
        assert _z_max(mean, expected, standard_error) < Z_LIMIT, name
        # without DARE's 1/p rescale the mean would be p·Σλᵢ ΔWᵢ: far outside the tolerance
        assert _z_max(mean, density * expected, standard_error) > 3 * Z_LIMIT, name


def test_dare_linear_with_density_one_is_task_arithmetic(adapters):
    weights = (1.0, 0.6, -0.8)
    merged = _merged(adapters, _recipe("dare_linear", weights, density=1.0, seed=3))
    for name in TWO_LAYERS:
        expected = sum(w * _dense64(a.modules[name]) for w, a in zip(weights, adapters))
        assert _close(merged[name], expected) < 2e-5, name


# ----------------------------------------------------------------------------------------------
# DARE: the masks read back from a merge


def _positive_adapter(name: str, low: float, high: float, shape=(40, 30), seed: int = 0) -> Adapter:
    """A rank-1 update with every entry in [low², high²]: B and A drawn in [low, high]."""
    generator = torch.Generator().manual_seed(seed)
    d_out, d_in = shape
    A = low + (high - low) * torch.rand(1, d_in, generator=generator)
    B = low + (high - low) * torch.rand(d_out, 1, generator=generator)
    return Adapter(name=name, modules={"layer.0.proj": LoraModule(A, B, 1.0)})


def _read_masks(merged: torch.Tensor, small: torch.Tensor, large: torch.Tensor, density: float):
    """The two masks, from merged = (m₁·small + m₂·large)/p with large ≫ small: each entry is one of
    0, small/p, large/p, (small+large)/p; the nearest one must be within round-off."""
    candidates = torch.stack([torch.zeros_like(small), small, large, small + large]) / density
    distance = (candidates - merged).abs()
    best = distance.argmin(dim=0)
    residual = float(distance.min(dim=0).values.max())
    return best % 2 == 1, best >= 2, residual


@pytest.mark.parametrize("density", [0.3, 0.5, 0.8])
def test_dare_masks_keep_the_density_fraction_independently_per_adapter(density):
    small = _positive_adapter("small", 1.0, 1.4, seed=1)  # entries in [1, 1.96]
    large = _positive_adapter("large", 3.0, 4.0, seed=2)  # entries in [9, 16]
    name = "layer.0.proj"
    x_small, x_large = _dense64(small.modules[name]), _dense64(large.modules[name])
    masks_by_seed = []
    for seed in (0, 1):
        merged = _merged([small, large], _recipe("dare_linear", [1.0, 1.0], density=density, seed=seed))[name]
        kept_small, kept_large, residual = _read_masks(merged, x_small, x_large, density)
        # every entry is exactly one of the four sums: kept entries are x/p, dropped ones 0
        assert residual < 1e-4 * float(x_large.max()) / density
        n = kept_small.numel()
        bound = Z_LIMIT * math.sqrt(n * density * (1 - density))
        for mask in (kept_small, kept_large):
            assert abs(int(mask.sum()) - n * density) < bound, (int(mask.sum()), n * density)
        # independent masks agree on p² + (1-p)² of the entries (one shared mask would agree on all)
        agree_p = density**2 + (1 - density) ** 2
        agreement = int((kept_small == kept_large).sum())
        assert abs(agreement - n * agree_p) < Z_LIMIT * math.sqrt(n * agree_p * (1 - agree_p))
        masks_by_seed.append((kept_small, kept_large))
    # another seed draws other masks; the same seed the same ones
    assert not torch.equal(masks_by_seed[0][0], masks_by_seed[1][0])
    again = _merged([small, large], _recipe("dare_linear", [1.0, 1.0], density=density, seed=0))[name]
    assert torch.equal(_read_masks(again, x_small, x_large, density)[0], masks_by_seed[0][0])


def test_dare_ties_keeps_only_entries_of_the_masks_and_elects_signs():
    """DARE-TIES on two updates of opposite sign everywhere: each entry is the larger-mass survivor's
    x/p (total rule), or 0 where both masks dropped it; never a mean of the two."""
    small = _positive_adapter("small", 1.0, 1.4, seed=3)
    large = _positive_adapter("large", 3.0, 4.0, seed=4)
    name = "layer.0.proj"
    x_small, x_large = _dense64(small.modules[name]), _dense64(large.modules[name])
    density = 0.5
    merged = _merged([small, large], _recipe("dare_ties", [1.0, -1.0], density=density, seed=7))[name]
    # candidates: both dropped → 0; only small kept → +small/p; large kept (it outvotes small) → -large/p
    candidates = torch.stack([torch.zeros_like(x_small), x_small / density, -x_large / density])
    distance = (candidates - merged).abs()
    assert float(distance.min(dim=0).values.max()) < 1e-4 * float(x_large.max()) / density
    which = distance.argmin(dim=0)
    n = which.numel()
    # P(large kept) = p; P(only small kept) = p(1-p); P(both dropped) = (1-p)²
    for label, probability in ((2, density), (1, density * (1 - density)), (0, (1 - density) ** 2)):
        count = int((which == label).sum())
        assert abs(count - n * probability) < Z_LIMIT * math.sqrt(n * probability * (1 - probability)), label


# ----------------------------------------------------------------------------------------------
# The order the adapters are listed in


@pytest.mark.parametrize(
    "method, params",
    [
        ("task_arithmetic", {}),
        ("magnitude_prune", {"density": 0.3}),
        ("ties", {"density": 0.3, "sign": "total"}),
        ("ties", {"density": 0.3, "sign": "frequency"}),
        ("knots", {"knots_inner": "ties", "density": 0.3, "sign": "total"}),
        ("knots", {"knots_inner": "ties", "density": 0.3, "sign": "frequency"}),
    ],
    ids=["task_arithmetic", "magnitude_prune", "ties-total", "ties-frequency", "knots-ties-total", "knots-ties-frequency"],
)
def test_a_merge_does_not_depend_on_the_order_the_adapters_are_listed_in(adapters, method, params):
    """Listing the same adapters (with their weights) in another order gives the same merge. For
    KnOTS this also asks that the result not hang on the arbitrary sign LAPACK gives each singular
    vector: reordering the blocks of [ΔW₁ … ΔWₙ] leaves U's columns as they are up to sign."""
    weights = [1.0, 0.5, 0.8]
    forward = _merged(adapters, _recipe(method, weights, **params))
    backward = _merged(adapters[::-1], _recipe(method, weights[::-1], **params))
    for name in TWO_LAYERS:
        assert _close(backward[name], forward[name]) < 1e-4, name
