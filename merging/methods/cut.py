"""The magnitude cut: which entries keep the k largest |x|, found without sorting.

TIES' trim, magnitude pruning and Model Breadcrumbs' band all need "the k largest magnitudes of a
matrix". A sample brackets the k-th largest value, one pass counts what lies above the bracket and
keeps the few values inside it, and `kthvalue` on those finds the threshold. Ties at the threshold
are broken by position (row-major), so the result does not depend on a sort's implementation,
device or thread count. `cut_of_factors` finds the same cut for B·A without holding B·A.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from merging.methods.blocks import block_map

_SELECT_SAMPLE = 1 << 16  # sample size that brackets the k-th largest magnitude


@dataclass(frozen=True)
class MagnitudeCut:
    """Keep the entries with |x| > threshold, and the first `ties` (row-major) with |x| == threshold.

    That is exactly k entries: the k largest magnitudes, ties at the cut broken by position.
    """

    threshold: torch.Tensor  # 0-d
    ties: int  # how many entries equal to the threshold are kept
    ties_total: int  # how many entries equal the threshold

    @property
    def all_ties(self) -> bool:
        return self.ties == self.ties_total


def _cut_from(above: int, inside: torch.Tensor, k: int) -> MagnitudeCut | None:
    """The cut, given how many magnitudes lie above a bracket and the magnitudes inside it."""
    need = k - above
    if need <= 0 or need > inside.numel():
        return None
    threshold = torch.kthvalue(inside, inside.numel() - need + 1).values
    greater = above + int(torch.count_nonzero(inside > threshold))
    equal = int(torch.count_nonzero(inside == threshold))
    return MagnitudeCut(threshold, k - greater, equal)


def _bracket(sample: torch.Tensor, k: int, numel: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Two sample quantiles that hold the k-th largest magnitude with overwhelming probability."""
    sample = torch.sort(sample)[0]
    s = sample.numel()
    q = 1.0 - k / numel  # fraction of entries below the cut
    spread = 5.0 * math.sqrt(max(q * (1.0 - q), 1.0 / s) / s) + 2.0 / s
    lo_index, hi_index = math.floor((q - spread) * s), math.ceil((q + spread) * s)
    return (sample[lo_index] if lo_index >= 0 else None), (sample[hi_index] if hi_index < s else None)


def _split(magnitudes: torch.Tensor, lo, hi) -> tuple[int, torch.Tensor]:
    """(how many magnitudes are > hi, the magnitudes in (lo, hi])."""
    above = int(torch.count_nonzero(magnitudes > hi)) if hi is not None else 0
    if lo is None and hi is None:
        return above, magnitudes.reshape(-1)
    if hi is None:
        mask = magnitudes > lo
    elif lo is None:
        mask = magnitudes <= hi
    else:
        mask = (magnitudes > lo) & (magnitudes <= hi)
    return above, magnitudes[mask]


def magnitude_cut(magnitudes: torch.Tensor, k: int) -> MagnitudeCut:
    """The cut that keeps the k largest of `magnitudes` (any shape; 0 < k ≤ numel)."""
    numel = magnitudes.numel()
    if numel > 4 * _SELECT_SAMPLE:
        generator = torch.Generator(device=magnitudes.device).manual_seed(0)
        index = torch.randint(numel, (_SELECT_SAMPLE,), generator=generator, device=magnitudes.device)
        lo, hi = _bracket(magnitudes.reshape(-1)[index], k, numel)
        cut = _cut_from(*_split(magnitudes, lo, hi), k)
        if cut is not None:
            return cut
    return _cut_from(0, magnitudes.reshape(-1), k)


def apply_cut(x: torch.Tensor, magnitudes: torch.Tensor | None, cut: MagnitudeCut, ties_left: list[int] | None = None) -> torch.Tensor:
    """x where the cut keeps it, else 0. `ties_left` ([count]) carries the tie budget across
    consecutive row blocks of one matrix, so a matrix cut block by block keeps what it would whole.
    `magnitudes` (|x|) may be None when the cut keeps all its ties (one hardshrink pass then)."""
    if cut.all_ties:
        if float(cut.threshold) <= 0.0:
            return x.clone()
        # hardshrink keeps |x| > λ; λ the float just below the threshold keeps |x| ≥ threshold
        below = torch.nextafter(cut.threshold, torch.zeros_like(cut.threshold))
        return torch.nn.functional.hardshrink(x, float(below))
    if magnitudes is None:
        magnitudes = x.abs()
    keep = magnitudes > cut.threshold
    left = ties_left if ties_left is not None else [cut.ties]
    if left[0] > 0:
        equal = (magnitudes == cut.threshold).reshape(-1).nonzero().squeeze(1)[: left[0]]
        keep.view(-1)[equal] = True
        left[0] -= int(equal.numel())
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def cut_of_factors(B: torch.Tensor, A: torch.Tensor, k: int, blocks: Sequence[tuple[int, int]]) -> MagnitudeCut:
    """magnitude_cut of |B·A| without holding B·A: a sample from the factors, then one block pass."""
    d_out, d_in = B.shape[0], A.shape[1]
    numel = d_out * d_in
    if numel > 4 * _SELECT_SAMPLE:
        generator = torch.Generator(device=B.device).manual_seed(0)
        index = torch.randint(numel, (_SELECT_SAMPLE,), generator=generator, device=B.device)
        sample = (B[index // d_in] * A[:, index % d_in].T).sum(dim=1).abs()
        lo, hi = _bracket(sample, k, numel)
        parts = block_map(lambda block: _split((B[block[0]:block[1]] @ A).abs_(), lo, hi), blocks)
        above = sum(count for count, _ in parts)
        cut = _cut_from(above, torch.cat([values for _, values in parts]), k)
        if cut is not None:
            return cut
    return magnitude_cut(torch.cat([(B[start:stop] @ A).abs_() for start, stop in blocks]), k)
