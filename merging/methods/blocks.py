"""How a CPU merge uses the cores: one torch thread per op, blocks of rows spread over a few workers.

Measured on 2 cores (issue 21; docs/BENCHMARKS.md, mergescope vs mergekit): a streamed TIES merge is thousands of
short tensor ops (a block of rows of a few updates, ~1 ms each). With torch's intra-op threads every
op is a fork/join of the OpenMP team, and on a machine whose cores other processes also use, each
join waits for a thread the OS has switched out: the same TIES merge ran 8-12× slower with 2 intra-op
threads than with 1 while other work was running (d = 2048, 8 adapters, load average ~10).

So the merge loop (merge.merge_adapters, merge.dense_deltas) runs inside `cpu_merge_threads()`: one
intra-op thread, and the independent row blocks of a module go to a small pool of worker threads
(torch ops release the GIL) that take the next block when they are free. A worker the OS switches
out delays only its own block, never an op of the others; the only join is the end of a module.
The pool has as many workers as the caller's torch thread count (at most the usable cores).
Each block's result is computed exactly as the one-thread loop computes it, so the result does not
depend on the worker count (tests/test_fused_ties.py).

Inside `scratch_space()` each worker keeps its block-sized buffers (`scratch`) from one block to the
next: a fresh multi-megabyte tensor per op costs more than the op (page faults on every new
allocation: a rank-16 product into a new 4096-column block took ~1 ns per entry of CPU time against
~0.4 ns into a reused one), and a block's ops are a few tenths of a nanosecond per entry each.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")

_workers = 1  # block workers of the merge in progress (1: the plain loop)
_caller_threads = 0  # the torch threads the merge's caller had (0: not inside cpu_merge_threads)
# One step this large (entries of the matrix it works on: a dense SVD of 2048 × 2048 and up) runs
# with the caller's threads: a few long parallel ops, whose rare joins a busy machine barely delays.
BIG_STEP = 2048 * 2048
_pools: dict[int, ThreadPoolExecutor] = {}
# (thread, name, dtype, device) -> buffer, while a scratch_space is open (None: no reuse)
_scratch: dict[tuple, torch.Tensor] | None = None


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def cpu_merge_threads(device: torch.device | str = "cpu", workers: int | None = None):
    """One torch intra-op thread for the merge, and `workers` block workers (default: the caller's
    torch thread count, at most the usable cores); restored on exit. A GPU merge is left alone."""
    global _workers, _caller_threads
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    previous = _workers, _caller_threads
    caller = _caller_threads or threads  # nested: the outermost caller's threads and workers
    _workers = max(1, min(workers or (_workers if _caller_threads else caller), usable_cores()))
    _caller_threads = caller
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _workers, _caller_threads = previous


@contextmanager
def threads_for(entries: int):
    """Inside cpu_merge_threads: the caller's torch threads for one step on a matrix of at least
    BIG_STEP entries (a dense SVD), else the one thread; outside it, nothing changes."""
    if not _caller_threads or entries < BIG_STEP or _caller_threads == torch.get_num_threads():
        yield
        return
    torch.set_num_threads(_caller_threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def order_free(row_filter: Callable) -> Callable:
    """Mark a row filter whose result for a block does not depend on the blocks before it (a tie
    budget carried from block to block does), so its blocks may run in any order, in parallel."""
    row_filter.order_free = True
    return row_filter


def is_order_free(row_filter: Callable | None) -> bool:
    return row_filter is None or bool(getattr(row_filter, "order_free", False))


def block_map(work: Callable[[tuple[int, int]], T], blocks: Sequence[tuple[int, int]], parallel: bool = True) -> list[T]:
    """[work(block) for block in blocks], on the merge's block workers when there are several and
    `parallel` (the blocks are independent); results in the blocks' order."""
    if not parallel or _workers < 2 or len(blocks) < 2 or torch.get_num_threads() != 1:
        return [work(block) for block in blocks]
    pool = _pools.get(_workers)
    if pool is None:
        pool = _pools[_workers] = ThreadPoolExecutor(_workers, thread_name_prefix="merge-block")
    return list(pool.map(work, blocks))


@contextmanager
def scratch_space():
    """Let `scratch` reuse each thread's buffers until the outermost of these exits (then freed)."""
    global _scratch
    outermost = _scratch is None
    if outermost:
        _scratch = {}
    try:
        yield
    finally:
        if outermost:
            _scratch = None


def scratch(name: str, shape: Sequence[int], device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised, contiguous tensor of `shape` that this thread may reuse under the same name
    inside a scratch_space (outside one: a new tensor). Its contents last until this thread asks
    for `name` again, so a caller must be done with it before its next block."""
    space = _scratch
    if space is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    key = (threading.get_ident(), name, dtype, torch.device(device))
    size = math.prod(shape)
    buffer = space.get(key)
    if buffer is None or buffer.numel() < size:
        buffer = space[key] = torch.empty(size, dtype=dtype, device=device)
    return buffer[:size].view(tuple(shape))
