"""Recipe ──merge()──> MergedAdapter: streams the modules of real adapters through the methods.

Module by module: at any time only one module's updates (for all adapters) are dense in memory.
Linear merges without sparsification stay in factored form end to end (exact concatenation, or a
truncated SVD from the factors); everything else builds the dense updates of one module, merges
them, and factors the result with an SVD (exact at numerical rank, or truncated to `rank`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import save as safetensors_bytes

from merging import do_merging as do
from merging.lora import (
    HEADS_FILE,
    MAX_UPDATE_ENTRY,
    Adapter,
    AdapterError,
    Compatibility,
    LoraModule,
    check_compatible,
    load_adapter,
    save_adapter,
    update_entry_bound,
)
from merging.methods import (
    Factored,
    MethodSpec,
    combine,
    combine_factors,
    concatenate,
    get_method,
    knots,
    numerical_rank,
    peft_naive,
    svd_of_dense,
    svd_of_factors,
)
from merging.recipe import Recipe

Progress = Callable[[int, int, str], None]  # (done, total, what) -> None


def resolve_device(choice: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise AdapterError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(choice)


@dataclass
class ModuleReport:
    rank: int
    energy_kept: float
    path: str  # factored | dense: how the merge was computed
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

    def summary(self) -> dict:
        ranks = [r.rank for r in self.reports.values()]
        energies = [r.energy_kept for r in self.reports.values()]
        return {
            "method": self.recipe.method,
            "adapters": [a.display_name for a in self.recipe.adapters],
            "weights": self.recipe.weights,
            "device": self.device,
            "seconds": round(self.seconds, 4),
            "num_modules": len(self.reports),
            "output_rank": {"min": min(ranks), "max": max(ranks)} if ranks else None,
            "energy_kept": {"min": min(energies), "mean": sum(energies) / len(energies)} if energies else None,
            "notes": self.compatibility.notes,
            "modules": {
                name: {"rank": r.rank, "energy_kept": r.energy_kept, "path": r.path}
                for name, r in self.reports.items()
            },
        }


# ----------------------------------------------------------------------------------------------
# One module


def knots_dense(
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    inner: MethodSpec,
    density: float,
    sign_rule: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """KnOTS on dense updates (used when DO-Merging has turned the updates into directions).

    U is cut to the numerical rank of the concatenation, as in the factored path: TIES' density
    counts entries of the ΣVᵀ blocks, so null rows would change how many are kept.
    """
    concatenated = torch.cat(list(deltas), dim=1)
    U, S, _ = torch.linalg.svd(concatenated, full_matrices=False)
    U = U[:, : numerical_rank(S, tuple(concatenated.shape))]
    blocks = [U.T @ delta for delta in deltas]
    return U @ combine(blocks, weights, inner, density, sign_rule, generator)


def _merge_dense(deltas: list[torch.Tensor], weights: list[float], recipe: Recipe, generator) -> torch.Tensor:
    spec = get_method(recipe.method)
    if spec.name == "knots":
        return knots_dense(deltas, weights, get_method(recipe.knots_inner), recipe.density, recipe.sign, generator)
    if spec.name == "peft_naive":
        raise AdapterError("peft_naive combines A and B separately; it cannot run on DO-Merging directions")
    return combine(deltas, weights, spec, recipe.density, recipe.sign, generator)


def merge_with_do(
    deltas: list[torch.Tensor], weights: list[float], recipe: Recipe, generator
) -> tuple[torch.Tensor, do.OrthogonalizeReport | None]:
    """DO-Merging's switches around the recipe's method, on one module's dense updates."""
    options = recipe.do_merging
    if options.decouple:
        magnitudes = [do.column_magnitudes(d) for d in deltas]
        directions = [do.directions(d, m) for d, m in zip(deltas, magnitudes)]
    else:
        norms = [float(torch.linalg.matrix_norm(d)) for d in deltas]
        directions = [d / n if n > 0 else d for d, n in zip(deltas, norms)]
    report = None
    if options.orthogonalize:
        nonzero = [i for i, d in enumerate(deltas) if bool(d.any())]
        moved, report = do.orthogonalize([directions[i] for i in nonzero], options.steps, options.lr, options.mu)
        for i, direction in zip(nonzero, moved):
            directions[i] = direction
    if options.decouple:
        directions = [do.unit_columns(d) for d in directions]
        merged_direction = do.unit_columns(_merge_dense(directions, weights, recipe, generator))
        merged_magnitude = do.merge_magnitudes(magnitudes, weights, options.magnitude)
        return merged_direction * merged_magnitude, report
    rescaled = [d * n for d, n in zip(directions, norms)]
    return _merge_dense(rescaled, weights, recipe, generator), report


def merge_module(
    modules: list[LoraModule | None],
    weights: list[float],
    recipe: Recipe,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Factored, ModuleReport]:
    """Merge one module; `modules[i]` is None where adapter i lacks this module (it contributes 0)."""
    spec = get_method(recipe.method)
    present = [(m, w) for m, w in zip(modules, weights) if m is not None]
    present_modules = [m for m, _ in present]
    present_weights = [w for _, w in present]
    orth_report = None
    if not recipe.do_merging.active and spec.name == "peft_naive":
        result, path = peft_naive(present_modules, present_weights, device), "factored"
    elif not recipe.do_merging.active and spec.name == "knots":
        inner = get_method(recipe.knots_inner)
        result = knots(present_modules, present_weights, inner, recipe.density, recipe.sign, device, generator)
        path = "factored"
    elif not recipe.do_merging.active and spec.sparsify == "none" and not spec.consensus:
        result, path = concatenate(present_modules, present_weights, device), "factored"
    else:
        if recipe.do_merging.active:
            reference = present_modules[0]
            zeros = torch.zeros(reference.shape, device=device, dtype=torch.float32)
            deltas = [m.delta(device) if m is not None else zeros for m in modules]
            merged, orth_report = merge_with_do(deltas, list(weights), recipe, generator)
            del deltas
        else:
            # never holds the n dense updates: each is rebuilt from its factors, a block of rows at a time
            merged = combine_factors(modules, list(weights), spec, recipe.density, recipe.sign, generator, device)
        factored = svd_of_dense(merged, recipe.rank)
        return factored, ModuleReport(factored.A.shape[0], factored.energy_kept, "dense", orth_report)
    if recipe.rank is not None:
        result = svd_of_factors(result.B, result.A, recipe.rank)
    return result, ModuleReport(result.A.shape[0], result.energy_kept, path, orth_report)


# ----------------------------------------------------------------------------------------------
# A whole merge


def check_finite_output(module_name: str, factored: Factored) -> None:
    """Refuse a merge whose output holds NaN or Inf, or whose B·A would (huge weights or scales).

    The bound is the loader's (merging.lora.update_entry_bound), so nothing is written that
    load_adapter would refuse to read back.
    """
    finite = all(bool(torch.isfinite(t).all()) for t in (factored.A, factored.B))
    if not finite or update_entry_bound(factored.A, factored.B, 1.0) > MAX_UPDATE_ENTRY:
        raise AdapterError(
            f"the merge of module {module_name} is not finite (NaN, Inf or beyond float32's range); "
            "check the adapters' scales (lora_alpha) and the recipe's weights"
        )


def merge_adapters(
    adapters: Sequence[Adapter],
    recipe: Recipe,
    progress: Progress | None = None,
) -> MergedAdapter:
    """Merge loaded adapters with a recipe (its adapter list gives the order and the weights)."""
    if len(adapters) != len(recipe.adapters):
        raise AdapterError(f"recipe lists {len(recipe.adapters)} adapters but {len(adapters)} were given")
    compatibility = check_compatible(adapters)
    device = resolve_device(recipe.device)
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.seed)
    start = time.perf_counter()
    merged_modules: dict[str, LoraModule] = {}
    reports: dict[str, ModuleReport] = {}
    total = len(compatibility.modules)
    for index, module_name in enumerate(compatibility.modules):
        if progress:
            progress(index, total, module_name)
        weights = recipe.weights_for(module_name)
        modules = [a.modules.get(module_name) for a in adapters]
        factored, report = merge_module(modules, weights, recipe, device, generator)
        check_finite_output(module_name, factored)
        merged_modules[module_name] = LoraModule(
            factored.A.detach().to("cpu").contiguous(), factored.B.detach().to("cpu").contiguous(), 1.0
        )
        reports[module_name] = report
    if progress:
        progress(total, total, "done")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    merged = Adapter(
        name="merged",
        modules=merged_modules,
        base_model=next((a.base_model for a in adapters if a.base_model), None),
        config=dict(adapters[0].config),
        meta={"merged_from": [a.name for a in adapters], "recipe": recipe.to_dict()},
    )
    return MergedAdapter(
        adapter=merged,
        heads={a.name: dict(a.saved_modules) for a in adapters if a.saved_modules},
        reports=reports,
        compatibility=compatibility,
        recipe=recipe,
        seconds=seconds,
        device=str(device),
        source_meta={a.name: dict(a.meta) for a in adapters},
    )


def load_recipe_adapters(recipe: Recipe) -> list[Adapter]:
    return [load_adapter(ref.path, name=ref.display_name) for ref in recipe.adapters]


def run_recipe(recipe: Recipe, progress: Progress | None = None) -> MergedAdapter:
    return merge_adapters(load_recipe_adapters(recipe), recipe, progress)


def save_merged(merged: MergedAdapter, folder: str | Path, overwrite: bool = False) -> Path:
    """Write the merged adapter as a PEFT folder; the source adapters' heads go to a side file.

    The adapter_config.json has no modules_to_save: a merged body serves every task, and each task
    is scored with its own head, which lives in mergescope_heads.safetensors under
    ``<adapter name>/<tensor name>``.
    """
    extra = {}
    if merged.heads:
        flat = {f"{name}/{key}": t.contiguous() for name, heads in merged.heads.items() for key, t in heads.items()}
        extra[HEADS_FILE] = safetensors_bytes(flat)
    template = {k: v for k, v in merged.adapter.config.items() if k not in ("modules_to_save",)}
    return save_adapter(merged.adapter, folder, template_config=template, extra_files=extra, overwrite=overwrite)
