"""DO-Merging (Decouple and Orthogonalize), as two independent switches over any merge method.

No public code of the paper exists; this module is mergescope's reading of it:

decouple
    Split each update into column magnitudes mᵢ[j] = ‖ΔWᵢ[:, j]‖₂ (column j = input feature j) and
    unit-column directions Dᵢ = ΔWᵢ / mᵢ. Merge the directions with the chosen method, renormalise
    the merged columns to unit length, merge the magnitudes separately (λ-weighted mean Σλᵢmᵢ/n by
    default, or sum / max), and recombine ΔW = D·diag(m). The point: a large-magnitude update no longer
    drowns the direction of a small one.

orthogonalize
    Data-free, per module, before the directions are merged: find small perturbations δᵢ that
    minimise  Σ_{i<j} ⟨Dᵢ+δᵢ, Dⱼ+δⱼ⟩² / (‖Dᵢ+δᵢ‖²‖Dⱼ+δⱼ‖²) + μ Σᵢ ‖δᵢ‖²  with Adam, so the merged
    directions interfere less. The penalty is taken on directions scaled to unit Frobenius norm, so
    μ prices a *relative* change and one setting suits every module size (see `orthogonalize`).
    Without decouple the "directions" are the updates themselves, scaled back afterwards.

Diagnostics (`diagnostics`), in `merge`'s JSON (`do_merging`) and the merged folder's
mergescope.json (`do_merging`), only when orthogonalize ran:

    {"orthogonalize": {
        "loss": [..],             # per Adam step, the mean over modules of the minimised loss
        "cosine_before": 0.31,    # mean |cos| over every pair of adapters i < j and every module,
        "cosine_after": 0.02,     #   before and after the perturbation
        "relative_change": 0.04,  # mean over modules of ‖δ‖ / ‖D‖
        "modules": 72,
        "per_module": {name: {"loss_first", "loss_last", "cosine_before", "cosine_after",
                              "relative_change"}}}}   # (the CLI prints per_module with --per-module)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from merging.methods.registry import Param

MagnitudeRule = Literal["mean", "sum", "max"]
MAGNITUDE_RULES: tuple[str, ...] = ("mean", "sum", "max")
STEPS_MAX = 10_000

# The one declaration of DO-Merging's options: field, kind, range, default, label and help. The
# Recipe validates `do_merging` against it, the Merge page draws its controls from it, the run
# labels read its defaults; DoMergingOptions below takes its defaults from it.
SCHEMA: tuple[Param, ...] = (
    Param("decouple", "bool", False, label="Decouple magnitude and direction",
          help="Merge the unit-column directions with the method and the column magnitudes separately."),
    Param("orthogonalize", "bool", False, label="Orthogonalize directions",
          help="Before merging, perturb the directions (Adam) so that they interfere less."),
    Param("magnitude", "choice", "mean", choices=MAGNITUDE_RULES, label="Merge magnitudes by",
          help="How decouple merges the column magnitudes: λ-weighted mean, sum or max."),
    Param("steps", "int", 50, minimum=0, maximum=STEPS_MAX, label="Steps",
          help="Adam steps of orthogonalize (0 leaves the directions as they are)."),
    Param("lr", "float", 0.01, minimum=0.0, exclusive_minimum=True, label="lr",
          help="Adam's learning rate for orthogonalize."),
    Param("mu", "float", 1.0, minimum=0.0, label="μ",
          help="Price of changing the directions (relative to their norm) in orthogonalize's loss."),
)
FIELDS: dict[str, Param] = {p.name: p for p in SCHEMA}


@dataclass(frozen=True)
class DoMergingOptions:
    decouple: bool = FIELDS["decouple"].default
    orthogonalize: bool = FIELDS["orthogonalize"].default
    magnitude: MagnitudeRule = FIELDS["magnitude"].default
    steps: int = FIELDS["steps"].default
    lr: float = FIELDS["lr"].default
    mu: float = FIELDS["mu"].default

    @property
    def active(self) -> bool:
        return self.decouple or self.orthogonalize

    def to_dict(self) -> dict:
        """Every option, in the schema's order (what a recipe's `do_merging` holds)."""
        return {p.name: getattr(self, p.name) for p in SCHEMA}


@dataclass
class OrthogonalizeReport:
    """What orthogonalize did at one module: loss per step, pairwise cosines before and after."""

    loss: list[float] = field(default_factory=list)
    cosine_before: list[list[float]] = field(default_factory=list)
    cosine_after: list[list[float]] = field(default_factory=list)
    relative_change: float = 0.0  # ‖δ‖ / ‖D‖ over all adapters


def column_magnitudes(delta: torch.Tensor) -> torch.Tensor:
    """‖ΔW[:, j]‖₂ for every input feature j."""
    return torch.linalg.vector_norm(delta, dim=0)


def directions(delta: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """ΔW with unit columns; an all-zero column stays zero (it has no direction)."""
    safe = torch.where(magnitudes > 0, magnitudes, torch.ones_like(magnitudes))
    return delta / safe


def unit_columns(matrix: torch.Tensor) -> torch.Tensor:
    return directions(matrix, column_magnitudes(matrix))


def merge_magnitudes(
    magnitudes: Sequence[torch.Tensor], weights: Sequence[float], rule: MagnitudeRule = "mean"
) -> torch.Tensor:
    """Merge per-column magnitudes: λ-weighted mean Σλᵢmᵢ/n, λ-weighted sum Σλᵢmᵢ, or max of λᵢmᵢ.

    The mean divides by the number of adapters, not by Σλ, for the same reason TIES' disjoint mean
    does: a common λ must still scale the merge (λ = 0.5 for all halves the magnitudes).
    """
    stacked = torch.stack(list(magnitudes))
    w = torch.tensor([float(x) for x in weights], dtype=stacked.dtype, device=stacked.device)[:, None]
    if rule == "mean":
        return (stacked * w).sum(0) / len(weights)
    if rule == "sum":
        return (stacked * w).sum(0)
    if rule == "max":
        return (stacked * w).max(dim=0).values
    raise ValueError(f"unknown magnitude rule '{rule}' (allowed: {', '.join(MAGNITUDE_RULES)})")


def pairwise_cosines(matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """n × n cosines of the flattened matrices (0 where one of them is zero)."""
    flat = torch.stack([m.reshape(-1) for m in matrices])
    norms = torch.linalg.vector_norm(flat, dim=1)
    gram = flat @ flat.T
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / torch.where(denom > 0, denom, 1.0), torch.zeros_like(gram))


def _interference_loss(perturbed: torch.Tensor) -> torch.Tensor:
    """Σ_{i<j} cos²(Xᵢ, Xⱼ) over the rows of `perturbed` (one flattened direction per row)."""
    gram = perturbed @ perturbed.T
    sq_norms = torch.diagonal(gram).clamp(min=1e-12)
    cos_sq = gram**2 / (sq_norms[:, None] * sq_norms[None, :])
    return torch.triu(cos_sq, diagonal=1).sum()


def orthogonalize(
    directions_in: Sequence[torch.Tensor], steps: int = 50, lr: float = 0.01, mu: float = 1.0
) -> tuple[list[torch.Tensor], OrthogonalizeReport]:
    """Perturb the directions so their pairwise cosines fall, at a cost μ‖δ‖² for moving them.

    Scale-free by construction, so the same steps / lr / μ suit a 64 × 64 and a 4096 × 4096 module:
    each direction is divided by its Frobenius norm (the loss is a cosine, so this changes nothing
    there, and ‖δ‖ becomes a *relative* change), and Adam works on δ in units of a typical entry
    of a unit-norm matrix (1/√numel), so `lr` is a step relative to the entries' own size. The
    results are scaled back by each direction's norm. Runs `steps` Adam steps from δ = 0.
    """
    report = OrthogonalizeReport(cosine_before=pairwise_cosines(directions_in).tolist())
    if len(directions_in) < 2 or steps <= 0:
        report.cosine_after = report.cosine_before
        return list(directions_in), report
    shape = directions_in[0].shape
    flat = torch.stack([d.reshape(-1) for d in directions_in]).detach()
    norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True).clamp(min=1e-12)
    base = flat / norms
    entry_scale = base.shape[1] ** -0.5
    step = torch.zeros_like(base, requires_grad=True)  # δ / entry_scale
    optimizer = torch.optim.Adam([step], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            delta = step * entry_scale
            loss = _interference_loss(base + delta) + mu * (delta**2).sum()
            loss.backward()
            optimizer.step()
            report.loss.append(float(loss.detach()))
    delta = step.detach() * entry_scale
    outputs = list(((base + delta) * norms).reshape(len(directions_in), *shape).unbind(0))
    report.cosine_after = pairwise_cosines(outputs).tolist()
    report.relative_change = float(torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(base))
    return outputs, report


def mean_pair_cosine(cosines: Sequence[Sequence[float]]) -> float | None:
    """Mean |cos| over the pairs i < j of an n × n cosine matrix; None with fewer than two."""
    n = len(cosines)
    pairs = [abs(float(cosines[i][j])) for i in range(n) for j in range(i + 1, n)]
    return sum(pairs) / len(pairs) if pairs else None


def diagnostics(reports: dict[str, OrthogonalizeReport | None]) -> dict | None:
    """orthogonalize's loss curve and cosines before/after, over modules (see the module docstring);
    None when no module was orthogonalized."""
    ran = {name: r for name, r in reports.items() if r is not None}
    if not ran:
        return None
    per_module = {}
    for name, r in ran.items():
        per_module[name] = {
            "loss_first": r.loss[0] if r.loss else None,
            "loss_last": r.loss[-1] if r.loss else None,
            "cosine_before": mean_pair_cosine(r.cosine_before),
            "cosine_after": mean_pair_cosine(r.cosine_after),
            "relative_change": r.relative_change,
        }
    steps = max((len(r.loss) for r in ran.values()), default=0)
    curve = []
    for step in range(steps):
        values = [r.loss[step] for r in ran.values() if len(r.loss) > step]
        curve.append(sum(values) / len(values))

    def mean(key: str) -> float | None:
        values = [m[key] for m in per_module.values() if m[key] is not None]
        return sum(values) / len(values) if values else None

    return {
        "orthogonalize": {
            "loss": curve,
            "cosine_before": mean("cosine_before"),
            "cosine_after": mean("cosine_after"),
            "relative_change": mean("relative_change"),
            "modules": len(per_module),
            "per_module": per_module,
        }
    }
