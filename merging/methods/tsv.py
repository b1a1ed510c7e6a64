"""TSV-Merge (Task Singular Vectors; Gargiulo et al., CVPR 2025): per module, keep each task's top
singular vectors, decorrelate the stacked singular vectors across tasks, and sum.

For updates ΔWᵢ (here λᵢ·sᵢ·Bᵢ·Aᵢ):

    ΔWᵢ = Uᵢ Σᵢ Vᵢᵀ, truncated to its top kᵢ singular triplets
    U = [U₁ … Uₙ], Σ = diag(Σ₁ … Σₙ), V = [V₁ … Vₙ]          (the stacked task singular vectors)
    U = P Sᵤ Qᵀ  →  U⊥ = P Qᵀ;  V = P' Sᵥ Q'ᵀ  →  V⊥ = P' Q'ᵀ (orthogonal Procrustes: the nearest
                                                              matrices with orthonormal columns)
    ΔW = U⊥ Σ V⊥ᵀ

Where the tasks' singular vectors are already orthogonal to each other, U⊥ = U and V⊥ = V and
TSV-Merge is task arithmetic of the truncated updates; where they overlap, it removes the overlap
(the interference) instead of adding it. It is a subspace method neither PEFT nor mergekit has.

The budget follows the authors' code (AntoAndGar/task_singular_vectors,
`compute_and_sum_svd_mem_reduction`): each task keeps k = int(min(d_out, d_in) / n) singular
vectors, n the number of tasks, so the stacked U has at most min(d_out, d_in) columns. `fraction`
scales that budget (1 = the paper). From the factors it is exact and small: each update's SVD comes
from QR of Bᵢ and of Aᵢᵀ and the SVD of the rᵢ × rᵢ core, and the Procrustes steps are thin SVDs of
the d × Σkᵢ stacks; no d_out × d_in matrix is formed. The result is factored: B = U⊥Σ, A = V⊥ᵀ.

Deviations from the authors' code, each named:
- Weights: each update is multiplied by its λᵢ before its SVD (the authors scale the merged result
  by one α). With equal weights λ the result is λ·TSV (singular vectors do not change with scale).
- Ranks: kᵢ is also capped at the update's numerical rank. A LoRA update of rank rᵢ has only rᵢ
  singular directions (usually rᵢ < the budget, so the whole update is kept); the authors' full
  fine-tunes are full rank. Zero directions would stack arbitrary vectors into U, and an update
  with λᵢ = 0 then contributes nothing, as it should.
- kᵢ is at least 1 (int(min(d)/n) is 0 when there are more tasks than dimensions).
- Procrustes keeps only the stack's numerically nonzero singular values (P₊Q₊ᵀ): where two tasks
  share a direction exactly (identical adapters) the full P Qᵀ would pair it with an arbitrary
  completion of the basis; the partial isometry does not, and TSV of identical adapters returns
  the adapter. Everywhere else the two are equal.
- The authors average parameters that are not matrices (biases, norms); a LoRA adapter has none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.adapters.lora import LoraModule
from merging.methods.factored import Factored
from merging.methods.registry import Mergekit, Method, MethodArgs, Param

FRACTION = Param(
    "fraction", "float", 1.0, minimum=0.0, maximum=1.0, exclusive_minimum=True, search=(0.1, 1.0),
    help="Share of the paper's per-task budget of int(min(d_out, d_in) / n) singular vectors that each "
    "update keeps (1 = the paper; an update never keeps more than its rank).",
)


def task_budget(shape: tuple[int, int], tasks: int, fraction: float) -> int:
    """How many singular vectors each task may keep: int(fraction · min(d_out, d_in) / n), at least 1."""
    return max(1, int(fraction * min(shape) / tasks))


def nonzero_count(S: torch.Tensor, shape: Sequence[int]) -> int:
    """How many singular values are not zero to float precision (0 for a zero matrix)."""
    if S.numel() == 0:
        return 0
    return int((S > S.max() * max(shape) * torch.finfo(S.dtype).eps).sum())


def nearest_orthonormal(stacked: torch.Tensor) -> torch.Tensor:
    """Orthogonal Procrustes: P₊Q₊ᵀ from the thin SVD stacked = P S Qᵀ, over the nonzero S."""
    P, S, Qh = torch.linalg.svd(stacked, full_matrices=False)
    kept = nonzero_count(S, stacked.shape)
    return P[:, :kept] @ Qh[:kept]


def _sum_decorrelated(Us: list[torch.Tensor], Ss: list[torch.Tensor], Vs: list[torch.Tensor], shape) -> Factored:
    """U⊥ Σ V⊥ᵀ of the stacked per-task singular triplets, in factored form."""
    if sum(S.numel() for S in Ss) == 0:  # every update is zero
        device = Us[0].device if Us else "cpu"
        return Factored(torch.zeros(shape[0], 1, device=device), torch.zeros(1, shape[1], device=device))
    U = nearest_orthonormal(torch.cat(Us, dim=1))
    V = nearest_orthonormal(torch.cat(Vs, dim=1))
    return Factored(U * torch.cat(Ss), V.T.contiguous())


def _truncate(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, budget: int, shape) -> tuple:
    kept = min(budget, nonzero_count(S, shape))
    return U[:, :kept], S[:kept], Vh[:kept].T


def tsv_factored(modules: Sequence[LoraModule], weights: Sequence[float], args: MethodArgs) -> Factored:
    """TSV-Merge from the factors: each update's SVD from QR of Bᵢ and Aᵢᵀ and an rᵢ × rᵢ core."""
    shape = tuple(modules[0].shape)
    budget = task_budget(shape, len(modules), args["fraction"])
    Us, Ss, Vs = [], [], []
    for module, weight in zip(modules, weights):
        Q_b, R_b = torch.linalg.qr(module.B.to(args.device, torch.float32) * (module.scale * float(weight)))
        Q_a, R_a = torch.linalg.qr(module.A.to(args.device, torch.float32).T)
        U, S, Vh = torch.linalg.svd(R_b @ R_a.T)
        U, S, V = _truncate(U, S, Vh, budget, shape)
        Us.append(Q_b @ U)
        Ss.append(S)
        Vs.append(Q_a @ V)
    return _sum_decorrelated(Us, Ss, Vs, shape)


def tsv_dense(deltas: Sequence[torch.Tensor], weights: Sequence[float], args: MethodArgs) -> torch.Tensor:
    """TSV-Merge of dense updates (DO-Merging's directions): a full SVD of each weighted update."""
    deltas = list(deltas)
    shape = tuple(deltas[0].shape)
    budget = task_budget(shape, len(deltas), args["fraction"])
    Us, Ss, Vs = [], [], []
    for delta, weight in zip(deltas, weights):
        U, S, V = _truncate(*torch.linalg.svd(delta * float(weight), full_matrices=False), budget, shape)
        Us.append(U)
        Ss.append(S)
        Vs.append(V)
    merged = _sum_decorrelated(Us, Ss, Vs, shape)
    return merged.B @ merged.A


TSV = Method(
    name="tsv",
    label="TSV-Merge",
    description="Task Singular Vectors: keep each update's top singular vectors, make the stacked U's and "
    "V's orthonormal (orthogonal Procrustes) to remove their overlap, then sum UΣVᵀ.",
    params=(FRACTION,),
    factored=tsv_factored,
    dense=tsv_dense,
    paper="https://arxiv.org/abs/2412.00081",
    mergekit=Mergekit(refusal="TSV-Merge decorrelates the updates' singular vectors; mergekit has no such method"),
)
