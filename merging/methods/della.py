"""DELLA (Deep, Bhagat et al., 2024): MAGPRUNE, a sparsifier that drops entries at random with
probabilities set by their magnitude rank, then rescales what it keeps; `della` adds TIES' sign
election and disjoint mean, `della_linear` sums (mergekit's `della` and `della_linear`).

MAGPRUNE, per update and per row (as mergekit ranks: along the input dimension):

    rank the row's entries by |x|, 0 for the smallest, n − 1 for the largest (ties by position);
    keep entry j with probability  pⱼ = density − epsilon + 2·epsilon · rankⱼ / (n − 1),
    so the smallest entry is kept with density − epsilon and the largest with density + epsilon
    (a row of one entry with density); a kept entry is divided by its pⱼ (unbiased: E = x).

`density` ≥ 1 keeps the update as it is. Otherwise density − epsilon must stay above 0 and
density + epsilon below 1, as in mergekit: a rule across the two parameters (`RULES`), refused when
the recipe is made, naming both fields. Randomness comes from the recipe's seeded generator, drawn
for the whole update in one go (the dense and the streamed form draw the same numbers). mergekit
rescales by 1/pⱼ in the versions that name the step `rank_magnitude_sampling`; newer ones rescale
to the update's L1 norm instead: the same in expectation, not entry for entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods.registry import MethodError, Param, Rule
from merging.methods.sparsify import DENSITY, RowFilter, Sparsifier, Value

PAPER = "https://arxiv.org/abs/2406.11617"

EPSILON = Param(
    "epsilon", "float", 0.15, minimum=0.0, maximum=0.5, per_adapter=True, search=(0.0, 0.1),
    help="Half the spread of keep probabilities: the smallest |x| of a row is kept with density − epsilon, "
    "the largest with density + epsilon.",
)

RULES = (
    Rule(
        ("density", "epsilon"),
        lambda v: v["density"] >= 1.0 or (v["density"] - v["epsilon"] > 0.0 and v["density"] + v["epsilon"] < 1.0),
        "density − epsilon must stay above 0 and density + epsilon below 1 (unless density is 1: nothing dropped)",
    ),
)


def keep_probabilities(rows: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """pⱼ per entry of each row: density ± epsilon, linear in the entry's magnitude rank in its row."""
    n = rows.shape[-1]
    if n == 1:
        return torch.full_like(rows, density)
    order = torch.argsort(rows.abs(), dim=-1, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=rows.device).expand_as(order))
    return (density - epsilon) + (2.0 * epsilon / (n - 1)) * ranks.to(rows.dtype)


def _keep(rows: torch.Tensor, uniform: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    p = keep_probabilities(rows, density, epsilon)
    return torch.where(uniform.to(rows.device) < p, rows / p, torch.zeros_like(rows))


def magprune(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """DELLA's MAGPRUNE of one dense update (see the module docstring)."""
    if density >= 1.0:
        return delta
    uniform = torch.rand(delta.shape, generator=generator, device=generator.device)
    return _keep(delta, uniform, density, epsilon)


def _dense(delta: torch.Tensor, value: Value, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        raise MethodError("DELLA's sampling needs a seeded generator")
    return magprune(delta, value("density"), value("epsilon"), generator)


def _plan(factors, shape, blocks: Sequence[tuple[int, int]], value: Value, generator, device) -> RowFilter | None:
    density, epsilon = value("density"), value("epsilon")
    if density >= 1.0:
        return None if factors is None else (lambda x, start, stop: x)
    if generator is None:
        raise MethodError("DELLA's sampling needs a seeded generator")
    # drawn whole, as the dense form draws it (also for an absent update), so a seed gives the same
    # masks either way; the ranks are per row, so each block of whole rows ranks on its own
    uniform = torch.rand(tuple(shape), generator=generator, device=generator.device)
    if factors is None:
        return None
    return lambda x, start, stop: _keep(x, uniform[start:stop], density, epsilon)


MAGPRUNE = Sparsifier("magprune", (DENSITY, EPSILON), _dense, _plan, rescales=True)
