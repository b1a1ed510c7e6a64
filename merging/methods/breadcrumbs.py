"""Model Breadcrumbs (Davari & Belilovsky, 2023): per update, drop the largest and the smallest
magnitudes and keep the band in between, then sum (or, `breadcrumbs_ties`, TIES' consensus).

The parameters mean what they mean in mergekit's `magnitude_outliers` sparsifier (mergekit/sparsify.py),
so a mergekit config gives the same merge:

    density  fraction of the entries kept: int(density·numel) of them
    gamma    fraction of the entries dropped from the top: int(gamma·numel) largest |x|; when
             density + gamma would leave fewer than none to drop from the bottom, fewer are dropped
             from the top so that exactly int(density·numel) stay

So, ranking the entries by |x| (largest first), the kept ones are ranks [n_top, n_top + n_keep).
Ties in |x| are broken by position (row-major), as in TIES' trim (cut.py); mergekit's order among
equal magnitudes is its sort's. density ≥ 1 keeps the update as it is, as in mergekit.

One deviation: with int(gamma·numel) = 0 mergekit's slice `indices[n_bot:-0]` is empty and drops
every entry; here dropping none from the top keeps the top int(density·numel), as gamma = 0 means.
Like mergekit's `breadcrumbs` (rescale off), the kept entries are not rescaled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods.cut import apply_cut, cut_of_factors, magnitude_cut
from merging.methods.registry import Param
from merging.methods.sparsify import DENSITY, RowFilter, Sparsifier, Value

GAMMA = Param(
    "gamma", "float", 0.01, minimum=0.0, maximum=1.0, per_adapter=True, search=(0.0, 0.1),
    help="Fraction of each update's entries dropped from the top (largest |x|) before density is kept.",
)


def band_counts(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """(n_top, n_keep): how many of the largest magnitudes are dropped, and how many are kept next."""
    n_keep = int(density * numel)
    n_top = int(gamma * numel)
    return min(n_top, numel - n_keep), n_keep


def keep_magnitude_band(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Zero the int(gamma·numel) largest |x| and all below the next int(density·numel)."""
    if density >= 1.0:
        return delta
    n_top, n_keep = band_counts(delta.numel(), density, gamma)
    if n_keep <= 0:
        return torch.zeros_like(delta)
    magnitudes = delta.abs()
    upto = apply_cut(delta, magnitudes, magnitude_cut(magnitudes, n_top + n_keep))
    if n_top == 0:
        return upto
    # the top n_top are a subset of the top n_top + n_keep (same order, ties by position): x − x = 0
    return upto.sub_(apply_cut(delta, magnitudes, magnitude_cut(magnitudes, n_top)))


def _dense(delta: torch.Tensor, value: Value, generator: torch.Generator | None) -> torch.Tensor:
    return keep_magnitude_band(delta, value("density"), value("gamma"))


def _plan(factors, shape, blocks: Sequence[tuple[int, int]], value: Value, generator, device) -> RowFilter | None:
    if factors is None:
        return None
    density = value("density")
    if density >= 1.0:
        return lambda x, start, stop: x
    n_top, n_keep = band_counts(shape[0] * shape[1], density, value("gamma"))
    if n_keep <= 0:
        return None
    upto = cut_of_factors(*factors, n_top + n_keep, blocks)
    upto_ties = [upto.ties]
    if n_top == 0:
        return lambda x, start, stop: apply_cut(x, x.abs(), upto, upto_ties)
    top = cut_of_factors(*factors, n_top, blocks)
    top_ties = [top.ties]

    def band(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        magnitudes = x.abs()
        return apply_cut(x, magnitudes, upto, upto_ties).sub_(apply_cut(x, magnitudes, top, top_ties))

    return band


MAGNITUDE_BAND = Sparsifier("magnitude_band", (DENSITY, GAMMA), _dense, _plan)
