"""TIES' consensus: elect a sign per entry, then average only the entries that agree with it.

    elect_sign      total: sign of Σᵢ xᵢ (mass wins); frequency: sign of Σᵢ sign(xᵢ) (head count
                    wins); a tie (0) goes to +1
    disjoint_mean   per entry, the sum of the updates whose entry is nonzero and has the
                    elected sign (entries nobody keeps stay 0), divided as `divide_by` says:
                    count    by how many agree (the TIES paper's disjoint mean; the default)
                    weights  by the sum of the agreeing updates' weights λᵢ (mergekit's
                             `normalize: true`: Σ λᵢxᵢmᵢ / Σ λᵢmᵢ, a divisor of 0 reads 1)
                    none     not at all: the agreeing sum (mergekit's `normalize: false`)

`divide_by` is a declared parameter of every consensus method (DIVIDE_BY), so a mergekit config
maps onto it instead of being refused. Both take the weighted updates as a sequence (a list, or a stacked tensor with the updates on dim
0) and work adapter by adapter in place: no stacked (n, d_out, d_in) copy, no per-adapter
temporaries beyond one. `combine_weighted` is the two in a row, or the plain sum without consensus.
`combine_stacked_` is the same on updates stacked in a scratch tensor, written into a given output,
for the streamed merge's row blocks (task_arithmetic.py): one compiled pass on the CPU
(kernels.py), else `combine_weighted` over the stack's rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods import kernels
from merging.methods.registry import MethodError, Param

SIGN_RULES: tuple[str, ...] = ("total", "frequency")

SIGN = Param(
    "sign", "choice", "total", choices=SIGN_RULES,
    help="How the sign of each entry is elected: total (sign of the sum, mass wins) or frequency "
    "(sign of the sum of signs, head count wins).",
    label="Sign election",
)


DIVIDE_RULES: tuple[str, ...] = ("count", "weights", "none")

DIVIDE_BY = Param(
    "divide_by", "choice", "count", choices=DIVIDE_RULES,
    help="What the agreeing entries' sum is divided by: count (how many agree: the TIES paper's mean), "
    "weights (the sum of the agreeing adapters' weights: mergekit's normalize: true) or none "
    "(the plain agreeing sum: mergekit's normalize: false).",
    label="Divide agreeing sum by",
)


def elect_sign(weighted: Sequence[torch.Tensor], rule: str = "total") -> torch.Tensor:
    """The per-entry sign (±1) elected over the updates; a zero vote goes to +1."""
    if rule == "total":
        votes = weighted[0].clone()
        for x in weighted[1:]:
            votes += x
    elif rule == "frequency":
        votes = weighted[0].sign()
        for x in weighted[1:]:
            votes += x.sign()
    else:
        raise MethodError(f"unknown sign rule '{rule}' (allowed: {', '.join(SIGN_RULES)})")
    # sign(v) + ½ is never 0, and its sign is the election (+1 where the vote is 0)
    return votes.sign_().add_(0.5).sign_()


def disjoint_mean(
    weighted: Sequence[torch.Tensor],
    sign: torch.Tensor,
    divide_by: str = "count",
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Sum over the updates whose entry is nonzero and has the elected sign, divided by their count
    (default), by the sum of their weights (`weights`, needed then) or not at all (`none`)."""
    if divide_by not in DIVIDE_RULES:
        raise MethodError(f"unknown divide_by '{divide_by}' (allowed: {', '.join(DIVIDE_RULES)})")
    if divide_by == "weights" and (weights is None or len(weights) != len(weighted)):
        raise MethodError("divide_by 'weights' needs one weight per update")
    # In the elected sign's frame x·s is |x| where x agrees and ≤ 0 where it does not (or is 0), so
    # Σ max(x·s, 0) sums the agreeing magnitudes and Σ sign(max(x·s, 0)) counts them; ×s maps back.
    # Multiplying by ±1 is exact, so this is bitwise the masked sum, without boolean masks.
    total = torch.zeros_like(sign)
    divisor = torch.zeros_like(sign) if divide_by != "none" else None
    for index, x in enumerate(weighted):
        agreeing = (x * sign).clamp_(min=0)
        total += agreeing
        if divide_by == "count":
            divisor += agreeing.sign_()
        elif divide_by == "weights":
            divisor += agreeing.sign_().mul_(float(weights[index]))
    total.mul_(sign)
    if divisor is None:
        return total
    if divide_by == "count":
        return total.div_(divisor.clamp_(min=1))
    # mergekit's guard: where no weight agrees (or they cancel exactly) the divisor is 1
    return total.div_(torch.where(divisor == 0, torch.ones_like(divisor), divisor))


def combine_weighted(
    weighted: Sequence[torch.Tensor],
    consensus: bool,
    sign_rule: str = "total",
    divide_by: str = "count",
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Σ of sparsified, weighted updates, or (consensus) TIES' elected-sign disjoint mean of them
    (divided as `divide_by` says; `weights` are the λᵢ already applied, for divide_by 'weights')."""
    if len(weighted) == 0:
        raise MethodError("nothing to merge")
    if not consensus:
        total = weighted[0].clone()
        for x in weighted[1:]:
            total += x
        return total
    return disjoint_mean(weighted, elect_sign(weighted, sign_rule), divide_by, weights)


def combine_stacked_(
    stacked: torch.Tensor,
    consensus: bool,
    sign_rule: str = "total",
    divide_by: str = "count",
    weights: Sequence[float] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """combine_weighted of the updates stacked on dim 0 of `stacked` (a scratch buffer it may
    overwrite), written into `out`: the same sums in the same order (dim 0 first to last)."""
    if stacked.shape[0] == 0:
        raise MethodError("nothing to merge")
    shape, device = stacked.shape[1:], stacked.device
    out = torch.empty(shape, dtype=stacked.dtype, device=device) if out is None else out
    if not consensus:
        return torch.sum(stacked, 0, out=out)
    if divide_by not in DIVIDE_RULES:
        raise MethodError(f"unknown divide_by '{divide_by}' (allowed: {', '.join(DIVIDE_RULES)})")
    if divide_by == "weights" and (weights is None or len(weights) != stacked.shape[0]):
        raise MethodError("divide_by 'weights' needs one weight per update")
    if sign_rule not in SIGN_RULES:
        raise MethodError(f"unknown sign rule '{sign_rule}' (allowed: {', '.join(SIGN_RULES)})")
    if kernels.usable(stacked, out):  # the same sums in one compiled pass per entry
        return kernels.combine_stacked(stacked, sign_rule, divide_by, weights, out)
    return out.copy_(combine_weighted(list(stacked), True, sign_rule, divide_by, weights))
