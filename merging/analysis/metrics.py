"""Diagnostics of a set of LoRA adapters: how much, and where, their updates ΔWᵢ = sᵢ·Bᵢ·Aᵢ collide.

Five views, each per module and averaged per transformer block (``layer_of``):

- magnitude variance: how unevenly one update spreads over its input features (column norms), and
  how unevenly sized the adapters' updates are at a module (variance of ‖ΔWᵢ‖_F across adapters);
- subspace overlap: principal angles between the spaces the adapters read from (row space of Aᵢ)
  and write to (column space of Bᵢ);
- task-vector cosine: the angle between the updates themselves, per module and over a whole adapter;
- sign conflicts: the fraction of entries where the adapters push in opposite directions, the
  quantity TIES' sign election exists to resolve;
- data-parameter interference (OSRM's view): how strongly adapter j responds to task i's inputs,
  relative to task i's own adapter.

Everything is computed in float32 on the ``device`` given (default cpu). All but the sign conflicts
work from the factors: a d_out × d_in matrix is never formed where r × r Gram matrices suffice, e.g.
⟨B₁A₁, B₂A₂⟩_F = trace((B₁ᵀB₂)(A₂A₁ᵀ)). Sign conflicts need the entries themselves, so they form
one module's dense updates at a time.

A module absent from an adapter counts as a zero update there (as in a merge): zero norm, rank 0,
cosine 0, no sign. ``adapter_metrics`` lists such modules under ``missing`` so a reader can tell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import torch

from merging.adapters.lora import Adapter, LoraModule, check_compatible, layer_of
from merging.methods.sparsify import keep_top_magnitude

Device = torch.device | str
Side = Literal["input", "output"]
T = TypeVar("T", float, torch.Tensor)

__all__ = [
    "column_norms",
    "column_norm_stats",
    "delta_norm",
    "gram_matrix",
    "norm_variance_across",
    "orthonormal_basis",
    "module_subspace",
    "subspace_overlap",
    "principal_angles",
    "subspace_overlap_matrix",
    "principal_angle_matrix",
    "cosine",
    "cosine_matrix",
    "adapter_cosine_matrix",
    "sign_conflict_rate",
    "chance_sign_conflict_rate",
    "interference_matrix",
    "interference_from_moments",
    "layer_means",
    "modules_at",
    "subspace_overlap_by_layer",
    "cosine_matrix_by_layer",
    "adapter_metrics",
]


# ----------------------------------------------------------------------------------------------
# Factors


def _factors(module: LoraModule, device: Device) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, scale·B) in float32 on `device`: folding the scale into B makes ΔW = B·A."""
    A = module.A.to(device=device, dtype=torch.float32)
    B = module.B.to(device=device, dtype=torch.float32) * float(module.scale)
    return A, B


def _check_shapes(modules: Sequence[LoraModule | None]) -> tuple[int, int] | None:
    """The common (d_out, d_in) of the present modules; None if none is present."""
    shapes = {m.shape for m in modules if m is not None}
    if len(shapes) > 1:
        raise ValueError(f"modules of different shapes cannot be compared: {sorted(shapes)}")
    return shapes.pop() if shapes else None


# ----------------------------------------------------------------------------------------------
# 1. Magnitude variance


def column_norms(module: LoraModule, device: Device = "cpu") -> torch.Tensor:
    """c[j] = ‖ΔW[:, j]‖₂ for each input feature j, shape (d_in,).

    A large c[j] means input feature j moves the module's output a lot. From the factors:
    c[j]² = A[:, j]ᵀ (BᵀB) A[:, j] with the scale folded into B, so only an r × r Gram matrix and an
    r × d_in product are formed.
    """
    A, B = _factors(module, device)
    gram = B.T @ B
    squared = (A * (gram @ A)).sum(dim=0)
    # Round-off can leave a true zero slightly negative.
    return squared.clamp_min(0.0).sqrt()


def column_norm_stats(module: LoraModule, device: Device = "cpu") -> dict[str, float]:
    """Within one adapter: how unevenly its update spreads over the input features.

    Returns ``mean``, ``variance`` and ``cv`` of the column norms c (see ``column_norms``).
    ``variance`` is the population variance (divides by d_in: the columns are the whole population,
    not a sample). ``cv`` = std(c) / mean(c) is scale-free: 0 means every input feature gets the same
    update magnitude, about 1 or more means a few features dominate. ``cv`` is 0 when mean(c) is 0
    (a zero update, e.g. B = 0 at initialisation).
    """
    c = column_norms(module, device)
    if c.numel() == 0:
        return {"mean": 0.0, "variance": 0.0, "cv": 0.0}
    mean = float(c.mean())
    variance = float(c.var(unbiased=False))
    cv = math.sqrt(max(variance, 0.0)) / mean if mean > 0.0 else 0.0
    return {"mean": mean, "variance": variance, "cv": cv}


def gram_matrix(modules: Sequence[LoraModule | None], device: Device = "cpu") -> torch.Tensor:
    """G[i, j] = ⟨ΔWᵢ, ΔWⱼ⟩_F for the updates of one module in n adapters, shape (n, n).

    None stands for an adapter without this module (a zero row and column). Computed as block sums
    of (BᵀB) ⊙ (AAᵀ) over the stacked factors, since ⟨B₁A₁, B₂A₂⟩_F = Σ (B₁ᵀB₂) ⊙ (A₁A₂ᵀ): the
    largest matrix formed is (Σ rᵢ) × (Σ rᵢ).
    """
    n = len(modules)
    if _check_shapes(modules) is None:
        return torch.zeros(n, n, dtype=torch.float32, device=device)
    As, Bs, owner = [], [], []
    for i, module in enumerate(modules):
        if module is None:
            continue
        A, B = _factors(module, device)
        As.append(A)
        Bs.append(B)
        owner.extend([i] * A.shape[0])
    A_all = torch.cat(As, dim=0)
    B_all = torch.cat(Bs, dim=1)
    products = (B_all.T @ B_all) * (A_all @ A_all.T)
    # Sum each (rᵢ × rⱼ) block: indicator (n × Σr) @ products @ indicatorᵀ.
    indicator = torch.zeros(n, len(owner), dtype=torch.float32, device=device)
    indicator[torch.tensor(owner, device=device, dtype=torch.long), torch.arange(len(owner), device=device)] = 1.0
    gram = indicator @ products @ indicator.T
    return (gram + gram.T) / 2  # exactly symmetric, whatever the round-off


def delta_norm(module: LoraModule | None, device: Device = "cpu") -> float:
    """‖ΔW‖_F from the factors (0 for an absent module)."""
    if module is None:
        return 0.0
    return math.sqrt(max(float(gram_matrix([module], device)[0, 0]), 0.0))


def norm_variance_across(modules: Sequence[LoraModule | None], device: Device = "cpu") -> float:
    """Across adapters: population variance of ‖ΔWᵢ‖_F over the n adapters at one module.

    Population (divides by n, ``unbiased=False``) because the adapters being merged are the whole
    set, not a sample. In squared weight units: 0 means equally sized updates; compare it with the
    mean squared norm to judge it, since a merge's sum is dominated by the largest updates. An absent
    module counts as norm 0.
    """
    if not modules:
        return 0.0
    norms = gram_matrix(modules, device).diagonal().clamp_min(0.0).sqrt()
    return float(norms.var(unbiased=False))


# ----------------------------------------------------------------------------------------------
# 2. Subspace overlap


def orthonormal_basis(matrix: torch.Tensor, device: Device = "cpu", rtol: float | None = None) -> torch.Tensor:
    """Orthonormal basis of the column space of a tall (d × r) matrix, shape (d, k) with k its numerical rank.

    QR alone is not rank revealing (a zero column still gets a basis vector, and may take part of a
    later column's span), so the small R factor's SVD picks the directions: M = QR = (QU) S Vᵀ and the
    basis is QU restricted to singular values above ``rtol · max(S)``. ``rtol`` defaults to
    max(d, r) · eps(float32), as in ``torch.linalg.matrix_rank``. An all-zero matrix has rank 0.
    """
    M = matrix.to(device=device, dtype=torch.float32)
    d, r = M.shape
    if d == 0 or r == 0:
        return M.new_zeros(d, 0)
    Q, R = torch.linalg.qr(M, mode="reduced")
    U, S, _ = torch.linalg.svd(R, full_matrices=False)
    if rtol is None:
        rtol = max(d, r) * torch.finfo(torch.float32).eps
    top = float(S.max()) if S.numel() else 0.0
    if not top > 0.0 or not math.isfinite(top):
        return M.new_zeros(d, 0)
    keep = S > rtol * top
    return Q @ U[:, keep]


def module_subspace(module: LoraModule | None, side: Side, device: Device = "cpu") -> torch.Tensor:
    """Orthonormal basis of what an adapter reads (``input``: row space of A, in R^d_in) or writes
    (``output``: column space of B, in R^d_out) at a module.

    These are the factors' subspaces, not ΔW's: with B = 0 (LoRA at initialisation) the output basis
    is empty while the input basis still has rank r. An absent module (None) is refused here because
    its dimension is unknown; ``subspace_overlap_matrix`` gives it an empty basis.
    """
    if module is None:
        raise ValueError("an absent module has no subspace; use subspace_overlap_matrix, which handles it")
    A, B = _factors(module, device)
    if side == "input":
        return orthonormal_basis(A.T, device)
    if side == "output":
        return orthonormal_basis(B, device)
    raise ValueError(f"side must be 'input' or 'output', got {side!r}")


def subspace_overlap(Q1: torch.Tensor, Q2: torch.Tensor) -> float:
    """φ = ‖Q₁ᵀQ₂‖²_F / min(k₁, k₂) ∈ [0, 1] for orthonormal bases Q₁ (d × k₁) and Q₂ (d × k₂).

    φ is the mean squared cosine of the principal angles: 1 when the smaller subspace lies inside
    the larger, 0 when they are orthogonal; two random k-dimensional subspaces of R^d give about k/d.
    Defined as 0 when either subspace has dimension 0 (e.g. B = 0 at initialisation): an update that
    writes nowhere cannot overlap anything.
    """
    k = min(Q1.shape[1], Q2.shape[1])
    if k == 0:
        return 0.0
    value = float((Q1.T @ Q2).square().sum()) / k
    return min(max(value, 0.0), 1.0)


def principal_angles(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """The min(k₁, k₂) principal angles between two subspaces, in radians, ascending.

    0 means a shared direction, π/2 an orthogonal one. They are arccos of the singular values of
    Q₁ᵀQ₂, clamped to [0, 1] first because round-off can push a cosine past 1. Empty when either
    subspace has dimension 0.
    """
    k = min(Q1.shape[1], Q2.shape[1])
    if k == 0:
        return Q1.new_zeros(0)
    cosines = torch.linalg.svdvals(Q1.T @ Q2)[:k].clamp(0.0, 1.0)
    return torch.arccos(cosines).sort().values


def _bases(modules: Sequence[LoraModule | None], side: Side, device: Device) -> list[torch.Tensor]:
    shape = _check_shapes(modules)
    dim = 0 if shape is None else (shape[1] if side == "input" else shape[0])
    return [
        torch.zeros(dim, 0, dtype=torch.float32, device=device) if m is None else module_subspace(m, side, device)
        for m in modules
    ]


def subspace_overlap_matrix(
    modules: Sequence[LoraModule | None], side: Side = "input", device: Device = "cpu"
) -> torch.Tensor:
    """Adapter × adapter matrix of ``subspace_overlap`` at one module, symmetric, entries in [0, 1].

    The diagonal is 1 for an adapter whose subspace has rank ≥ 1 and 0 for rank 0 (absent module or
    B = 0 on the output side).
    """
    bases = _bases(modules, side, device)
    n = len(bases)
    out = torch.zeros(n, n, dtype=torch.float32)
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = subspace_overlap(bases[i], bases[j])
    return out


def principal_angle_matrix(
    modules: Sequence[LoraModule | None], side: Side = "input", device: Device = "cpu"
) -> list[list[list[float]]]:
    """angles[i][j] = the principal angles (radians, ascending) between adapters i and j at one module."""
    bases = _bases(modules, side, device)
    n = len(bases)
    return [[principal_angles(bases[i], bases[j]).cpu().tolist() for j in range(n)] for i in range(n)]


# ----------------------------------------------------------------------------------------------
# 3. Task-vector cosine


def _cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """cos[i, j] = G[i, j] / (‖i‖‖j‖), 0 where either norm is 0, clamped to [-1, 1] against round-off."""
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    denominator = norms[:, None] * norms[None, :]
    cos = torch.where(denominator > 0, gram / torch.where(denominator > 0, denominator, 1.0), 0.0)
    return cos.clamp(-1.0, 1.0)


def cosine_matrix(modules: Sequence[LoraModule | None], device: Device = "cpu") -> torch.Tensor:
    """Adapter × adapter cosine between the updates ΔWᵢ at one module (entries treated as one vector).

    1: the same direction (one is a positive multiple of the other); 0: orthogonal, the merge's sum
    does not mix them; -1: they cancel. Independent of each adapter's scale. A zero update (absent
    module, B = 0) has no direction: its row and column, diagonal included, are 0.
    """
    return _cosine_from_gram(gram_matrix(modules, device)).cpu()


def cosine(m1: LoraModule, m2: LoraModule, device: Device = "cpu") -> float:
    """Cosine between two updates of the same module (see ``cosine_matrix``)."""
    return float(cosine_matrix([m1, m2], device)[0, 1])


def adapter_cosine_matrix(adapters: Sequence[Adapter], device: Device = "cpu") -> torch.Tensor:
    """Adapter × adapter cosine between whole task vectors: all modules concatenated into one vector.

    cos(i, j) = Σ_m ⟨ΔWᵢᵐ, ΔWⱼᵐ⟩ / √(Σ_m ‖ΔWᵢᵐ‖² · Σ_m ‖ΔWⱼᵐ‖²); a module missing from an adapter
    counts as zero. Large modules weigh more, as in a flattened task vector. Streams one module at a
    time, keeping only the running n × n sum.
    """
    names = _union_modules(adapters)
    total = torch.zeros(len(adapters), len(adapters), dtype=torch.float32, device=device)
    for name in names:
        total += gram_matrix(modules_at(adapters, name), device)
    return _cosine_from_gram(total).cpu()


# ----------------------------------------------------------------------------------------------
# 4. Sign conflicts (TIES)


def chance_sign_conflict_rate(adapters: int, density: float = 1.0, over: Literal["touched", "all"] = "touched") -> float:
    """What ``sign_conflict_rate`` gives for ``adapters`` independent random updates: the chart's chance line.

    Random updates have independent, symmetric signs per entry, and each adapter's top-``density``
    trim keeps an entry with probability d, independently of the others. With m adapters touching an
    entry (m ~ Binomial(n, d)) it is disputed unless all m agree: P(conflict | m) = 1 − 2·2⁻ᵐ for m ≥ 1.
    Summing over m, P(conflict) = 1 + (1 − d)ⁿ − 2·(1 − d/2)ⁿ and P(touched) = 1 − (1 − d)ⁿ, so

        touched: (1 + (1 − d)ⁿ − 2·(1 − d/2)ⁿ) / (1 − (1 − d)ⁿ)        all: the numerator alone.

    At density 1 the rate is 1 − 2¹⁻ⁿ: 50 % for two adapters, 75 % for three, ≈ 94 % for five; so a
    measured rate is only "high" against the line for the number of adapters chosen.
    """
    if adapters < 1:
        raise ValueError(f"adapters must be at least 1, got {adapters}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if over not in ("touched", "all"):
        raise ValueError(f"over must be 'touched' or 'all', got {over!r}")
    untouched = (1.0 - density) ** adapters
    conflict = 1.0 + untouched - 2.0 * (1.0 - density / 2.0) ** adapters
    if over == "all":
        return max(conflict, 0.0)
    return max(conflict, 0.0) / (1.0 - untouched)


def sign_conflict_rate(
    modules: Sequence[LoraModule | None],
    density: float = 1.0,
    device: Device = "cpu",
    over: Literal["touched", "all"] = "touched",
) -> float:
    """Fraction of entries of one module where the adapters' nonzero signs disagree.

    An entry conflicts when, after keeping each adapter's top ``density`` fraction of entries by |x|
    (1.0 keeps everything), at least one adapter is positive there and another negative: those are
    the entries TIES' sign election must settle, and where a plain sum cancels. ``over="touched"``
    (default) divides by the entries that at least one adapter leaves nonzero, so the rate reads
    "of the entries anyone changes, this fraction is disputed" (0 if none is touched); ``over="all"``
    divides by d_out · d_in. Independent random updates give ``chance_sign_conflict_rate(n, density)``
    (0.5 for two at density 1, ≈ 0.94 for five).

    Needs the dense updates: forms one adapter's ΔW at a time and keeps two boolean masks.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if over not in ("touched", "all"):
        raise ValueError(f"over must be 'touched' or 'all', got {over!r}")
    shape = _check_shapes(modules)
    if shape is None:
        return 0.0
    positive = torch.zeros(shape, dtype=torch.bool, device=device)
    negative = torch.zeros(shape, dtype=torch.bool, device=device)
    for module in modules:
        if module is None:
            continue
        A, B = _factors(module, device)
        delta = keep_top_magnitude(B @ A, density)  # the same trim as TIES' (merging.methods)
        positive |= delta > 0
        negative |= delta < 0
        del delta
    conflicts = int((positive & negative).sum())
    denominator = int((positive | negative).sum()) if over == "touched" else positive.numel()
    return conflicts / denominator if denominator else 0.0


# ----------------------------------------------------------------------------------------------
# 5. Data-parameter interference (OSRM)


def interference_matrix(
    modules: Sequence[LoraModule | None],
    features: Sequence[torch.Tensor],
    device: Device = "cpu",
) -> torch.Tensor:
    """Task × adapter matrix I[i, j] = ‖ΔWⱼ Xᵢᵀ‖_F / ‖ΔWᵢ Xᵢᵀ‖_F at one module.

    ``features[i]`` holds task i's inputs to this module, shape (..., d_in) (flattened to n × d_in),
    and pairs with ``modules[i]``; there must be one per adapter. Row i says how loudly each adapter
    answers task i's inputs compared with task i's own adapter: the diagonal is 1, and an off-diagonal
    entry near 0 means adapter j barely disturbs task i in a merge (what OSRM's initialisation aims
    for), near 1 or above that it disturbs it as much as task i's own update.

    ‖ΔW Xᵀ‖_F comes from Y = A Xᵀ (r × n) as ‖B Y‖²_F = Σ (BᵀB) ⊙ (YYᵀ): no d_out × d_in or
    d_out × n matrix. When task i's own response is 0 (e.g. its B = 0, or X = 0), row i is inf where
    the other adapter responds and nan where it does not too; an absent module responds 0.
    """
    def core(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        Y = A @ X.T
        return Y @ Y.T

    return _interference(modules, features, core, "features", device)


def interference_from_moments(
    modules: Sequence[LoraModule | None],
    moments: Sequence[torch.Tensor],
    device: Device = "cpu",
) -> torch.Tensor:
    """``interference_matrix`` from each task's second moment Cᵢ = XᵢᵀXᵢ (d_in × d_in) instead of Xᵢ.

    ‖ΔW Xᵀ‖²_F = Σ (BᵀB) ⊙ (A C Aᵀ), so the same numbers follow from the statistics OSRM collects.
    Any positive multiple of Cᵢ (e.g. the mean XᵀX / n) gives the same matrix, since row i is a ratio:
    ``osrm.ModuleFeatures.second_moment`` or ``.covariance`` both fit.
    """
    def core(A: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        return A @ C @ A.T

    return _interference(modules, moments, core, "moments", device)


def _interference(
    modules: Sequence[LoraModule | None],
    data: Sequence[torch.Tensor],
    core: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    what: Literal["features", "moments"],
    device: Device,
) -> torch.Tensor:
    """Shared loop: responses[i, j] = ‖ΔWⱼ Xᵢᵀ‖_F = √Σ (BⱼᵀBⱼ) ⊙ core(Aⱼ, dataᵢ), divided by row i's own."""
    if len(data) != len(modules):
        raise ValueError(f"need one {what} tensor per adapter: {len(data)} {what} for {len(modules)} adapters")
    shape = _check_shapes(modules)
    n = len(modules)
    if shape is None:
        return torch.full((n, n), float("nan"))
    d_in = shape[1]
    responses = torch.zeros(n, n, dtype=torch.float32, device=device)  # [task, adapter]
    factors = [None if m is None else _factors(m, device) for m in modules]
    grams = [None if f is None else f[1].T @ f[1] for f in factors]
    for i, tensor in enumerate(data):
        tensor = tensor.to(device=device, dtype=torch.float32)
        if what == "moments":
            if tuple(tensor.shape) != (d_in, d_in):
                raise ValueError(f"moments[{i}] has shape {tuple(tensor.shape)}, the module needs ({d_in}, {d_in})")
        else:
            if tensor.shape[-1] != d_in:
                raise ValueError(f"features[{i}] has {tensor.shape[-1]} input features, the module takes {d_in}")
            tensor = tensor.reshape(-1, d_in)
        for j, pair in enumerate(factors):
            if pair is None:
                continue
            responses[i, j] = (grams[j] * core(pair[0], tensor)).sum().clamp_min(0.0).sqrt()
    own = responses.diagonal().clone()
    # Plain division gives the documented inf (x/0) and nan (0/0).
    return (responses / own[:, None]).cpu()


# ----------------------------------------------------------------------------------------------
# Per layer


def layer_means(per_module: Mapping[str, T]) -> dict[int | None, T]:
    """Mean over the modules of each transformer block (``layer_of``), for floats or same-shape tensors.

    Keys are block indices in ascending order, then None for modules outside any block (e.g. a
    pooler). NaN values propagate (a mean with an undefined member is undefined).
    """
    groups: dict[int | None, list[T]] = {}
    for name, value in per_module.items():
        groups.setdefault(layer_of(name), []).append(value)
    order = sorted(k for k in groups if k is not None) + ([None] if None in groups else [])
    out: dict[int | None, T] = {}
    for layer in order:
        values = groups[layer]
        if isinstance(values[0], torch.Tensor):
            out[layer] = torch.stack(list(values)).mean(dim=0)
        else:
            out[layer] = sum(values) / len(values)
    return out


def _union_modules(adapters: Sequence[Adapter]) -> list[str]:
    """All module names in natural order; refuses adapters whose shapes disagree."""
    return check_compatible(adapters).modules


def modules_at(adapters: Sequence[Adapter], name: str) -> list[LoraModule | None]:
    """Each adapter's factors at module `name`, None where the adapter lacks it."""
    return [a.modules.get(name) for a in adapters]


def interference_by_layer(
    adapters: Sequence[Adapter],
    features_by_task: Mapping[str, Mapping[str, Any]],
    inputs: str = "means",
    device: Device = "cpu",
) -> dict[str, torch.Tensor]:
    """OSRM's data-parameter interference (task × adapter) per block, plus "all" over every module.

    `features_by_task[task][module]` is an ``osrm.ModuleFeatures`` of the base model's inputs there;
    adapter i's task gives row i. ``inputs="means"`` uses one row per text (its token mean: what
    OSRM's `osrm` initialisation keeps A away from); ``"tokens"`` uses every token through the
    second moment (what `osrm-cov` minimises). Keys are block indices as strings, "other" for
    modules outside a block, and "all" for the mean over every module.
    """
    if inputs not in ("means", "tokens"):
        raise ValueError(f"inputs must be 'means' or 'tokens', got {inputs!r}")
    per_module: dict[str, torch.Tensor] = {}
    for module in _union_modules(adapters):
        found = [features_by_task.get(a.task, {}).get(module) for a in adapters]
        if any(f is None for f in found):
            raise ValueError(f"no input features for module {module}: collect them for every adapter's task")
        modules = modules_at(adapters, module)
        if inputs == "means":
            per_module[module] = interference_matrix(modules, [f.means for f in found], device)
        else:
            per_module[module] = interference_from_moments(modules, [f.second_moment for f in found], device)
    result = {("other" if k is None else str(k)): v for k, v in layer_means(per_module).items()}
    result["all"] = torch.stack(list(per_module.values())).mean(dim=0)
    return result


def subspace_overlap_by_layer(
    adapters: Sequence[Adapter], side: Side = "input", device: Device = "cpu"
) -> dict[int | None, torch.Tensor]:
    """Adapter × adapter subspace overlap per block: the mean of the per-module matrices of the block."""
    per_module = {
        name: subspace_overlap_matrix(modules_at(adapters, name), side, device) for name in _union_modules(adapters)
    }
    return layer_means(per_module)


def cosine_matrix_by_layer(adapters: Sequence[Adapter], device: Device = "cpu") -> dict[int | None, torch.Tensor]:
    """Adapter × adapter cosine per block: the mean of the per-module cosine matrices of the block."""
    per_module = {name: cosine_matrix(modules_at(adapters, name), device) for name in _union_modules(adapters)}
    return layer_means(per_module)


# ----------------------------------------------------------------------------------------------
# Everything, JSON-ready


def _json_value(value):
    """Floats as floats, NaN and ±inf as None (strict JSON has neither), tensors as nested lists."""
    if isinstance(value, torch.Tensor):
        return _json_value(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _layer_key(layer: int | None) -> str:
    return "other" if layer is None else str(layer)


def adapter_metrics(
    adapters: Iterable[Adapter],
    device: Device = "cpu",
    density: float = 1.0,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """All metrics but data-parameter interference (which needs input features), JSON-ready.

    Streams one module at a time: only that module's factors are on `device`, plus one dense update
    for the sign conflicts. ``density`` is the trim used before counting sign conflicts.
    ``progress(done, total, module_name)`` is called after each module (the project's progress
    convention, as in training and evaluation). Layout::

        adapters: [names]                         (index i of every list and matrix row)
        missing:  {module: [adapters lacking it]} (they count as zero updates there)
        adapter_cosine: n × n                     (whole task vectors)
        modules:  {module: {...}}                 in natural order
        layers:   {"0": {...}, ..., "other": {...}}  means over a block's modules

    Per module: layer, delta_norm[n], column_norm_variance[n], column_norm_cv[n],
    norm_variance_across (float), input_overlap / output_overlap (n × n),
    input_angles / output_angles (n × n lists of radians), cosine (n × n), sign_conflict_rate.
    Per layer: the same keys averaged over the block's modules, except the angles (their number
    varies with the ranks, so they have no mean), plus ``modules`` (how many were averaged).
    NaN or infinite values are written as null.
    """
    adapters = list(adapters)
    compatibility = check_compatible(adapters)
    names = compatibility.modules
    n = len(adapters)
    per_module: dict[str, dict] = {}
    numbers_of: dict[str, dict] = {}
    total_gram = torch.zeros(n, n, dtype=torch.float32, device=device)
    for done, name in enumerate(names, start=1):
        modules = modules_at(adapters, name)
        gram = gram_matrix(modules, device)
        total_gram += gram
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        # Absent modules are zero updates: column norms all 0, so variance 0 and cv 0.
        stats = [column_norm_stats(m, device) if m is not None else {"variance": 0.0, "cv": 0.0} for m in modules]
        numbers = {
            "delta_norm": norms.cpu(),
            "column_norm_variance": torch.tensor([s["variance"] for s in stats]),
            "column_norm_cv": torch.tensor([s["cv"] for s in stats]),
            "norm_variance_across": float(norms.var(unbiased=False)),
            "input_overlap": subspace_overlap_matrix(modules, "input", device),
            "output_overlap": subspace_overlap_matrix(modules, "output", device),
            "cosine": _cosine_from_gram(gram).cpu(),
            "sign_conflict_rate": sign_conflict_rate(modules, density=density, device=device),
        }
        numbers_of[name] = numbers
        per_module[name] = {
            "layer": layer_of(name),
            **numbers,
            "input_angles": principal_angle_matrix(modules, "input", device),
            "output_angles": principal_angle_matrix(modules, "output", device),
        }
        if progress is not None:
            progress(done, len(names), name)

    layers: dict[str, dict] = {}
    counts = layer_means({name: 1.0 for name in names})  # only its keys: the blocks, in order
    keys = list(next(iter(numbers_of.values()))) if numbers_of else []
    means = {key: layer_means({name: numbers_of[name][key] for name in names}) for key in keys}
    for layer in counts:
        layers[_layer_key(layer)] = {
            "modules": sum(1 for name in names if layer_of(name) == layer),
            **{key: means[key][layer] for key in keys},
        }

    return _json_value(
        {
            "adapters": [a.name for a in adapters],
            "device": str(device),
            "density": density,
            "missing": compatibility.missing,
            "adapter_cosine": _cosine_from_gram(total_gram).cpu(),
            "modules": per_module,
            "layers": layers,
        }
    )
