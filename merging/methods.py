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
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

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


# ----- the magnitude cut: which entries TIES' trim keeps, found without sorting

_SELECT_SAMPLE = 1 << 16  # sample size that brackets the k-th largest magnitude


@dataclass(frozen=True)
class MagnitudeCut:
    """Keep the entries with |x| > threshold, and the first `ties` (row-major) with |x| == threshold.

    That is exactly k entries: the k largest magnitudes, ties at the cut broken by position (so the
    result does not depend on a sort's implementation, device or thread count).
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


def apply_cut(x: torch.Tensor, magnitudes: torch.Tensor, cut: MagnitudeCut, ties_left: list[int] | None = None) -> torch.Tensor:
    """x where the cut keeps it, else 0. `ties_left` ([count]) carries the tie budget across
    consecutive row blocks of one matrix, so a matrix cut block by block keeps what it would whole."""
    if cut.all_ties:
        if float(cut.threshold) <= 0.0:
            return x.clone()
        # hardshrink keeps |x| > λ; λ the float just below the threshold keeps |x| ≥ threshold
        below = torch.nextafter(cut.threshold, torch.zeros_like(cut.threshold))
        return torch.nn.functional.hardshrink(x, float(below))
    keep = magnitudes > cut.threshold
    left = ties_left if ties_left is not None else [cut.ties]
    if left[0] > 0:
        equal = (magnitudes == cut.threshold).reshape(-1).nonzero().squeeze(1)[: left[0]]
        keep.view(-1)[equal] = True
        left[0] -= int(equal.numel())
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


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


def combine_weighted(weighted: Sequence[torch.Tensor], consensus: bool, sign_rule: SignRule = "total") -> torch.Tensor:
    """Σ of sparsified, weighted updates, or (consensus) TIES' elected-sign disjoint mean of them.

    Adapter by adapter in place: no stacked (n, d_out, d_in) copy, no per-adapter temporaries beyond one.
    """
    if not weighted:
        raise MethodError("nothing to merge")
    if not consensus:
        total = weighted[0].clone()
        for x in weighted[1:]:
            total += x
        return total
    if sign_rule == "total":
        votes = weighted[0].clone()
        for x in weighted[1:]:
            votes += x
    elif sign_rule == "frequency":
        votes = weighted[0].sign()
        for x in weighted[1:]:
            votes += x.sign()
    else:
        raise MethodError(f"unknown sign rule '{sign_rule}' (allowed: {', '.join(SIGN_RULES)})")
    # the elected sign, +1 where the vote is 0: sign(v) + ½ is never 0, and its sign is the election
    sign = votes.sign_().add_(0.5).sign_()
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


def combine(
    deltas: Iterable[torch.Tensor],
    weights: Sequence[float],
    spec: MethodSpec,
    density: float = 1.0,
    sign_rule: SignRule = "total",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge dense updates with a sparsify × consensus method. Returns the merged dense ΔW.

    `deltas` may be a generator: each update is sparsified and weighted as it arrives.
    """
    weights = list(weights)
    weighted: list[torch.Tensor] = []
    for index, delta in enumerate(deltas):
        if index >= len(weights):
            raise MethodError(f"more updates than the {len(weights)} weights")
        weighted.append(sparsify(delta, spec.sparsify, density, generator) * float(weights[index]))
    if len(weighted) != len(weights):
        raise MethodError(f"{len(weighted)} updates but {len(weights)} weights")
    return combine_weighted(weighted, spec.consensus, sign_rule)


# Row blocks of about this many bytes (all adapters' rows together) stay in the CPU's cache.
_BLOCK_BYTES = {"cpu": 8 << 20, "cuda": 1 << 30}


def combine_factors(
    modules: Sequence[LoraModule | None],
    weights: Sequence[float],
    spec: MethodSpec,
    density: float,
    sign_rule: SignRule,
    generator: torch.Generator | None,
    device: str | torch.device,
) -> torch.Tensor:
    """`combine` of the updates sᵢBᵢAᵢ without holding them: the same result, block of rows by block.

    TIES' cut needs each update's k-th largest magnitude over the whole matrix: one pass per update
    finds it (a sample brackets it, the block pass counts above the bracket and keeps the few values
    inside). DARE's masks are drawn whole, in the same order as `combine` draws them, so a seed gives
    the same masks. Then each block of rows is rebuilt from the factors (a rank-r product), cut,
    weighted and merged while it is in cache. Memory: the merged matrix, plus DARE's masks as bytes.
    `modules[i]` None contributes zero (and still draws its DARE mask, as `combine` does).
    """
    device = torch.device(device)
    present = [m for m in modules if m is not None]
    if not present:
        raise MethodError("nothing to merge")
    if len(modules) != len(weights):
        raise MethodError(f"{len(modules)} updates but {len(weights)} weights")
    if spec.sparsify not in ("none", "magnitude", "random"):
        raise MethodError(f"unknown sparsification '{spec.sparsify}'")
    d_out, d_in = present[0].shape
    factors = [
        None if m is None else ((m.B.to(device, torch.float32) * m.scale), m.A.to(device, torch.float32))
        for m in modules
    ]
    rows = max(1, min(d_out, _BLOCK_BYTES.get(device.type, 8 << 20) // (4 * d_in * (len(modules) + 3))))
    blocks = [(start, min(start + rows, d_out)) for start in range(0, d_out, rows)]
    sparsifying = spec.sparsify != "none" and density < 1.0

    masks: list[torch.Tensor | None] = [None] * len(modules)
    if sparsifying and spec.sparsify == "random":
        if generator is None:
            raise MethodError("random sparsification needs a seeded generator")
        for i in range(len(modules)):
            masks[i] = torch.rand((d_out, d_in), generator=generator, device=generator.device) < density
    cuts: list[MagnitudeCut | None] = [None] * len(modules)
    k = int(density * d_out * d_in)
    if sparsifying and spec.sparsify == "magnitude" and k > 0:
        for i, pair in enumerate(factors):
            if pair is not None:
                cuts[i] = _cut_of_factors(pair, k, blocks)
    ties_left = [[cut.ties] if cut is not None else None for cut in cuts]

    merged = torch.empty((d_out, d_in), dtype=torch.float32, device=device)
    for start, stop in blocks:
        weighted = []
        for i, pair in enumerate(factors):
            if pair is None or (sparsifying and spec.sparsify == "magnitude" and k <= 0):
                weighted.append(torch.zeros((stop - start, d_in), dtype=torch.float32, device=device))
                continue
            x = pair[0][start:stop] @ pair[1]
            if cuts[i] is not None:
                x = apply_cut(x, x.abs(), cuts[i], ties_left[i])
            elif masks[i] is not None:
                x = x.div_(density).mul_(masks[i][start:stop].to(device))
            weighted.append(x.mul_(float(weights[i])))
        merged[start:stop] = combine_weighted(weighted, spec.consensus, sign_rule)
    return merged


def _cut_of_factors(pair: tuple[torch.Tensor, torch.Tensor], k: int, blocks) -> MagnitudeCut:
    """magnitude_cut of |B·A| without holding B·A: a sample from the factors, then one block pass."""
    B, A = pair
    d_out, d_in = B.shape[0], A.shape[1]
    numel = d_out * d_in
    if numel > 4 * _SELECT_SAMPLE:
        generator = torch.Generator(device=B.device).manual_seed(0)
        index = torch.randint(numel, (_SELECT_SAMPLE,), generator=generator, device=B.device)
        sample = (B[index // d_in] * A[:, index % d_in].T).sum(dim=1).abs()
        lo, hi = _bracket(sample, k, numel)
        above, inside = 0, []
        for start, stop in blocks:
            count, values = _split((B[start:stop] @ A).abs_(), lo, hi)
            above += count
            inside.append(values)
        cut = _cut_from(above, torch.cat(inside), k)
        if cut is not None:
            return cut
    return magnitude_cut(torch.cat([(B[start:stop] @ A).abs_() for start, stop in blocks]), k)


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


# Truncated SVDs of dense updates: block Krylov when the rank is small against the shape.
_KRYLOV_BLOCK = 32  # columns added per Krylov step, beyond the rank
_KRYLOV_TOL = 1e-4  # accept when every kept pair has ‖M v − σ u‖ ≤ tol · σ₁


@contextmanager
def _one_cpu_thread():
    """One intra-op thread for a tiny CPU factorization: waking a pool of OpenMP threads (passive
    waiting, a busy machine) costs far more than a ~100-square problem. The setting is restored at
    once; in the dashboard the Lab's lock keeps other torch work from running meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _small_eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eigh of a small symmetric matrix; on a GPU it runs on the CPU in float64 instead, where a
    few-hundred-square problem takes well under a millisecond (cuSOLVER's takes ~8 ms)."""
    if gram.device.type == "cpu":
        return torch.linalg.eigh(gram)
    with _one_cpu_thread():
        values, vectors = torch.linalg.eigh(gram.to("cpu", torch.float64))
    return values.to(gram.device, gram.dtype), vectors.to(gram.device, gram.dtype)


def _thin_svd(tall: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of a tall, thin matrix; on a GPU as QR there and the SVD of the small R on the CPU."""
    if tall.device.type == "cpu":
        return torch.linalg.svd(tall, full_matrices=False)
    Q, R = torch.linalg.qr(tall)
    with _one_cpu_thread():
        U, S, Vh = torch.linalg.svd(R.to("cpu", torch.float64), full_matrices=False)
    U, S, Vh = (t.to(tall.device, tall.dtype) for t in (U, S, Vh))
    return Q @ U, S, Vh


def truncated_svd(delta: torch.Tensor, rank: int, tol: float = _KRYLOV_TOL) -> Factored | None:
    """Top-`rank` singular triplets of a dense matrix by block Krylov iteration (seeded, so the
    result is reproducible), accepted only when every kept pair has a residual ‖M v − σ u‖ of at
    most tol·σ₁; None when that does not happen within half the dimension (callers then use the
    full SVD). Costs a few passes over M instead of O(d³).
    """
    m, n = delta.shape
    block = rank + _KRYLOV_BLOCK
    limit = min(m, n) // 2  # beyond this a dense SVD costs about as much
    generator = torch.Generator(device=delta.device).manual_seed(0)
    start = torch.randn(n, block, generator=generator, device=delta.device, dtype=delta.dtype)
    basis, _ = torch.linalg.qr(delta @ start)  # orthonormal basis of the Krylov space (columns)
    newest = basis
    projected = None  # Mᵀ·basis: Bᵀ of the Rayleigh–Ritz problem B = basisᵀ·M
    while True:
        step = delta.T @ newest
        projected = step if projected is None else torch.cat([projected, step], dim=1)
        if projected.shape[1] >= 2 * block:
            gram = projected.T @ projected  # = B·Bᵀ, small
            values, vectors = _small_eigh(gram)
            top = vectors[:, -rank:].flip(1)
            sigma = values[-rank:].flip(0).clamp(min=0).sqrt()
            sigma_max = float(sigma[0])
            if not sigma_max > 0 or not float(sigma[-1]) > 1e-3 * sigma_max:
                return None  # (numerically) lower rank than asked: the full SVD handles it exactly
            right = (projected @ top) / sigma
            left = basis @ top
            residual = float(torch.linalg.vector_norm(delta @ right - left * sigma, dim=0).max())
            if residual <= tol * sigma_max:
                V, S, Wh = _thin_svd(projected)  # projected = V S Wᵀ
                kept = min(rank, S.numel())
                total = float(torch.linalg.matrix_norm(delta)) ** 2
                energy = 1.0 if total == 0.0 else min(float((S[:kept] ** 2).sum()) / total, 1.0)
                return Factored((basis @ Wh[:kept].T) * S[:kept], V[:, :kept].T.contiguous(), energy)
        if basis.shape[1] + block > limit:
            return None
        grown = delta @ step
        for _ in range(2):  # block Gram–Schmidt, twice for orthogonality in float32
            grown = grown - basis @ (basis.T @ grown)
        newest, _ = torch.linalg.qr(grown)
        basis = torch.cat([basis, newest], dim=1)


def svd_of_dense(delta: torch.Tensor, rank: int | None) -> Factored:
    """SVD of a dense update: exact (numerical rank) when rank is None, else truncated."""
    if rank is not None and min(delta.shape) >= 8 * (rank + _KRYLOV_BLOCK):
        result = truncated_svd(delta, rank)
        if result is not None:
            return result
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
