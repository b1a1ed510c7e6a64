"""Compiled CPU loops for the two steps of a streamed TIES merge that torch runs as many passes.

    bracket_split      one pass over a block of |x|: how many exceed the bracket, and the values in it
                       (cut.py); torch needs five masks and a gather for it (~2.4 ns per entry on
                       one core, against ~0.7 here)
    combine_stacked    elect the sign and take the disjoint mean of n stacked updates in one pass per
                       entry (consensus.py); torch needs ~5 passes over the stack

Each computes exactly what its torch form computes, in float32 and in the same order (the updates'
sums from first to last), so a merge gives the same bits either way; tests/test_kernels.py holds
each against its torch form. They are numba functions compiled on first use (cached beside this
file) and release the GIL, so the merge's block workers (blocks.py) run them side by side. CUDA
tensors, and a machine where numba will not load, take the torch forms. numba is imported at the
first merge that uses a loop, not with the package (~0.4 s that most commands never need).
"""

from __future__ import annotations

import functools
import importlib.util
import threading

import numpy as np
import torch

from merging.methods.blocks import scratch

# numba is in requirements.txt; without it a merge is the same, only slower
AVAILABLE = importlib.util.find_spec("numba") is not None


def _compiled(function):
    """numba's njit, cached on disk when a cache folder can be written (else compiled per process)."""
    import numba

    try:
        return numba.njit(nogil=True, cache=True, boundscheck=False)(function)
    except RuntimeError:  # numba finds no writable cache folder (a read-only install, no home)
        return numba.njit(nogil=True, boundscheck=False)(function)


_RULES = {"total": 0, "frequency": 1}
_DIVISORS = {"count": 0, "weights": 1, "none": 2}


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the compiled loops can run on these tensors (CPU, float32, contiguous)."""
    return AVAILABLE and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors
    )


_loading = threading.Lock()  # the block workers may all ask at once for the first time


def _loops():
    """The two compiled loops, (split, combine); numba compiles (or loads from its cache) on first call."""
    with _loading:
        return _build()


@functools.cache
def _build():
    # Branch-free bodies: whether an entry is above the cut or agrees with the sign is a coin flip,
    # and a mispredicted branch per entry cost more than the whole pass (4.3 ns per entry, measured).

    @_compiled
    def _split(values, lo, hi, inside):  # pragma: no cover - compiled
        above = 0
        found = 0
        for index in range(values.size):
            magnitude = abs(values[index])
            above += magnitude > hi
            inside[found] = magnitude
            found += (magnitude > lo) & (magnitude <= hi)
        return above, found

    @_compiled
    def _combine(stacked, weights, rule, divisor_rule, sign, divisor, out):  # pragma: no cover - compiled
        # update by update over contiguous rows (vectorised), each entry's sums in update order
        n, width = stacked.shape
        zero = np.float32(0.0)
        one = np.float32(1.0)
        sign[:] = zero
        for row in range(n):
            for column in range(width):
                value = stacked[row, column]
                if rule == 0:
                    sign[column] += value
                else:
                    sign[column] += (one if value > zero else zero) - (one if value < zero else zero)
        for column in range(width):
            sign[column] = -one if sign[column] < zero else one  # a zero vote goes to +1
        out[:] = zero
        divisor[:] = zero
        for row in range(n):
            weight = weights[row] if divisor_rule == 1 else one
            for column in range(width):
                agreeing = stacked[row, column] * sign[column]
                agreeing = agreeing if agreeing > zero else zero
                out[column] += agreeing
                divisor[column] += weight if agreeing > zero else zero
        for column in range(width):
            total = out[column] * sign[column]
            if divisor_rule == 0:
                total /= divisor[column] if divisor[column] > one else one
            elif divisor_rule == 1:
                total /= divisor[column] if divisor[column] != zero else one
            out[column] = total

    return _split, _combine


def bracket_split(magnitudes_or_values: torch.Tensor, lo: float | None, hi: float | None, inside: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(how many |x| are > hi, the |x| in (lo, hi]) of a block, `inside` a float32 buffer at least
    the block's size that receives them; the values are returned as a copy. A None bound is open."""
    values = magnitudes_or_values.reshape(-1).numpy()
    # an open bound: every magnitude (≥ 0, or NaN, which neither bound takes) lies on its side
    split, _ = _loops()
    above, found = split(
        values, np.float32(-1.0 if lo is None else lo), np.float32(np.inf if hi is None else hi), inside.reshape(-1).numpy()
    )
    return int(above), inside.reshape(-1)[:found].clone()


def combine_stacked(stacked: torch.Tensor, sign_rule: str, divide_by: str, weights, out: torch.Tensor) -> torch.Tensor:
    """TIES' consensus (consensus.combine_stacked_ with consensus) of updates stacked on dim 0, into out."""
    rows = stacked.shape[0]
    width = out.numel()
    _, combine = _loops()
    combine(
        stacked.reshape(rows, -1).numpy(),
        np.asarray([float(w) for w in (weights if weights is not None else [1.0] * rows)], dtype=np.float32),
        _RULES[sign_rule],
        _DIVISORS[divide_by],
        scratch("kernel-sign", (width,), "cpu").numpy(),
        scratch("kernel-divisor", (width,), "cpu").numpy(),
        out.reshape(-1).numpy(),
    )
    return out
