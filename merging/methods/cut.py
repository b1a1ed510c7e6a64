"""The magnitude cut: which entries keep the k largest |x|, found without sorting.

TIES' trim, magnitude pruning and Model Breadcrumbs' band all need "the k largest magnitudes of a
matrix". A sample brackets the k-th largest value, one pass counts what lies above the bracket and
keeps the few values inside it, and `kthvalue` on those finds the threshold. Ties at the threshold
are broken by position (row-major), so the result does not depend on a sort's implementation,
device or thread count. `cut_of_factors` finds the same cut for B·A without holding B·A, and says
how many of the kept ties fall in each block of rows, so the blocks can be cut in any order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from merging.methods import kernels
from merging.methods.blocks import block_map, scratch

_SELECT_SAMPLE = 1 << 16  # sample size that brackets the k-th largest magnitude


@dataclass(frozen=True)
class MagnitudeCut:
    """Keep the entries with |x| > threshold, and the first `ties` (row-major) with |x| == threshold.

    That is exactly k entries: the k largest magnitudes, ties at the cut broken by position.
    """

    threshold: torch.Tensor  # 0-d
    ties: int  # how many entries equal to the threshold are kept
    ties_total: int  # how many entries equal the threshold
    # per block of rows (cut_of_factors' blocks): (its entries equal to the threshold, how many of
    # those are kept); None when not known (the blocks must then be cut in order, carrying the budget)
    block_ties: tuple[tuple[int, int], ...] | None = None

    @property
    def all_ties(self) -> bool:
        return self.ties == self.ties_total

    @functools.cached_property
    def shrink_below(self) -> float:
        """hardshrink keeps |x| > λ: the float just below the threshold keeps |x| ≥ threshold
        (worked out once per cut, not once per block)."""
        return float(torch.nextafter(self.threshold, torch.zeros_like(self.threshold)))

    @functools.cached_property
    def shrink_at(self) -> float:
        return float(self.threshold)


def _with_block_ties(cut: MagnitudeCut, inside: Sequence[torch.Tensor]) -> MagnitudeCut:
    """The cut with its kept ties spread over the blocks whose bracketed magnitudes are `inside`
    (every entry equal to the threshold lies in the bracket): first blocks first, as row-major order."""
    left, spread = cut.ties, []
    for values in inside:
        equal = int(torch.count_nonzero(values == cut.threshold)) if values.numel() else 0
        kept = min(equal, left)
        left -= kept
        spread.append((equal, kept))
    return replace(cut, block_ties=tuple(spread))


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of a 1-d tensor, as torch.kthvalue gives it; on the CPU by
    numpy's introselect, several times faster than kthvalue on the ~10⁵ values a cut selects from."""
    if values.device.type == "cpu" and values.dtype == torch.float32:
        return torch.tensor(np.partition(values.numpy(), k - 1)[k - 1])
    return torch.kthvalue(values, k).values


def _cut_from(above: int, inside: torch.Tensor, k: int) -> MagnitudeCut | None:
    """The cut, given how many magnitudes lie above a bracket and the magnitudes inside it."""
    need = k - above
    if need <= 0 or need > inside.numel():
        return None
    threshold = _kth_smallest(inside, inside.numel() - need + 1)
    greater = above + int(torch.count_nonzero(inside > threshold))
    equal = int(torch.count_nonzero(inside == threshold))
    return MagnitudeCut(threshold, k - greater, equal)


def _bracket(sample: torch.Tensor, k: int, numel: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Two sample quantiles that hold the k-th largest magnitude with overwhelming probability."""
    s = sample.numel()
    q = 1.0 - k / numel  # fraction of entries below the cut
    spread = 5.0 * math.sqrt(max(q * (1.0 - q), 1.0 / s) / s) + 2.0 / s
    lo_index, hi_index = math.floor((q - spread) * s), math.ceil((q + spread) * s)
    # the two order statistics of the sorted sample, each by selection (a sort costs ~10× more)
    lo = _kth_smallest(sample, lo_index + 1) if lo_index >= 0 else None
    hi = _kth_smallest(sample, hi_index + 1) if hi_index < s else None
    return lo, hi


def _split(magnitudes: torch.Tensor, lo, hi) -> tuple[int, torch.Tensor]:
    """(how many magnitudes are > hi, the magnitudes in (lo, hi]); the masks are scratch buffers."""
    if lo is None and hi is None:
        return 0, magnitudes.reshape(-1)
    mask = scratch("cut-mask", magnitudes.shape, magnitudes.device, torch.bool)
    above = 0
    if hi is not None:
        above = int(torch.count_nonzero(torch.gt(magnitudes, hi, out=mask)))
        torch.le(magnitudes, hi, out=mask)
    if lo is not None:
        over = scratch("cut-over", magnitudes.shape, magnitudes.device, torch.bool)
        torch.gt(magnitudes, lo, out=over)
        mask = over if hi is None else mask.logical_and_(over)
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


def cut_block_in_place(x: torch.Tensor, cut: MagnitudeCut, block: int) -> torch.Tensor:
    """apply_cut of block number `block` (of the blocks cut_of_factors was given), into x itself,
    with that block's own share of the tie budget: blocks cut this way need no order."""
    equal, kept = cut.block_ties[block]
    if kept == equal:  # every tie in this block kept: |x| ≥ threshold (all_ties' one pass)
        return x if cut.shrink_at <= 0.0 else torch.ops.aten.hardshrink.out(x, cut.shrink_below, out=x)
    if kept == 0:  # none: |x| > threshold
        return torch.ops.aten.hardshrink.out(x, cut.shrink_at, out=x)
    return x.copy_(apply_cut(x, x.abs(), cut, [kept]))


def apply_cut(
    x: torch.Tensor,
    magnitudes: torch.Tensor | None,
    cut: MagnitudeCut,
    ties_left: list[int] | None = None,
    in_place: bool = False,
) -> torch.Tensor:
    """x where the cut keeps it, else 0. `ties_left` ([count]) carries the tie budget across
    consecutive row blocks of one matrix, so a matrix cut block by block keeps what it would whole.
    `magnitudes` (|x|) may be None when the cut keeps all its ties (one hardshrink pass then, into
    x itself when `in_place`)."""
    if cut.all_ties:
        if cut.shrink_at <= 0.0:
            return x if in_place else x.clone()
        if in_place:
            return torch.ops.aten.hardshrink.out(x, cut.shrink_below, out=x)
        return torch.nn.functional.hardshrink(x, cut.shrink_below)
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
        # rows of B and of Aᵀ gathered (a column gather of A is strided, ~5× slower)
        sample = (B.index_select(0, index // d_in) * A.T.contiguous().index_select(0, index % d_in)).sum(dim=1).abs()
        lo, hi = _bracket(sample, k, numel)

        bounds = (None if lo is None else float(lo)), (None if hi is None else float(hi))

        def split_block(block: tuple[int, int]) -> tuple[int, torch.Tensor]:
            start, stop = block
            product = torch.mm(B[start:stop], A, out=scratch("cut-block", (stop - start, d_in), B.device, B.dtype))
            if kernels.usable(product):  # one compiled pass instead of five masks and a gather
                return kernels.bracket_split(product, *bounds, scratch("cut-inside", (product.numel(),), B.device))
            return _split(product.abs_(), lo, hi)

        parts = block_map(split_block, blocks)
        above = sum(count for count, _ in parts)
        cut = _cut_from(above, torch.cat([values for _, values in parts]), k)
        if cut is not None:
            return cut if cut.all_ties else _with_block_ties(cut, [values for _, values in parts])
    return magnitude_cut(torch.cat([(B[start:stop] @ A).abs_() for start, stop in blocks]), k)
