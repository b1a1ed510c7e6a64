"""Merge methods over per-module LoRA updates ΔWᵢ = sᵢ·Bᵢ·Aᵢ.

Methods are composed, as in mergekit's generalized task arithmetic, from three choices:

    sparsify   none | magnitude (keep the top `density` fraction by |x|) | random (keep with
               probability `density`, rescale by 1/density: DARE)
    consensus  none | ties (elect a sign per entry, keep only the agreeing entries)
    combine    weighted sum (no consensus) | mean over the agreeing entries (with consensus)

Where the weights λᵢ enter (the same place as PEFT's merge_utils and the TIES paper): each adapter's
sparsified update is multiplied by λᵢ *before* the sign election, and the disjoint mean divides by the
number of agreeing adapters, not by Σλ. With equal weights λ this is the paper's θ = λ·τ_m. (PEFT
elects the sign on the unweighted updates; with equal positive weights the two agree, and ours lets
an adapter with λ = 0 drop out of the vote.)

Two methods are not of that shape: `knots` (align the updates with one SVD, merge there) and
`peft_naive` (PEFT's `linear` combination of A and B separately, kept to show its cross terms).

The functions here take dense float32 tensors or factors and return tensors; merge.py streams the
modules of real adapters through them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from merging.lora import LoraModule

Sparsify = Literal["none", "magnitude", "random"]
SignRule = Literal["total", "frequency"]
SIGN_RULES: tuple[str, ...] = ("total", "frequency")


@dataclass(frozen=True)
class MethodSpec:
    """One entry of the registry the UI and the CLI list."""

    name: str
    label: str
    description: str
    sparsify: Sparsify = "none"
    consensus: bool = False
    uses_density: bool = False
    uses_sign: bool = False


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("task_arithmetic", "Task arithmetic", "Σ λᵢ ΔWᵢ."),
        MethodSpec(
            "ties",
            "TIES",
            "Keep each update's top-density entries by |x|, elect a sign per entry, average the agreeing ones.",
            sparsify="magnitude",
            consensus=True,
            uses_density=True,
            uses_sign=True,
        ),
        MethodSpec(
            "dare_linear",
            "DARE (linear)",
            "Keep each entry with probability density, rescale by 1/density, then Σ λᵢ ΔWᵢ.",
            sparsify="random",
            uses_density=True,
        ),
        MethodSpec(
            "dare_ties",
            "DARE-TIES",
            "DARE's random drop and rescale, then TIES' sign election and disjoint mean.",
            sparsify="random",
            consensus=True,
            uses_density=True,
            uses_sign=True,
        ),
        MethodSpec(
            "magnitude_prune",
            "Magnitude prune",
            "Keep each update's top-density entries by |x|, then Σ λᵢ ΔWᵢ.",
            sparsify="magnitude",
            uses_density=True,
        ),
        MethodSpec(
            "knots",
            "KnOTS",
            "SVD of the concatenated updates [ΔW₁ … ΔWₙ] = UΣVᵀ; merge the per-task blocks of ΣVᵀ "
            "with task arithmetic or TIES; map back with U.",
            uses_density=True,
            uses_sign=True,
        ),
        MethodSpec(
            "peft_naive",
            "PEFT naive (A and B separately)",
            "PEFT's `linear` combination: A = Σ √λᵢsᵢ Aᵢ, B = Σ √λᵢsᵢ Bᵢ. Its product has cross terms "
            "Bᵢ·Aⱼ that no adapter trained: shown to make that visible, not to be used.",
        ),
    ]
}


class MethodError(ValueError):
    """A method name or parameter that is not allowed."""


def get_method(name: str) -> MethodSpec:
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise MethodError(f"unknown method '{name}'{hint} (allowed: {', '.join(METHODS)})")


# ----------------------------------------------------------------------------------------------
# The three building blocks, on dense tensors


def keep_top_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the int(density·numel) entries of largest |x| (PEFT's and TIES' trim step)."""
    if density >= 1.0:
        return delta
    k = int(density * delta.numel())
    if k <= 0:
        return torch.zeros_like(delta)
    flat = delta.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat.abs(), k=k, largest=True, sorted=False).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(delta.shape)


def keep_random(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability `density` and rescale by 1/density (unbiased)."""
    if density >= 1.0:
        return delta
    if density <= 0.0:
        return torch.zeros_like(delta)
    keep = torch.rand(delta.shape, generator=generator, device=generator.device) < density
    return torch.where(keep.to(delta.device), delta / density, torch.zeros_like(delta))


def elect_sign(weighted: torch.Tensor, rule: SignRule = "total") -> torch.Tensor:
    """The per-entry sign elected over stacked updates (adapters on dim 0); ties go to +1.

    `total`: sign of Σᵢ xᵢ (mass wins). `frequency`: sign of Σᵢ sign(xᵢ) (head count wins).
    """
    if rule == "total":
        votes = weighted.sum(dim=0)
    elif rule == "frequency":
        votes = weighted.sign().sum(dim=0)
    else:
        raise MethodError(f"unknown sign rule '{rule}' (allowed: {', '.join(SIGN_RULES)})")
    return torch.where(votes >= 0, 1.0, -1.0).to(weighted.dtype)


def disjoint_mean(weighted: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean over the adapters whose entry is nonzero and has the elected sign."""
    agrees = weighted.sign() == sign
    total = (weighted * agrees).sum(dim=0)
    count = agrees.sum(dim=0).clamp(min=1)
    return total / count


def sparsify(
    delta: torch.Tensor, how: Sparsify, density: float, generator: torch.Generator | None
) -> torch.Tensor:
    if how == "none":
        return delta
    if how == "magnitude":
        return keep_top_magnitude(delta, density)
    if how == "random":
        if generator is None:
            raise MethodError("random sparsification needs a seeded generator")
        return keep_random(delta, density, generator)
    raise MethodError(f"unknown sparsification '{how}'")


def combine(
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    spec: MethodSpec,
    density: float = 1.0,
    sign_rule: SignRule = "total",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge dense updates with a sparsify × consensus method. Returns the merged dense ΔW."""
    if len(deltas) != len(weights):
        raise MethodError(f"{len(deltas)} updates but {len(weights)} weights")
    if not deltas:
        raise MethodError("nothing to merge")
    weighted = torch.stack(
        [sparsify(delta, spec.sparsify, density, generator) * float(w) for delta, w in zip(deltas, weights)]
    )
    if not spec.consensus:
        return weighted.sum(dim=0)
    return disjoint_mean(weighted, elect_sign(weighted, sign_rule))


# ----------------------------------------------------------------------------------------------
# Factored forms: exact where the merge is linear, and SVDs that never touch d_out × d_in


@dataclass(frozen=True)
class Factored:
    """A low-rank matrix B·A (scale 1) with the fraction of its energy a truncation kept."""

    B: torch.Tensor
    A: torch.Tensor
    energy_kept: float = 1.0

    def as_module(self) -> LoraModule:
        return LoraModule(self.A, self.B, 1.0)


def concatenate(modules: Sequence[LoraModule], weights: Sequence[float], device: str | torch.device) -> Factored:
    """Σ λᵢ sᵢ Bᵢ Aᵢ exactly, as [λ₁s₁B₁ … λₙsₙBₙ]·[A₁; …; Aₙ] (rank Σ rᵢ)."""
    Bs = [m.B.to(device, torch.float32) * (m.scale * float(w)) for m, w in zip(modules, weights)]
    As = [m.A.to(device, torch.float32) for m in modules]
    return Factored(torch.cat(Bs, dim=1), torch.cat(As, dim=0))


def numerical_rank(S: torch.Tensor, shape: tuple[int, ...]) -> int:
    """How many singular values are not zero to float precision (at least 1)."""
    if S.numel() == 0:
        return 0
    tolerance = S.max() * max(shape) * torch.finfo(S.dtype).eps
    return max(int((S > tolerance).sum()), 1)


def _keep_rank(S: torch.Tensor, rank: int | None, shape: tuple[int, int]) -> int:
    """How many singular values to keep: `rank`, or all that are not numerically zero."""
    if rank is not None:
        return min(rank, S.numel())
    return numerical_rank(S, shape)


def _energy(S: torch.Tensor, kept: int) -> float:
    total = float((S**2).sum())
    return 1.0 if total == 0.0 else float((S[:kept] ** 2).sum()) / total


def svd_of_factors(B: torch.Tensor, A: torch.Tensor, rank: int | None) -> Factored:
    """Truncated SVD of B·A from QR of B and of Aᵀ and an SVD of the small R_B·R_Aᵀ core.

    B·A = Q_B (R_B R_Aᵀ) Q_Aᵀ, and the core is (k × k) with k the inner dimension, so the cost is
    O((d_out + d_in)·k²) instead of O(d_out·d_in·min(d_out, d_in)) for the dense matrix.
    """
    Q_b, R_b = torch.linalg.qr(B)
    Q_a, R_a = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd(R_b @ R_a.T)
    kept = _keep_rank(S, rank, (B.shape[0], A.shape[1]))
    new_B = (Q_b @ U[:, :kept]) * S[:kept]
    new_A = Vh[:kept] @ Q_a.T
    return Factored(new_B, new_A, _energy(S, kept))


def svd_of_dense(delta: torch.Tensor, rank: int | None) -> Factored:
    """SVD of a dense update: exact (numerical rank) when rank is None, else truncated."""
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    kept = _keep_rank(S, rank, tuple(delta.shape))
    return Factored(U[:, :kept] * S[:kept], Vh[:kept], _energy(S, kept))


def knots(
    modules: Sequence[LoraModule],
    weights: Sequence[float],
    inner: MethodSpec,
    density: float,
    sign_rule: SignRule,
    device: str | torch.device,
    generator: torch.Generator | None = None,
) -> Factored:
    """KnOTS: one SVD aligns all updates, the per-task blocks of ΣVᵀ are merged there.

    [ΔW₁ … ΔWₙ] = U Σ [V₁ᵀ … Vₙᵀ], so ΔWᵢ = U·(Σ Vᵢᵀ) with Σ Vᵢᵀ = Uᵀ ΔWᵢ. U spans the column
    space of [B₁ … Bₙ]; it comes from QR of the stacked B's and an SVD of a (k × n·d_in) matrix with
    k = Σ rᵢ, never from d_out × n·d_in. The blocks Uᵀ ΔWᵢ (k × d_in) are merged with `inner`, and
    the result U·merged is exact in factored form (B = U, A = merged block).
    """
    Bs = [m.B.to(device, torch.float32) for m in modules]
    Q_b, R_b = torch.linalg.qr(torch.cat(Bs, dim=1))
    offsets = [0]
    for B in Bs:
        offsets.append(offsets[-1] + B.shape[1])
    # R_b[:, cols of i] · sᵢAᵢ is Q_bᵀ ΔWᵢ; the SVD of their concatenation gives KnOTS' U and Σ.
    blocks_in_q = [
        R_b[:, offsets[i] : offsets[i + 1]] @ (m.A.to(device, torch.float32) * m.scale)
        for i, m in enumerate(modules)
    ]
    concatenated = torch.cat(blocks_in_q, dim=1)
    U_core, S, _ = torch.linalg.svd(concatenated, full_matrices=False)
    U_core = U_core[:, : numerical_rank(S, tuple(concatenated.shape))]
    task_blocks = [U_core.T @ block for block in blocks_in_q]  # Σ Vᵢᵀ, one (k × d_in) per task
    merged_block = combine(task_blocks, weights, inner, density, sign_rule, generator)
    return Factored(Q_b @ U_core, merged_block)


def peft_naive(modules: Sequence[LoraModule], weights: Sequence[float], device: str | torch.device) -> Factored:
    """PEFT's `linear` combination type, reproduced: A and B are averaged separately.

    A = Σ sign(λᵢsᵢ)·√|λᵢsᵢ|·Aᵢ and B = Σ √|λᵢsᵢ|·Bᵢ, so B·A = Σᵢ λᵢsᵢBᵢAᵢ + Σ_{i≠j} (cross terms).
    Only defined for equal ranks, as in PEFT.
    """
    ranks = {m.rank for m in modules}
    if len(ranks) != 1:
        raise MethodError(f"peft_naive needs adapters of one rank, got ranks {sorted(ranks)}")
    A = torch.zeros_like(modules[0].A, dtype=torch.float32, device=device)
    B = torch.zeros_like(modules[0].B, dtype=torch.float32, device=device)
    for module, weight in zip(modules, weights):
        weight_with_scale = float(weight) * module.scale
        root = abs(weight_with_scale) ** 0.5
        sign = 1.0 if weight_with_scale >= 0 else -1.0
        A = A + sign * root * module.A.to(device, torch.float32)
        B = B + root * module.B.to(device, torch.float32)
    return Factored(B, A)
