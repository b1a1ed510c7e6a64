"""SVDs of merged updates that never form more than they must.

    svd_of_factors   B·A held as factors: QR of B and of Aᵀ and the SVD of the small R_B·R_Aᵀ core
    svd_of_dense     a dense update: block Krylov iteration for a small rank, else the full SVD
    numerical_rank   how many singular values are not zero to float precision

Both report the fraction of the energy (Σσ²) a truncation kept.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from merging.methods.factored import Factored


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
