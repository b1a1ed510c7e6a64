"""Recipe ──merge()──> MergedAdapter: streams the modules of real adapters through the methods.

Module by module, along the path the method has (merging/methods/registry.py), never by its name:
a method with an exact factored form (task arithmetic's concatenation, KnOTS, TSV-Merge) stays in
factored form end to end, truncated if asked by an SVD from the factors; a streamed method (the
sparsify × consensus family) rebuilds each update from its factors a block of rows at a time and
never holds the n dense updates; DO-Merging's switches need the dense form. A dense result is
factored with an SVD (exact at numerical rank, or truncated to `rank`) for a PEFT output; a
full-model export takes it dense, unfactored (`dense_deltas`). At any time only one
module's updates are in memory.

Whole tensors an adapter trained besides LoRA (PEFT's modules_to_save) are never dropped:
- a classification head (`classifier.*`, `score.*`) stays with its task: each adapter's head is kept
  in `MergedAdapter.heads` (and the merged folder's mergescope_heads.safetensors), since a merged
  body serves every task and task t is scored with task t's head;
- anything else (embed_tokens, lm_head, a norm) is *carried* into the merged adapter by the
  recipe's `modules_to_save` rule (`carry_saved_modules`): `average` = Σ λᵢ·Tᵢ / Σ λᵢ over the
  adapters that carry T (|λᵢ| when weights are negative: an average of whole tensors, not of
  updates), or `first` = the first listed adapter's copy. It is written into the merged PEFT folder
  as modules_to_save, and folded into a full-model export. A tied embedding stays one tensor
  (merging.engine.export.tie_carried).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from merging.adapters.lora import (
    HEADS_FILE,
    MAX_UPDATE_ENTRY,
    Adapter,
    AdapterError,
    LoraModule,
    check_compatible,
    layer_of,
    load_adapter,
    save_adapter,
    update_entry_bound,
)
from merging.core.progress import Progress
from merging.engine.output_rank import bounded
from merging.engine.result import CarriedReport, MergedAdapter, ModuleReport
from merging.methods import Factored, Method, MethodArgs, MethodError, get_method, svd_of_dense, svd_of_factors
from merging.methods import do_merging as do
from merging.methods.blocks import cpu_merge_threads, threads_for, usable_cores
from merging.models.devices import resolve_device
from merging.recipe.codec import Recipe

# ----------------------------------------------------------------------------------------------
# One module


def method_parameters(recipe: Recipe) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
    """The recipe's method parameters and each adapter's own.

    The one place merge.py reads them: `recipe.parameters` and `adapters[i].parameters`, checked
    against the method's schema when the Recipe was made (it maps the older flat fields — density,
    sign, knots_inner — onto them when it is read).
    """
    return dict(recipe.parameters), tuple(dict(ref.parameters) for ref in recipe.adapters)


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


def _dense_merge(
    method: Method, modules: list[LoraModule | None], weights: list[float], recipe: Recipe, device: torch.device,
    args: MethodArgs,
) -> tuple[torch.Tensor, do.OrthogonalizeReport | None]:
    """One module's merged update as a dense matrix, by the method's streamed or dense form (or
    DO-Merging's switches around it)."""
    reference = next(m for m in modules if m is not None)
    if recipe.do_merging.active:
        zeros = torch.zeros(reference.shape, device=device, dtype=torch.float32)
        deltas = [m.delta(device) if m is not None else zeros for m in modules]
        merged, report = merge_with_do(method, deltas, list(weights), recipe.do_merging, args)
        del deltas
        return merged, report
    if method.streamed is not None:
        # never holds the n dense updates: each is rebuilt from its factors, a block of rows at a time
        return method.streamed(modules, list(weights), args), None
    zeros = torch.zeros(reference.shape, device=device, dtype=torch.float32)
    return method.dense([m.delta(device) if m is not None else zeros for m in modules], list(weights), args), None


def _factored_merge(method: Method, modules: list[LoraModule | None], weights: list[float], args: MethodArgs) -> Factored:
    """The method's exact factored form over the adapters that have this module."""
    present = [i for i, m in enumerate(modules) if m is not None]
    return method.factored([modules[i] for i in present], [weights[i] for i in present], args.select(present))


def merge_module(
    modules: list[LoraModule | None],
    weights: list[float],
    recipe: Recipe,
    device: torch.device,
    generator: torch.Generator | None = None,
    parameters: tuple[dict[str, Any], tuple[dict[str, Any], ...]] | None = None,
    rank_bound: int | None = None,
) -> tuple[Factored, ModuleReport]:
    """Merge one module; `modules[i]` is None where adapter i lacks this module (it contributes 0).

    The path is what the method has: exact from the factors when it can, else streamed from the
    factors block by block, else dense; DO-Merging's switches need the dense form.
    `parameters` is method_parameters(recipe), computed once per merge by the caller.
    `rank_bound`: without a recipe rank, the most rank the result may keep (a PEFT output's bound,
    merging.engine.output_rank): a dense result gets a truncated SVD, factors above it are cut from the factors.
    """
    return merge_module_steps(modules, weights, recipe, device, generator, parameters, rank_bound)()


def merge_module_steps(
    modules: list[LoraModule | None],
    weights: list[float],
    recipe: Recipe,
    device: torch.device,
    generator: torch.Generator | None = None,
    parameters: tuple[dict[str, Any], tuple[dict[str, Any], ...]] | None = None,
    rank_bound: int | None = None,
    own_threads: bool = True,
) -> Callable[[], tuple[Factored, ModuleReport]]:
    """merge_module in two steps: the merge itself now (it draws from `generator`, so modules must
    come in order), and its factorisation as the returned callable, which draws nothing and may run
    on another thread beside the next module's merge. `own_threads=False`: a dense result's SVD keeps
    the one thread it is given instead of taking the caller's (merge_adapters' pipeline)."""
    method = get_method(recipe.method)
    values, per_adapter = parameters if parameters is not None else method_parameters(recipe)
    args = MethodArgs(values, per_adapter, generator, device)
    if recipe.do_merging.active or method.factored is None:
        merged, orth_report = _dense_merge(method, modules, weights, recipe, device, args)
        rank = recipe.rank if recipe.rank is not None else rank_bound

        def factor_dense() -> tuple[Factored, ModuleReport]:
            with threads_for(merged.numel()) if own_threads else contextlib.nullcontext():
                factored = svd_of_dense(merged, rank)
            return factored, ModuleReport(factored.A.shape[0], factored.energy_kept, "dense", orth_report)

        return factor_dense
    result = _factored_merge(method, modules, weights, args)

    def factor_factors() -> tuple[Factored, ModuleReport]:
        cut = result
        if recipe.rank is not None:
            cut = svd_of_factors(result.B, result.A, recipe.rank)
        elif rank_bound is not None and result.A.shape[0] > rank_bound:
            cut = svd_of_factors(result.B, result.A, rank_bound)
        return cut, ModuleReport(cut.A.shape[0], cut.energy_kept, "factored", None)

    return factor_factors


def merge_module_dense(
    modules: list[LoraModule | None],
    weights: list[float],
    recipe: Recipe,
    device: torch.device,
    generator: torch.Generator | None = None,
    parameters: tuple[dict[str, Any], tuple[dict[str, Any], ...]] | None = None,
) -> tuple[torch.Tensor, ModuleReport]:
    """One module's merged update ΔW as a dense float32 matrix, never factored (what a full model needs).

    The same computation as `merge_module` (same generator draws, so DARE's masks agree) without its
    last step: no SVD of a dense result, and a factored result (task arithmetic) is multiplied out.
    A recipe that asks for an output `rank` gets the truncated update, as its PEFT output would.
    """
    if recipe.rank is not None:
        factored, report = merge_module(modules, weights, recipe, device, generator, parameters)
        return factored.B @ factored.A, report
    method = get_method(recipe.method)
    values, per_adapter = parameters if parameters is not None else method_parameters(recipe)
    args = MethodArgs(values, per_adapter, generator, device)
    if not recipe.do_merging.active and method.factored is not None:
        result = _factored_merge(method, modules, weights, args)
        return result.B @ result.A, ModuleReport(None, 1.0, "factored, applied whole")
    merged, orth_report = _dense_merge(method, modules, weights, recipe, device, args)
    return merged, ModuleReport(None, 1.0, "dense, applied whole", orth_report)


# ----------------------------------------------------------------------------------------------
# A whole merge


def check_finite_output(module_name: str, factored: Factored) -> None:
    """Refuse a merge whose output holds NaN or Inf, or whose B·A would (huge weights or scales).

    The bound is the loader's (merging.adapters.lora.update_entry_bound), so nothing is written that
    load_adapter would refuse to read back.
    """
    finite = all(bool(torch.isfinite(t).all()) for t in (factored.A, factored.B))
    if not finite or update_entry_bound(factored.A, factored.B, 1.0) > MAX_UPDATE_ENTRY:
        raise AdapterError(
            f"the merge of module {module_name} is not finite (NaN, Inf or beyond float32's range); "
            "check the adapters' scales (lora_alpha) and the recipe's weights"
        )


HEAD_PREFIXES = ("classifier", "score")


def is_head_tensor(key: str) -> bool:
    """A classification head's tensor (kept per task, never merged): `classifier.*`, `score.*`."""
    return key.split(".", 1)[0] in HEAD_PREFIXES


def carry_saved_modules(
    adapters: Sequence[Adapter], recipe: Recipe
) -> tuple[dict[str, torch.Tensor], dict[str, CarriedReport], list[str]]:
    """The merged copy of each non-head saved tensor by the recipe's `modules_to_save` rule.

    Returns (tensors, a report per tensor, notes). Shapes must agree across adapters (else an
    AdapterError names the tensor); the result keeps the first copy's dtype, computed in float32.
    """
    rule = recipe.modules_to_save
    keys = list(dict.fromkeys(k for a in adapters for k in a.saved_modules if not is_head_tensor(k)))
    tensors: dict[str, torch.Tensor] = {}
    reports: dict[str, CarriedReport] = {}
    notes: list[str] = []
    for key in keys:
        weights = recipe.weights_for(key.rsplit(".", 1)[0])
        holders = [(i, a) for i, a in enumerate(adapters) if key in a.saved_modules]
        first = holders[0][1].saved_modules[key]
        for _, adapter in holders[1:]:
            if tuple(adapter.saved_modules[key].shape) != tuple(first.shape):
                raise AdapterError(
                    f"saved tensor {key} has shape {tuple(first.shape)} in {holders[0][1].name} but "
                    f"{tuple(adapter.saved_modules[key].shape)} in {adapter.name}: adapters of different base models?"
                )
        if rule == "first" or len(holders) == 1:
            shares = [1.0] + [0.0] * (len(holders) - 1)
        else:
            raw = [abs(float(weights[i])) for i, _ in holders]
            total = sum(raw)
            if total == 0:
                shares = [1.0 / len(holders)] * len(holders)
                notes.append(f"{key}: every weight is 0, so its copies are averaged equally")
            else:
                shares = [w / total for w in raw]
        merged = sum(
            share * a.saved_modules[key].to(torch.float32) for share, (_, a) in zip(shares, holders) if share
        )
        tensors[key] = merged.to(first.dtype).contiguous()
        used = [(a.name, share) for share, (_, a) in zip(shares, holders) if share]
        reports[key] = CarriedReport(rule, [n for n, _ in used], [w for _, w in used])
        lacking = [a.name for a in adapters if key not in a.saved_modules]
        if lacking and rule == "average":
            notes.append(f"{key}: {', '.join(lacking)} carry no copy; averaged over the others")
    return tensors, reports, notes


def check_overrides_apply(recipe: Recipe, module_names: Sequence[str]) -> None:
    """Refuse a per-module weight override that applies to none of the modules merged (a layer the
    model does not have, a regex that matches nothing): ignored silently, it would merge with the
    adapters' own weights while the recipe says otherwise."""
    for index, override in enumerate(recipe.overrides):
        if any(override.applies_to(name) for name in module_names):
            continue
        layers = sorted({layer for layer in map(layer_of, module_names) if layer is not None})
        have = f"blocks {layers[0]}–{layers[-1]}" if layers else "no numbered blocks"
        given = f"layers {list(override.layers)}" if override.layers is not None else ""
        if override.match is not None:
            given = f"{given} and match {override.match!r}" if given else f"match {override.match!r}"
        raise AdapterError(
            f"recipe: field 'overrides[{index}]': {given} applies to none of the {len(module_names)} modules "
            f"merged (they have {have})"
        )


def merge_adapters(
    adapters: Sequence[Adapter],
    recipe: Recipe,
    progress: Progress | None = None,
    bound_rank: bool = False,
    factor: bool = True,
) -> MergedAdapter:
    """Merge loaded adapters with a recipe (its adapter list gives the order and the weights).

    `bound_rank`: merge for a PEFT output, each module's rank bounded by the recipe's rank or else
    the sum of the inputs' ranks (merging.engine.output_rank); the result is already `bounded`.
    `factor=False` merges no module yet: the result carries its sources, the carried tensors and the
    heads, and a full-model export computes each module's dense update as it writes it
    (`dense_deltas`), with no factorisation (what `merge --full-model` does).
    """
    if len(adapters) != len(recipe.adapters):
        raise AdapterError(f"recipe lists {len(recipe.adapters)} adapters but {len(adapters)} were given")
    compatibility = check_compatible(adapters)
    check_overrides_apply(recipe, compatibility.modules)
    device = resolve_device(recipe.device)
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.seed)
    start = time.perf_counter()
    merged_modules: dict[str, LoraModule] = {}
    reports: dict[str, ModuleReport] = {}
    input_ranks: dict[str, int] = {}
    try:
        parameters = method_parameters(recipe)
    except MethodError as err:
        raise AdapterError(f"recipe: {err}") from err
    total = len(compatibility.modules) if factor else 0
    # On a CPU with cores to spare, a module's SVD runs on a thread of its own while the next module
    # is merged on the caller's, each with one torch thread: the two run side by side at ~1.9× a
    # core, where the row-block workers and a two-thread SVD reached ~1.7× (8 × d = 4096, 2 cores).
    pipelined = device.type == "cpu" and usable_cores() > 1 and total > 1

    def keep(module_name: str, done: tuple[Factored, ModuleReport]) -> None:
        factored, report = done
        check_finite_output(module_name, factored)
        merged_modules[module_name] = LoraModule(
            factored.A.detach().to("cpu").contiguous(), factored.B.detach().to("cpu").contiguous(), 1.0
        )
        reports[module_name] = report

    with cpu_merge_threads(device, workers=1 if pipelined else None), (  # methods/blocks.py
        # a new thread starts at the process's default torch threads, not the caller's one
        ThreadPoolExecutor(1, thread_name_prefix="merge-factor", initializer=torch.set_num_threads, initargs=(1,))
        if pipelined else contextlib.nullcontext()
    ) as factoring:
        waiting: tuple[str, Future] | None = None  # the module whose factorisation is running
        for index, module_name in enumerate(compatibility.modules[:total]):
            if progress:
                progress(index, total, module_name)
            weights = recipe.weights_for(module_name)
            modules = [a.modules.get(module_name) for a in adapters]
            input_ranks[module_name] = sum(m.rank for m in modules if m is not None)
            bound = input_ranks[module_name] if bound_rank and recipe.rank is None else None
            factor_step = merge_module_steps(modules, weights, recipe, device, generator, parameters, bound,
                                             own_threads=not pipelined)  # fmt: skip
            if not pipelined:
                keep(module_name, factor_step())
                continue
            if waiting is not None:  # at most one factorisation behind: two dense results held at once
                keep(waiting[0], waiting[1].result())
            waiting = (module_name, factoring.submit(factor_step))
        if waiting is not None:
            keep(waiting[0], waiting[1].result())
    if progress:
        progress(total, total, "done")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    carried, carried_reports, carried_notes = carry_saved_modules(adapters, recipe)
    merged = Adapter(
        name="merged",
        modules=merged_modules,
        saved_modules=carried,
        # as the recipe gives it (merging.models.base_check); only without one, the adapters' own
        base_model=recipe.base_model or next((a.base_model for a in adapters if a.base_model), None),
        config=dict(adapters[0].config),
        meta={"merged_from": [a.name for a in adapters], "recipe": recipe.to_dict()},
    )
    result = MergedAdapter(
        adapter=merged,
        heads={
            a.name: {k: t for k, t in a.saved_modules.items() if is_head_tensor(k)}
            for a in adapters
            if any(is_head_tensor(k) for k in a.saved_modules)
        },
        carried=carried_reports,
        carried_notes=carried_notes,
        reports=reports,
        compatibility=compatibility,
        recipe=recipe,
        seconds=seconds,
        device=str(device),
        source_meta={a.name: dict(a.meta) for a in adapters},
        input_ranks=input_ranks,
        sources=list(adapters),
    )
    return bounded(result) if bound_rank else result


def dense_deltas(merged: MergedAdapter, progress: Progress | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Each module's merged update ΔW, dense and never factored, in the merge's module order, with
    the generator seeded as `merge_adapters` seeds it (so DARE draws the same masks). One module's
    updates at a time; its ModuleReport goes into `merged.reports` and its time into `merged.seconds`."""
    if not merged.sources:
        raise AdapterError("this merged adapter does not carry its source adapters; merge again to export it exactly")
    recipe = merged.recipe
    device = resolve_device(recipe.device)
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.seed)
    try:
        parameters = method_parameters(recipe)
    except MethodError as err:
        raise AdapterError(f"recipe: {err}") from err
    total = len(merged.compatibility.modules)
    for index, module_name in enumerate(merged.compatibility.modules):
        if progress:
            progress(index, total, module_name)
        start = time.perf_counter()
        modules = [a.modules.get(module_name) for a in merged.sources]
        with cpu_merge_threads(device):
            delta, report = merge_module_dense(modules, recipe.weights_for(module_name), recipe, device, generator,
                                               parameters)
        delta = delta.detach().to("cpu", torch.float32)
        merged.reports[module_name] = report
        merged.seconds += time.perf_counter() - start
        yield module_name, delta
        del delta
    if progress:
        progress(total, total, "done")


def load_recipe_adapters(recipe: Recipe) -> list[Adapter]:
    return [load_adapter(ref.path, name=ref.display_name) for ref in recipe.adapters]


def run_recipe(recipe: Recipe, progress: Progress | None = None) -> MergedAdapter:
    return merge_adapters(load_recipe_adapters(recipe), recipe, progress)


def factor_dtype(name: str) -> torch.dtype:
    """The dtype the merged factors are written in: the recipe's dtype when it names a half type,
    else float32 (`auto` too: factors are small, and float32 loses nothing)."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def save_merged(merged: MergedAdapter, folder: str | Path, overwrite: bool = False, bound: bool = True) -> Path:
    """Write the merged adapter as a PEFT folder; the source adapters' heads go to a side file.

    The adapter is right-sized first (merging.engine.output_rank.bounded: each module's rank at most the
    recipe's rank, else the sum of the inputs' ranks; the energy kept goes to mergescope.json's
    `rank_bound`), unless `bound` is False (the CLI's --exact-rank: the merge as it is).
    Its modules_to_save are the carried tensors (embed_tokens, lm_head: merged by the recipe's
    rule), never a classification head: a merged body serves every task, and each task is scored
    with its own head, which lives in mergescope_heads.safetensors under ``<adapter name>/<tensor
    name>``. Factors are written in `factor_dtype(recipe.dtype)`.
    """
    extra = {}
    if merged.heads:
        flat = {f"{name}/{key}": t.contiguous() for name, heads in merged.heads.items() for key, t in heads.items()}
        extra[HEADS_FILE] = safetensors_bytes(flat)
    if bound:
        merged = bounded(merged)
    template = {k: v for k, v in merged.adapter.config.items() if k not in ("modules_to_save",)}
    adapter = merged.adapter
    if merged.rank_bound is not None:
        adapter = replace(adapter, meta={**adapter.meta, "rank_bound": merged.rank_bound})
    diagnostics = merged.do_merging_diagnostics()
    if diagnostics:
        adapter = replace(adapter, meta={**adapter.meta, "do_merging": diagnostics})
    return save_adapter(
        adapter, folder, template_config=template, extra_files=extra, overwrite=overwrite,
        dtype=factor_dtype(merged.recipe.dtype),
    )
