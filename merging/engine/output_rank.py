"""Right-sized PEFT outputs: a merged adapter written as PEFT never grows past what the user asked for.

A merge's exact result can be full rank (TIES, DARE, DO-Merging, … are dense): written as LoRA
factors at numerical rank it can outweigh the base model. So a PEFT-adapter output is bounded, per
module, by

    the recipe's `rank` when it gives one, else
    the sum of the inputs' LoRA ranks at that module (exact for task arithmetic, whose result is
    the concatenation of the inputs' factors, of exactly that rank),

and the fraction of the energy kept, Σ kept σ² / Σ σ² of the merged ΔW, is reported per module
(`ModuleReport.energy_kept`, the summary's `modules`) and over the adapter (`rank_bound`). When a
module keeps less than ENERGY_THRESHOLD (99 %), the summary's `rank_bound.warning` says so and
points at a higher `rank` or a `--full-model` export (the base with the exact dense update folded
in). The CLI prints that warning on stderr, the Merge page beside its PEFT download.

How the cut is computed: where the merge is still low-rank factors (task arithmetic, KnOTS,
TSV-Merge), from the factors (QR of B and of Aᵀ and the SVD of the small core: svd_of_factors);
for a dense result the CLI passes the bound into the merge (`merge_adapters(..., bound_rank=True)`),
so the dense ΔW gets a truncated SVD (svd_of_dense) instead of a full one. A result merged without
the bound (the dashboard scores the exact merge) is cut when written (`bounded`), from its factors.
Scoring is never affected: only the written adapter is right-sized.
"""

from __future__ import annotations

from dataclasses import replace

from merging.adapters.lora import LoraModule
from merging.engine.result import MergedAdapter
from merging.methods import svd_of_factors

ENERGY_THRESHOLD = 0.99


def module_bound(merged: MergedAdapter, name: str) -> int | None:
    """The most rank module `name` may have in a PEFT output (None: no bound known)."""
    if merged.recipe.rank is not None:
        return merged.recipe.rank
    return merged.input_ranks.get(name)


def bound_rule(merged: MergedAdapter) -> str:
    return "the recipe's rank" if merged.recipe.rank is not None else "the sum of the inputs' ranks"


def bounded(merged: MergedAdapter, threshold: float = ENERGY_THRESHOLD) -> MergedAdapter:
    """The merged adapter as a PEFT output writes it: each module cut to its bound (module_bound),
    its report's rank and energy updated, and `rank_bound` filled in (see `rank_bound_summary`).
    Already bounded: returned as it is."""
    if merged.rank_bound is not None:
        return merged
    modules = dict(merged.adapter.modules)
    reports = dict(merged.reports)
    for name, module in merged.adapter.modules.items():
        bound = module_bound(merged, name)
        if bound is None or module.rank <= bound:
            continue
        cut = svd_of_factors(module.B.to(module.A.dtype) * module.scale, module.A, bound)
        modules[name] = LoraModule(cut.A.contiguous(), cut.B.contiguous(), 1.0)
        report = reports[name]
        reports[name] = replace(report, rank=cut.A.shape[0], energy_kept=report.energy_kept * cut.energy_kept)
    result = replace(merged, adapter=replace(merged.adapter, modules=modules), reports=reports)
    result.rank_bound = rank_bound_summary(result, threshold)
    return result


def rank_bound_summary(merged: MergedAdapter, threshold: float = ENERGY_THRESHOLD) -> dict:
    """{"rule", "threshold", "rank": {min, max}, "energy_kept": {min, mean}, "below_threshold":
    [modules], "warning": text or None} of a bounded merge."""
    energies = {name: r.energy_kept for name, r in merged.reports.items()}
    ranks = [r.rank for r in merged.reports.values()]
    below = sorted(name for name, e in energies.items() if e < threshold)
    warning = None
    if below:
        worst = min(energies.values())
        warning = (
            f"the PEFT adapter keeps less than {threshold:.0%} of the merged update's energy in {len(below)} of "
            f"{len(energies)} modules (lowest {worst:.1%}, rank bounded by {bound_rule(merged)}): give the recipe a "
            "higher 'rank', or export the exact merge with --full-model"
        )
    return {
        "rule": bound_rule(merged),
        "threshold": threshold,
        "rank": {"min": min(ranks), "max": max(ranks)} if ranks else None,
        "energy_kept": {"min": min(energies.values()), "mean": sum(energies.values()) / len(energies)}
        if energies else None,
        "below_threshold": below,
        "warning": warning,
    }
