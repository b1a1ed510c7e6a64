"""Recipe ──merge()──> MergedAdapter: streams the modules of real adapters through the methods.

Module by module, along the path the method has (merging/methods/registry.py), never by its name:
a method with an exact factored form (task arithmetic's concatenation, KnOTS, TSV-Merge) stays in
factored form end to end, truncated if asked by an SVD from the factors; a streamed method (the
sparsify × consensus family) rebuilds each update from its factors a block of rows at a time and
never holds the n dense updates; DO-Merging's switches need the dense form. A dense result is
factored with an SVD (exact at numerical rank, or truncated to `rank`). At any time only one
module's updates are in memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from merging.methods import Factored, Method, MethodArgs, MethodError, get_method, svd_of_dense, svd_of_factors
from merging.progress import Progress
from merging.recipe import Recipe


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


def method_parameters(recipe: Recipe) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
    """The recipe's method parameters, validated against the method's schema, and each adapter's own.

    The one place merge.py reads them: `recipe.parameters` and `adapters[i].parameters` (the Recipe
    maps the older flat fields — density, sign, knots_inner — onto them when it is read).
    """
    method = get_method(recipe.method)
    per_adapter = tuple(
        method.validate_per_adapter(ref.parameters, f"adapters[{index}].parameters")
        for index, ref in enumerate(recipe.adapters)
    )
    return method.validate(recipe.parameters), per_adapter


def merge_with_do(
    method: Method, deltas: list[torch.Tensor], weights: list[float], options: do.DoMergingOptions, args: MethodArgs
) -> tuple[torch.Tensor, do.OrthogonalizeReport | None]:
    """DO-Merging's switches around the method, on one module's dense updates."""
    if method.dense is None:
        raise AdapterError(method.dense_refusal or f"{method.name} cannot run on DO-Merging directions")
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
        merged_direction = do.unit_columns(method.dense(directions, weights, args))
        merged_magnitude = do.merge_magnitudes(magnitudes, weights, options.magnitude)
        return merged_direction * merged_magnitude, report
    rescaled = [d * n for d, n in zip(directions, norms)]
    return method.dense(rescaled, weights, args), report


def merge_module(
    modules: list[LoraModule | None],
    weights: list[float],
    recipe: Recipe,
    device: torch.device,
    generator: torch.Generator | None = None,
    parameters: tuple[dict[str, Any], tuple[dict[str, Any], ...]] | None = None,
) -> tuple[Factored, ModuleReport]:
    """Merge one module; `modules[i]` is None where adapter i lacks this module (it contributes 0).

    The path is what the method has: exact from the factors when it can, else streamed from the
    factors block by block, else dense; DO-Merging's switches need the dense form.
    `parameters` is method_parameters(recipe), computed once per merge by the caller.
    """
    method = get_method(recipe.method)
    values, per_adapter = parameters if parameters is not None else method_parameters(recipe)
    args = MethodArgs(values, per_adapter, generator, device)
    present = [i for i, m in enumerate(modules) if m is not None]
    present_modules = [modules[i] for i in present]
    present_weights = [weights[i] for i in present]
    reference = present_modules[0]
    orth_report = None
    if not recipe.do_merging.active and method.factored is not None:
        result = method.factored(present_modules, present_weights, args.select(present))
    else:
        if recipe.do_merging.active:
            zeros = torch.zeros(reference.shape, device=device, dtype=torch.float32)
            deltas = [m.delta(device) if m is not None else zeros for m in modules]
            merged, orth_report = merge_with_do(method, deltas, list(weights), recipe.do_merging, args)
            del deltas
        elif method.streamed is not None:
            # never holds the n dense updates: each is rebuilt from its factors, a block of rows at a time
            merged = method.streamed(modules, list(weights), args)
        else:
            zeros = torch.zeros(reference.shape, device=device, dtype=torch.float32)
            merged = method.dense([m.delta(device) if m is not None else zeros for m in modules], list(weights), args)
        factored = svd_of_dense(merged, recipe.rank)
        return factored, ModuleReport(factored.A.shape[0], factored.energy_kept, "dense", orth_report)
    if recipe.rank is not None:
        result = svd_of_factors(result.B, result.A, recipe.rank)
    return result, ModuleReport(result.A.shape[0], result.energy_kept, "factored", orth_report)


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
    try:
        parameters = method_parameters(recipe)
    except MethodError as err:
        raise AdapterError(f"recipe: {err}") from err
    total = len(compatibility.modules)
    for index, module_name in enumerate(compatibility.modules):
        if progress:
            progress(index, total, module_name)
        weights = recipe.weights_for(module_name)
        modules = [a.modules.get(module_name) for a in adapters]
        factored, report = merge_module(modules, weights, recipe, device, generator, parameters)
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
