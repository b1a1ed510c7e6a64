"""TIES' consensus: elect a sign per entry, then average only the entries that agree with it.

    elect_sign      total: sign of Σᵢ xᵢ (mass wins); frequency: sign of Σᵢ sign(xᵢ) (head count
                    wins); a tie (0) goes to +1
    disjoint_mean   per entry, the mean over the updates whose entry is nonzero and has the
                    elected sign (entries nobody keeps stay 0)

Both take the weighted updates as a sequence (a list, or a stacked tensor with the updates on dim
0) and work adapter by adapter in place: no stacked (n, d_out, d_in) copy, no per-adapter
temporaries beyond one. `combine_weighted` is the two in a row, or the plain sum without consensus.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods.registry import MethodError, Param

SIGN_RULES: tuple[str, ...] = ("total", "frequency")

SIGN = Param(
    "sign", "choice", "total", choices=SIGN_RULES,
    help="How the sign of each entry is elected: total (sign of the sum, mass wins) or frequency "
    "(sign of the sum of signs, head count wins).",
    label="Sign election",
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


def disjoint_mean(weighted: Sequence[torch.Tensor], sign: torch.Tensor) -> torch.Tensor:
    """Mean over the updates whose entry is nonzero and has the elected sign."""
    # In the elected sign's frame x·s is |x| where x agrees and ≤ 0 where it does not (or is 0), so
    # Σ max(x·s, 0) sums the agreeing magnitudes and Σ sign(max(x·s, 0)) counts them; ×s maps back.
    # Multiplying by ±1 is exact, so this is bitwise the masked sum, without boolean masks.
    total = torch.zeros_like(sign)
    count = torch.zeros_like(sign)
    for x in weighted:
        agreeing = (x * sign).clamp_(min=0)
        total += agreeing
        count += agreeing.sign_()
    return total.mul_(sign).div_(count.clamp_(min=1))


def combine_weighted(weighted: Sequence[torch.Tensor], consensus: bool, sign_rule: str = "total") -> torch.Tensor:
    """Σ of sparsified, weighted updates, or (consensus) TIES' elected-sign disjoint mean of them."""
    if len(weighted) == 0:
        raise MethodError("nothing to merge")
    if not consensus:
        total = weighted[0].clone()
        for x in weighted[1:]:
            total += x
        return total
    return disjoint_mean(weighted, elect_sign(weighted, sign_rule))
