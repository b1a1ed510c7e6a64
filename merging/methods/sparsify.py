"""Sparsifiers: which entries of one update a method keeps, on a dense update or streamed by rows.

    none       keep everything
    magnitude  keep the int(density·numel) entries of largest |x| (TIES' trim, magnitude pruning)
    random     keep each entry with probability density and rescale by 1/density (DARE)

Each sparsifier has two forms that give the same result: `dense(delta, value, generator)` on a whole
update, and `plan(...)` for an update held as factors B·A, which returns a `RowFilter` applied to
one block of rows at a time (so the merge never holds the n dense updates; see task_arithmetic.py).
`value(name)` reads the sparsifier's parameters for this update (they may differ per adapter).
Model Breadcrumbs' band (breadcrumbs.py) is a fourth one, built the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from merging.methods.blocks import order_free
from merging.methods.cut import apply_cut, cut_block_in_place, cut_of_factors, magnitude_cut
from merging.methods.registry import MethodError, Param

# (one block of rows of an update, first row, end row) -> its kept entries; may work in place
RowFilter = Callable[[torch.Tensor, int, int], torch.Tensor]
Value = Callable[[str], Any]  # a parameter's value for the update at hand


def _unchanged(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class Sparsifier:
    """One way to sparsify an update, in its dense and its streamed form.

    plan(factors or None, shape, blocks, value, generator, device) -> RowFilter, or None when the
    update contributes nothing (absent, or nothing kept). It is called once per update in order, so
    a sparsifier that draws randomness draws in the same order as its dense form (and draws for an
    absent update too, as the dense form does for its zeros).
    """

    name: str
    params: tuple[Param, ...]
    dense: Callable[[torch.Tensor, Value, torch.Generator | None], torch.Tensor]
    plan: Callable[..., RowFilter | None]
    rescales: bool = False  # scales what it keeps back up by 1/density (DARE; mergekit's `rescale`)


DENSITY = Param(
    "density", "float", 1.0, minimum=0.0, maximum=1.0, exclusive_minimum=True, per_adapter=True,
    help="Fraction of each update's entries kept (1 keeps all).",
    label="Density (fraction kept)", start=0.5, search=(0.1, 1.0),
)


# ----- none

def _plan_none(factors, shape, blocks, value, generator, device) -> RowFilter | None:
    return None if factors is None else order_free(_unchanged)


NONE = Sparsifier("none", (), lambda delta, value, generator: delta, _plan_none)


# ----- magnitude: the top-density entries by |x|

def keep_top_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the int(density·numel) entries of largest |x| (PEFT's and TIES' trim step).

    Ties at the cut are broken by position (row-major), not by a sort's whim.
    """
    if density >= 1.0:
        return delta
    k = int(density * delta.numel())
    if k <= 0:
        return torch.zeros_like(delta)
    magnitudes = delta.abs()
    return apply_cut(delta, magnitudes, magnitude_cut(magnitudes, k))


def _plan_magnitude(factors, shape, blocks: Sequence[tuple[int, int]], value, generator, device) -> RowFilter | None:
    density = value("density")
    if factors is None:
        return None
    if density >= 1.0:
        return order_free(_unchanged)
    # int(density·numel) as the dense form counts it: density·d_out·d_in rounds differently (0.7·96·80 < 5376)
    k = int(density * (shape[0] * shape[1]))
    if k <= 0:
        return None
    cut = cut_of_factors(*factors, k, blocks)
    if cut.all_ties:  # no tie budget to carry from block to block
        return order_free(lambda x, start, stop: apply_cut(x, None, cut, in_place=True))  # |x| is not needed then
    if cut.block_ties is not None:  # each block knows its share of the tie budget
        block_of = {start: index for index, (start, _) in enumerate(blocks)}
        return order_free(lambda x, start, stop: cut_block_in_place(x, cut, block_of[start]))
    ties_left = [cut.ties]
    return lambda x, start, stop: apply_cut(x, x.abs(), cut, ties_left)


MAGNITUDE = Sparsifier(
    "magnitude", (DENSITY,), lambda delta, value, generator: keep_top_magnitude(delta, value("density")), _plan_magnitude
)


# ----- random: DARE's drop and rescale

def keep_random(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability `density` and rescale by 1/density (unbiased)."""
    if density >= 1.0:
        return delta
    if density <= 0.0:
        return torch.zeros_like(delta)
    keep = torch.rand(delta.shape, generator=generator, device=generator.device) < density
    return torch.where(keep.to(delta.device), delta / density, torch.zeros_like(delta))


def _dense_random(delta: torch.Tensor, value: Value, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        raise MethodError("random sparsification needs a seeded generator")
    return keep_random(delta, value("density"), generator)


def _plan_random(factors, shape, blocks, value, generator, device) -> RowFilter | None:
    density = value("density")
    if density >= 1.0:
        return None if factors is None else order_free(_unchanged)
    if generator is None:
        raise MethodError("random sparsification needs a seeded generator")
    # drawn whole, as the dense form draws it, so a seed gives the same mask either way; kept as bytes
    mask = torch.rand(tuple(shape), generator=generator, device=generator.device) < density
    if factors is None:
        return None
    return order_free(lambda x, start, stop: x.div_(density).mul_(mask[start:stop].to(device)))


RANDOM = Sparsifier("random", (DENSITY,), _dense_random, _plan_random, rescales=True)
