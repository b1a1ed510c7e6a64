"""What a merge returns: the merged adapter with its per-module reports (rank, energy kept, path,
DO-Merging's diagnostics) and what was carried from the inputs' saved modules. Its own module so
that the merge (merging.engine.merge) and the PEFT output's rank bound (merging.engine.output_rank)
both read it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from merging.adapters.lora import Adapter, Compatibility
from merging.methods import do_merging as do
from merging.recipe.codec import Recipe


@dataclass(frozen=True)
class CarriedReport:
    rule: str  # average | first
    sources: list[str]  # the adapters whose copy went in
    weights: list[float]  # their share (sums to 1)



@dataclass
class ModuleReport:
    rank: int | None  # None: a dense update applied whole (a full-model export), never factored
    energy_kept: float
    path: str  # factored | dense | dense, applied whole: how the merge was computed
    orthogonalize: do.OrthogonalizeReport | None = None


@dataclass
class MergedAdapter:
    """The merged modules (scale 1), each source adapter's saved modules (heads), and a report."""

    adapter: Adapter
    heads: dict[str, dict[str, torch.Tensor]]
    reports: dict[str, ModuleReport]
    compatibility: Compatibility
    recipe: Recipe
    seconds: float = 0.0
    device: str = "cpu"
    source_meta: dict[str, dict] = field(default_factory=dict)
    carried: dict[str, CarriedReport] = field(default_factory=dict)  # non-head saved tensors, by rule
    carried_notes: list[str] = field(default_factory=list)
    input_ranks: dict[str, int] = field(default_factory=dict)  # per module: Σ of the inputs' LoRA ranks
    rank_bound: dict | None = None  # set once bounded for a PEFT output (merging.engine.output_rank)
    # The adapters merged, kept (a reference, no copy) so a full-model export can apply each
    # module's dense merged update exactly instead of the factors (merging.engine.export, dense_deltas).
    sources: list[Adapter] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        ranks = [r.rank for r in self.reports.values() if r.rank is not None]
        energies = [r.energy_kept for r in self.reports.values()]
        diagnostics = self.do_merging_diagnostics()
        return {
            "method": self.recipe.method,
            "adapters": [a.display_name for a in self.recipe.adapters],
            "weights": self.recipe.weights,
            "device": self.device,
            "seconds": round(self.seconds, 4),
            "num_modules": len(self.reports),
            "output_rank": {"min": min(ranks), "max": max(ranks)} if ranks else None,
            "energy_kept": {"min": min(energies), "mean": sum(energies) / len(energies)} if energies else None,
            "notes": self.compatibility.notes + self.carried_notes,
            "modules_to_save": {
                key: {"rule": r.rule, "from": r.sources, "shares": [round(w, 6) for w in r.weights]}
                for key, r in self.carried.items()
            },
            "modules": {
                name: {"rank": r.rank, "energy_kept": r.energy_kept, "path": r.path}
                for name, r in self.reports.items()
            },
            **({"do_merging": diagnostics} if diagnostics else {}),
            **({"rank_bound": self.rank_bound} if self.rank_bound is not None else {}),
        }

    def do_merging_diagnostics(self) -> dict | None:
        """DO-Merging's orthogonalize diagnostics over the modules (do_merging.diagnostics), or None."""
        return do.diagnostics({name: r.orthogonalize for name, r in self.reports.items()})
