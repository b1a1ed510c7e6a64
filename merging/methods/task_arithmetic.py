"""Generalized task arithmetic: a sparsifier × a consensus rule, as in mergekit.

    sparsify   none | magnitude | random (DARE) | magnitude band (Model Breadcrumbs): sparsify.py
    consensus  none | TIES' sign election (consensus.py)
    combine    weighted sum (no consensus) | mean over the agreeing entries (with consensus)

Where the weights λᵢ enter (the same place as PEFT's merge_utils and the TIES paper): each adapter's
sparsified update is multiplied by λᵢ *before* the sign election, and the disjoint mean divides by the
number of agreeing adapters, not by Σλ. With equal weights λ this is the paper's θ = λ·τ_m. (PEFT
elects the sign on the unweighted updates; with equal positive weights the two agree, and ours lets
an adapter with λ = 0 drop out of the vote.) The consensus methods declare `divide_by`
(consensus.DIVIDE_BY): `count` is the above; `weights` divides by the agreeing Σλ, mergekit's
`normalize: true`; `none` keeps the agreeing sum, mergekit's `normalize: false`.

`family(...)` makes one registry entry of such a pair. Its implementations: `dense` (combine) on
dense updates; `streamed` (combine_factors) rebuilds each update from its factors a block of rows at
a time; plain task arithmetic (no sparsifier, no consensus) is also exact in factored form.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

import torch

from merging.adapters.lora import LoraModule
from merging.methods.blocks import block_map, is_order_free, scratch, scratch_space
from merging.methods.consensus import DIVIDE_BY, SIGN, combine_stacked_, combine_weighted
from merging.methods.factored import Factored, concatenate
from merging.methods.registry import NO_MERGEKIT, Mergekit, Method, MethodArgs, MethodError, Rule
from merging.methods.sparsify import NONE, Sparsifier


def _sign_rule(args: MethodArgs, consensus: bool) -> str:
    return args["sign"] if consensus else "total"


def _divide_by(args: MethodArgs, consensus: bool) -> str:
    # older callers built MethodArgs by hand without it: the TIES paper's count
    return args.parameters.get("divide_by", "count") if consensus else "count"


def combine(
    deltas: Iterable[torch.Tensor], weights: Sequence[float], args: MethodArgs, sparsifier: Sparsifier, consensus: bool
) -> torch.Tensor:
    """Merge dense updates with a sparsifier × consensus method. Returns the merged dense ΔW.

    `deltas` may be a generator: each update is sparsified and weighted as it arrives.
    """
    weights = list(weights)
    weighted: list[torch.Tensor] = []
    for index, delta in enumerate(deltas):
        if index >= len(weights):
            raise MethodError(f"more updates than the {len(weights)} weights")
        value = partial(args.value, index=index)
        weighted.append(sparsifier.dense(delta, value, args.generator) * float(weights[index]))
    if len(weighted) != len(weights):
        raise MethodError(f"{len(weighted)} updates but {len(weights)} weights")
    return combine_weighted(weighted, consensus, _sign_rule(args, consensus), _divide_by(args, consensus), weights)


# Row blocks of about this many bytes (all adapters' rows together) stay in the CPU's cache.
_BLOCK_BYTES = {"cpu": 8 << 20, "cuda": 1 << 30}


def combine_factors(
    modules: Sequence[LoraModule | None],
    weights: Sequence[float],
    args: MethodArgs,
    sparsifier: Sparsifier,
    consensus: bool,
) -> torch.Tensor:
    """`combine` of the updates sᵢBᵢAᵢ without holding them: the same result, block of rows by block.

    TIES' cut needs each update's k-th largest magnitude over the whole matrix: one pass per update
    finds it (a sample brackets it, the block pass counts above the bracket and keeps the few values
    inside). DARE's masks are drawn whole, in the same order as `combine` draws them, so a seed gives
    the same masks. Then each block of rows is rebuilt from the factors (a rank-r product), cut,
    weighted and merged while it is in cache. Memory: the merged matrix, plus DARE's masks as bytes.
    `modules[i]` None contributes zero (and still draws its DARE mask, as `combine` does).
    """
    device = torch.device(args.device)
    present = [m for m in modules if m is not None]
    if not present:
        raise MethodError("nothing to merge")
    if len(modules) != len(weights):
        raise MethodError(f"{len(modules)} updates but {len(weights)} weights")
    d_out, d_in = present[0].shape
    factors = [
        None if m is None else ((m.B.to(device, torch.float32) * m.scale), m.A.to(device, torch.float32))
        for m in modules
    ]
    sign_rule = _sign_rule(args, consensus)
    divide_by = _divide_by(args, consensus)
    rows = max(1, min(d_out, _BLOCK_BYTES.get(device.type, 8 << 20) // (4 * d_in * (len(modules) + 3))))
    blocks = [(start, min(start + rows, d_out)) for start in range(0, d_out, rows)]
    with scratch_space():  # each worker reuses its block buffers through the cuts and the merge
        filters = [
            sparsifier.plan(pair, (d_out, d_in), blocks, partial(args.value, index=i), args.generator, device)
            for i, pair in enumerate(factors)
        ]
        return _merge_blocks(factors, filters, weights, blocks, (d_out, d_in), device, consensus, sign_rule, divide_by)


def _merge_blocks(factors, filters, weights, blocks, shape, device, consensus, sign_rule, divide_by) -> torch.Tensor:
    """The merged matrix, block of rows by block: each update's rows rebuilt, filtered, weighted, combined."""
    d_out, d_in = shape
    merged = torch.empty((d_out, d_in), dtype=torch.float32, device=device)
    # an update that keeps nothing adds 0 to every sum, vote and count: it is left out of the stack
    contributing = [i for i, row_filter in enumerate(filters) if row_filter is not None]
    if not contributing:
        return merged.zero_()
    contributing_weights = [float(weights[i]) for i in contributing]

    def merge_block(block: tuple[int, int]) -> None:
        start, stop = block
        stacked = scratch("updates", (len(contributing), stop - start, d_in), device)
        for row, i in enumerate(contributing):
            B, A = factors[i]
            x = torch.mm(B[start:stop], A, out=stacked[row])
            kept = filters[i](x, start, stop)
            if kept is not x:  # a filter that does not work in place
                x.copy_(kept)
            if contributing_weights[row] != 1.0:  # ×1 is exact: one pass saved
                x.mul_(contributing_weights[row])
        combine_stacked_(stacked, consensus, sign_rule, divide_by, contributing_weights, out=merged[start:stop])

    # independent blocks (no tie budget carried between them) go to the merge's block workers
    block_map(merge_block, blocks, parallel=all(is_order_free(f) for f in filters))
    return merged


def _concatenated(modules: Sequence[LoraModule], weights: Sequence[float], args: MethodArgs) -> Factored:
    return concatenate(modules, weights, args.device)


def family(
    name: str,
    label: str,
    description: str,
    sparsifier: Sparsifier,
    consensus: bool = False,
    mergekit: str | None = None,
    mergekit_normalize: bool = False,
    mergekit_refusal: str = "",
    paper: str = "",
    rules: tuple[Rule, ...] = (),
) -> Method:
    """One registry entry: a sparsifier × (no) consensus, its schema the sparsifier's and the sign's.

    `paper`: where the method comes from; `rules`: rules across its parameters (registry.Rule).
    `mergekit`: mergekit's name for the same generalized-task-arithmetic method (its sparsifier's
    parameters keep their names; `mergekit_normalize` is mergekit's default for normalize), or None
    with `mergekit_refusal` saying why there is none.
    """
    linear = sparsifier is NONE and not consensus
    declared = NO_MERGEKIT if mergekit is None and not mergekit_refusal else Mergekit(
        name=mergekit,
        refusal=mergekit_refusal,
        parameters=tuple(p.name for p in sparsifier.params),
        normalize=mergekit_normalize,
        rescale=None if sparsifier is NONE else sparsifier.rescales,
    )
    return Method(
        name=name,
        label=label,
        description=description,
        params=sparsifier.params + ((SIGN, DIVIDE_BY) if consensus else ()),
        factored=_concatenated if linear else None,
        streamed=None if linear else partial(_streamed, sparsifier=sparsifier, consensus=consensus),
        dense=partial(_dense, sparsifier=sparsifier, consensus=consensus),
        mergekit=declared,
        paper=paper,
        rules=rules,
    )


def _dense(deltas, weights, args: MethodArgs, sparsifier: Sparsifier, consensus: bool) -> torch.Tensor:
    return combine(deltas, weights, args, sparsifier, consensus)


def _streamed(modules, weights, args: MethodArgs, sparsifier: Sparsifier, consensus: bool) -> torch.Tensor:
    return combine_factors(modules, weights, args, sparsifier, consensus)
