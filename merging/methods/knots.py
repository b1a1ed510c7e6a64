"""KnOTS (Stoica et al., 2024): one SVD aligns all updates, the per-task blocks are merged there.

[ΔW₁ … ΔWₙ] = U Σ [V₁ᵀ … Vₙᵀ], so ΔWᵢ = U·(Σ Vᵢᵀ) with Σ Vᵢᵀ = Uᵀ ΔWᵢ. The blocks Uᵀ ΔWᵢ are
merged with an inner method (task arithmetic or TIES) and the result is U·merged.

From the factors (exact): U spans the column space of [B₁ … Bₙ]; it comes from QR of the stacked
B's and an SVD of a (k × n·d_in) matrix with k = Σ rᵢ, never from d_out × n·d_in, and U·merged is a
factored result (B = U, A = merged block). On dense updates (DO-Merging's directions) the SVD is of
the concatenation itself. U is cut to the numerical rank of the concatenation on both paths: TIES'
density counts entries of the ΣVᵀ blocks, so null rows would change how many are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.adapters.lora import LoraModule
from merging.methods.consensus import SIGN
from merging.methods.factored import Factored
from merging.methods.registry import Mergekit, Method, MethodArgs, Param, get_method
from merging.methods.sparsify import DENSITY
from merging.methods.svd import numerical_rank

INNER = Param(
    "inner", "choice", "task_arithmetic", choices=("task_arithmetic", "ties"),
    help="How the aligned per-task blocks are merged.",
    label="KnOTS merges the aligned blocks with",
)


def _canonical_signs(U: torch.Tensor) -> torch.Tensor:
    """±1 per column of U so that each column's largest-magnitude entry is positive.

    Singular vectors are unique only up to sign, and LAPACK's choice depends on the order of the
    concatenated updates. TIES inside KnOTS elects signs in the aligned space and sends tied votes
    to +, so without a fixed convention the merge would depend on the order the adapters are listed
    in (and on the device's SVD).
    """
    rows = U.abs().argmax(dim=0)
    signs = torch.sign(U[rows, torch.arange(U.shape[1], device=U.device)])
    return torch.where(signs == 0, torch.ones_like(signs), signs)


def _merge_blocks(blocks: Sequence[torch.Tensor], weights: Sequence[float], args: MethodArgs) -> torch.Tensor:
    """The inner method on the aligned blocks, with the parameters of ours it takes."""
    inner = get_method(args["inner"])
    # the inner method's parameters KnOTS does not declare (TIES' divide_by) keep their defaults
    own = {name: args.parameters.get(name, inner.param(name).default) for name in inner.param_names}
    per_adapter = tuple({k: v for k, v in p.items() if inner.has_param(k)} for p in args.per_adapter)
    return inner.dense(blocks, weights, MethodArgs(own, per_adapter, args.generator, args.device))


def knots_factored(modules: Sequence[LoraModule], weights: Sequence[float], args: MethodArgs) -> Factored:
    device = args.device
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
    U_core = U_core * _canonical_signs(Q_b @ U_core)
    task_blocks = [U_core.T @ block for block in blocks_in_q]  # Σ Vᵢᵀ, one (k × d_in) per task
    return Factored(Q_b @ U_core, _merge_blocks(task_blocks, weights, args))


def knots_dense(deltas: Sequence[torch.Tensor], weights: Sequence[float], args: MethodArgs) -> torch.Tensor:
    concatenated = torch.cat(list(deltas), dim=1)
    U, S, _ = torch.linalg.svd(concatenated, full_matrices=False)
    U = U[:, : numerical_rank(S, tuple(concatenated.shape))]
    U = U * _canonical_signs(U)
    blocks = [U.T @ delta for delta in deltas]
    return U @ _merge_blocks(blocks, weights, args)


KNOTS = Method(
    name="knots",
    label="KnOTS",
    description="SVD of the concatenated updates [ΔW₁ … ΔWₙ] = UΣVᵀ; merge the per-task blocks of ΣVᵀ "
    "with task arithmetic or TIES; map back with U.",
    params=(INNER, DENSITY, SIGN),
    factored=knots_factored,
    dense=knots_dense,
    paper="https://arxiv.org/abs/2410.19735",
    mergekit=Mergekit(refusal="KnOTS aligns the updates with one SVD of their concatenation before merging; mergekit has no such method"),
)
