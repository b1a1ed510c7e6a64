"""`python -m merging …`: the library from the command line.

Every command prints JSON on stdout (`evaluate` a readable table unless `--json`). Bad input of any kind exits with status 2 and one line on
stderr; a merge writes its output folder atomically, so a failure never leaves a folder that looks
valid. Installed (`pip install .`), the same commands are `mergescope …`; `mergescope dashboard`
starts the Streamlit app with the project's settings from any working folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from merging.adapters.lora import load_adapter
from merging.core.staging import check_not_an_input, check_replaceable
from merging.recipe.mergekit_config import load_recipe_file as load_recipe  # native recipes and mergekit YAML

# merging.training.trainer.INITS and merging.training.zoo.KINDS, spelled out so that `--help` does not import torch's
# training stack (tests/test_zoo_regime.py checks they agree)
TRAIN_INITS = ("standard", "gaussian", "standard-scaled", "osrm", "osrm-samples", "osrm-cov", "osrm-random")
ZOO_KINDS = ("standard", "gaussian", "standard-scaled", "osrm", "osrm-samples", "osrm-cov", "osrm-frozen",
             "osrm-random", "shared-seed")  # fmt: skip

EXIT_BAD_INPUT = 2
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # merging.recipe.codec.DTYPES


class _Bar:
    """Adapts the library's progress callback (done, total, what) to a tqdm bar on stderr."""

    def __init__(self, description: str):
        self.description = description
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, file=sys.stderr, leave=False, disable=None)
        self.bar.n = done
        self.bar.set_postfix_str(what[-40:], refresh=True)
        if done >= total:
            self.bar.close()


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _with_dtype(recipe, args: argparse.Namespace):
    """--dtype wins over the recipe's `dtype` (and is recorded in what is written)."""
    from dataclasses import replace

    return replace(recipe, dtype=args.dtype) if getattr(args, "dtype", None) else recipe


def cmd_merge(args: argparse.Namespace) -> int:
    from merging.engine.merge import merge_adapters, save_merged
    from merging.models.base import peak_memory

    recipe = _with_dtype(load_recipe(args.recipe), args)
    out = Path(args.out)
    # an output that is, holds or lies inside an input would replace (or grow into) what it reads
    check_not_an_input(out, [ref.path for ref in recipe.adapters], "input adapter")
    _check_eval_files_exist(recipe)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    if args.overwrite:
        # before the work: only a folder holding an adapter (or an earlier export) is ever replaced
        check_replaceable(out, markers=_export_markers() if args.full_model else ("adapter_config.json",))
    if args.full_model and args.exact_rank:
        raise ValueError("--exact-rank applies to PEFT outputs; --full-model always folds in the exact merge")
    if not args.full_model and (args.max_shard_size or args.head):
        raise ValueError("--max-shard-size and --head apply to --full-model exports only")
    if args.max_shard_size is not None:
        from merging.engine.export import parse_size

        try:
            if parse_size(args.max_shard_size) < 1:
                raise ValueError("must be positive")
        except ValueError as err:
            detail = str(err).removeprefix("max_shard_size: ")
            raise ValueError(f"--max-shard-size: {detail}, got {args.max_shard_size[:40]!r}"
                             if detail == "must be positive" else f"--max-shard-size: {detail}") from None
    inputs = _merge_inputs(recipe)
    check_not_an_input(out, [a.path for a in inputs.adapters if a.path is not None], "input adapter")  # twins too
    base_dir = _export_base(recipe, inputs) if args.full_model else None  # refused before the merge
    if base_dir is not None:
        check_not_an_input(out, [base_dir], "base model")
    # a PEFT output is right-sized: rank ≤ the recipe's rank, else the sum of the inputs' ranks;
    # a full model gets each module's dense merged update, computed while it is written: nothing factored
    bound = not (args.full_model or args.exact_rank)
    merged = merge_adapters(inputs.adapters, recipe, progress=None if args.full_model else _Bar("merging"),
                            bound_rank=bound, factor=not args.full_model)
    summary = merged.summary()
    warning = (summary.get("rank_bound") or {}).get("warning")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.full_model:
        from merging.engine.export import DEFAULT_MAX_SHARD_BYTES, export_merged

        report = export_merged(
            merged, base_dir, out, head_from=args.head, max_shard_size=args.max_shard_size or DEFAULT_MAX_SHARD_BYTES,
            overwrite=args.overwrite, progress=_Bar("merging and writing"),
        )
        summary = {**merged.summary(), "export": report.to_dict()}
    else:
        save_merged(merged, out, overwrite=args.overwrite, bound=bound)
    if not args.per_module:
        summary.pop("modules")
        if "do_merging" in summary:
            summary["do_merging"]["orthogonalize"].pop("per_module", None)
    summary["out"] = str(out)
    summary["output"] = "full model" if args.full_model else "PEFT adapter"
    summary["dtype"] = recipe.dtype
    summary["memory"] = peak_memory(merged.device)
    _print_json(summary)
    return 0


def _check_eval_files_exist(recipe) -> None:
    """A merge does not read the recipe's evaluation files, but one that is missing is a broken
    recipe (its `evaluate` would fail): named now rather than carried into the merged output."""
    for index, ref in enumerate(recipe.adapters):
        if ref.eval is not None and not Path(ref.eval).is_file():
            raise ValueError(f"field 'adapters[{index}].eval': {ref.eval} is not a file")


def _export_markers() -> tuple[str, ...]:
    from merging.engine.export import EXPORT_MARKERS

    return EXPORT_MARKERS


def _export_base(recipe, inputs):
    """The base model's local folder for a full-model export (a folder or the local HF cache)."""
    from merging.lab.catalog import resolve_base_model
    from merging.models.base import resolve_model_source

    spec = inputs.base_model or resolve_base_model(recipe, inputs.adapters)
    return resolve_model_source(spec)


def _merge_inputs(recipe, labs: dict | None = None):
    """What the recipe merges, its `osrm` mode applied (merging.lab.catalog), with the Lab it needed."""
    from merging.lab.catalog import merge_inputs
    from merging.lab.lab import Lab

    labs = {} if labs is None else labs

    def lab_for(base_model: str) -> Lab:
        if base_model not in labs:
            labs[base_model] = Lab(base_model, device=recipe.device, dtype=recipe.dtype)
        return labs[base_model]

    return merge_inputs(recipe, lab_for=lab_for)


def cmd_export_mergekit(args: argparse.Namespace) -> int:
    """A native recipe as the mergekit config that merges the same (YAML on stdout, or --out)."""
    from merging.engine.merge import load_recipe_adapters
    from merging.lab.catalog import adapters_base_model
    from merging.recipe.mergekit_config import export_mergekit

    recipe = load_recipe(args.recipe)
    base = recipe.base_model or adapters_base_model(load_recipe_adapters(recipe))
    text = export_mergekit(recipe, base, source=Path(args.recipe).name)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the path of the YAML file to write")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    staging = out.with_name(f".{out.name}.partial")
    staging.write_text(text, encoding="utf-8")
    staging.replace(out)
    _print_json({"out": str(out), "merge_method": yaml_method(text)})
    return 0


def yaml_method(text: str) -> str:
    import yaml

    return str(yaml.safe_load(text).get("merge_method"))


def cmd_inspect(args: argparse.Namespace) -> int:
    _print_json([load_adapter(path).summary() for path in args.adapters])
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from merging.analysis.metrics import adapter_metrics
    from merging.engine.merge import load_recipe_adapters
    from merging.models.devices import resolve_device

    recipe = load_recipe(args.recipe)
    adapters = load_recipe_adapters(recipe)
    _print_json(adapter_metrics(adapters, device=resolve_device(recipe.device)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from merging.lab.lab import Lab

    recipe = _with_dtype(load_recipe(args.recipe), args)
    labs: dict = {}
    inputs = _merge_inputs(recipe, labs)
    if inputs.base_model is None:
        raise ValueError("the adapters do not say which base model they belong to; set the recipe's 'base_model'")
    lab = labs.get(inputs.base_model) or Lab(inputs.base_model, device=recipe.device, dtype=recipe.dtype)
    adapters = inputs.adapters
    run = lab.merge_and_evaluate(adapters, recipe, progress=_Bar("merge + evaluate"))
    results = run.evaluation.to_dict()
    results["merge_seconds"] = round(run.merged.seconds, 4)
    results["device"] = str(lab.device)
    from merging.models.base import peak_memory

    results["dtype"] = str(next(lab.model.parameters()).dtype).removeprefix("torch.")
    results["memory"] = peak_memory(lab.device)  # one base copy + the work: what this evaluation needed
    rows = None
    if args.examples:
        from merging.evaluation.examples import side_by_side

        carried = dict(run.merged.adapter.saved_modules) or None
        rows = side_by_side(lab, adapters, recipe, args.examples, run.merged.adapter.modules, carried)
    if args.json:
        _print_json(results if rows is None else {**results, "examples": rows})
        return 0
    from merging.analysis.text_report import evaluation_text, examples_text

    print(evaluation_text(results))
    if rows:
        print("\nExamples side by side (greedy, the reference's length; loss in nats per token):\n")
        print(examples_text(rows))
    return 0


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from merging.models.devices import resolve_device
    from merging.tasks import DEFAULT_DEMO_TASKS
    from merging.training.zoo import MANIFEST, ZOO_TRAINING, BuildSettings, build_zoo

    if args.overwrite:
        check_replaceable(Path(args.out), markers=(MANIFEST,))  # only a zoo is replaced, and not after training
    tasks = tuple(args.tasks or DEFAULT_DEMO_TASKS)
    # the default shared-seed pair, when both of its tasks are built
    default_shared = tuple(t for t in BuildSettings.shared_seed_tasks if t in tasks)
    default_shared = default_shared if len(default_shared) > 1 else ()
    settings = BuildSettings(
        tasks=tasks,
        inits=BuildSettings.inits if args.inits is None else tuple(args.inits),
        train_size=BuildSettings.train_size if args.train_size is None else args.train_size,
        eval_size=BuildSettings.eval_size if args.eval_size is None else args.eval_size,
        training=replace(
            ZOO_TRAINING,
            epochs=ZOO_TRAINING.epochs if args.epochs is None else args.epochs,
            dev_size=ZOO_TRAINING.dev_size if args.dev_size is None else args.dev_size,
        ),
        refuse_chance=not args.keep_chance_runs,
        seed=args.seed,
        replicate=args.replicate,
        shared_seed_tasks=tuple(args.shared_seed_tasks) if args.shared_seed_tasks is not None else default_shared,
        train_only=tuple(args.train_only) if args.train_only else None,
    )
    zoo = build_zoo(args.out, settings, device=resolve_device(args.device), progress=_Bar("training"), overwrite=args.overwrite)
    _print_json(
        {
            "out": str(zoo.folder),
            "adapters": [
                {"name": a.name, "single_task_accuracy": a.single_task_accuracy, "train_seconds": a.train_seconds}
                for a in zoo.adapters
            ],
        }
    )
    return 0


def cmd_zoo_combine(args: argparse.Namespace) -> int:
    from merging.training.zoo import MANIFEST, combine_zoos

    if args.overwrite:
        check_replaceable(Path(args.out), markers=(MANIFEST,))
    zoo = combine_zoos(args.parts, args.out, overwrite=args.overwrite)
    _print_json({"out": str(zoo.folder), "adapters": [a.name for a in zoo.adapters]})
    return 0


def cmd_zoo_rescore(args: argparse.Namespace) -> int:
    from merging.models.devices import resolve_device
    from merging.training.zoo import rescore_zoo

    zoo = rescore_zoo(args.zoo, device=resolve_device(args.device), progress=_Bar("scoring"))
    _print_json({a.name: a.single_task_accuracy for a in zoo.adapters})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from merging.training.pipeline import train_task_adapter

    if args.overwrite:
        check_replaceable(Path(args.out))  # refused now, not after the training
    trained = train_task_adapter(
        args.task,
        args.out,
        init=args.init,
        other_tasks=args.other_tasks or None,  # none given: the other available demo tasks
        base_model=args.base_model,
        rank=args.rank,
        alpha=args.alpha,
        epochs=args.epochs,
        train_size=args.train_size,
        eval_size=args.eval_size,
        seed=args.seed,
        osrm_samples=args.osrm_samples,
        freeze_A=args.freeze_a,
        device=args.device,
        overwrite=args.overwrite,
        progress=_Bar(f"training {args.task} ({args.init})"),
    )
    _print_json(trained.to_dict())
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from merging.methods.table import methods_json, methods_markdown, methods_text

    if args.json:
        _print_json(methods_json())
    else:
        sys.stdout.write(methods_markdown() if args.markdown else methods_text())
    return 0


def _param_bounds(given: Sequence[str]) -> dict[str, tuple[float, float]]:
    """--param-bounds NAME=LOW,HIGH (repeatable) as {name: (low, high)}."""
    from merging.search.study import SearchError

    bounds = {}
    for item in given:
        name, sep, pair = item.partition("=")
        if not sep or not name.strip():
            raise SearchError(f"--param-bounds: expected NAME=LOW,HIGH (e.g. gamma=0,0.05), got {item!r}")
        bounds[name.strip()] = _pair(pair, f"--param-bounds {name.strip()}")
    return bounds


def _searchable_help() -> str:
    from merging.methods import REGISTRY

    names = dict.fromkeys(p.name for m in REGISTRY.values() for p in m.searchable)
    return ", ".join(names)


def cmd_search(args: argparse.Namespace) -> int:
    """λ search (merging/search/study.py); every finished trial goes to the workspace's run store."""
    import os

    from merging.search.study import SearchError, missing_packages, run_search
    from merging.store.runs import RunStore

    if "optuna" in missing_packages() or (args.ray is not None and "ray" in missing_packages()):
        from merging.search.study import INSTALL_HINT

        needed = "Optuna and Ray" if args.ray is not None else "Optuna"
        raise SearchError(f"search needs {needed}, which is not installed; run: {INSTALL_HINT}")
    recipe = load_recipe(args.recipe)
    workspace = Path(args.workspace or os.environ.get("MERGESCOPE_WORKSPACE", "workspace"))
    params = [p.strip() for p in args.params.split(",") if p.strip()]
    density_bounds = None if args.density_bounds is None else _pair(args.density_bounds, "--density-bounds")
    if "density" not in params and args.density_bounds is not None:
        raise SearchError("--density-bounds applies only when density is searched (--params weights,density)")
    store = None if args.no_store else RunStore(workspace / "runs.sqlite")
    if store is not None and not store.writable:  # refused before the work, not a search whose trials vanish
        problem = store.problem or f"the run store {store.path} is read-only"
        raise SearchError(f"{problem}; pass --no-store to search without storing, or choose another --workspace")
    result = run_search(
        recipe,
        trials=args.trials,
        objective=args.objective,
        params=params,
        weight_bounds=_pair(args.bounds, "--bounds"),
        density_bounds=density_bounds,
        param_bounds=_param_bounds(args.param_bounds or []),
        sampler=args.sampler,
        seed=args.seed,
        dev_size=args.dev_size,
        ray=args.ray is not None,
        ray_address=None if args.ray in (None, "local") else args.ray,
        workers=args.workers,
        store=store,
        report=not args.no_report,
        progress=_Bar("searching"),
    )
    _print_json(result.to_dict())
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _pair(text: str, flag: str) -> tuple[float, float]:
    from merging.search.study import SearchError

    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError as err:
        raise SearchError(f"{flag}: expected LOW,HIGH (two numbers), got {text!r}") from err
    return low, high


# ----------------------------------------------------------------------------------------------
# `mergescope dashboard`


def app_folder() -> Path:
    """The folder holding app.py, pages/ and .streamlit/config.toml.

    The checkout this package runs from when there is one (a clone, an editable install: the live
    files), else the copy a wheel installs as the package `mergescope_app` (setup.py).
    """
    checkout = Path(__file__).resolve().parent.parent
    if all((checkout / name).exists() for name in ("app.py", "pages", ".streamlit/config.toml")):
        return checkout
    spec = importlib.util.find_spec("mergescope_app")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "app.py").is_file():
            return Path(location)
    raise FileNotFoundError("the dashboard's files (app.py, pages/) are not installed; reinstall mergescope")


def streamlit_flags(config_file: Path, leave_out: Sequence[str] = ()) -> list[str]:
    """The settings of a Streamlit config.toml as `--section.option=value` flags (less `leave_out`).

    Streamlit reads .streamlit/config.toml from the working folder only; passed as flags, the
    project's settings apply wherever the dashboard is started from.
    """
    if not config_file.is_file():
        return []
    with config_file.open("rb") as handle:
        config = tomllib.load(handle)
    flags = []
    for section, options in config.items():
        for option, value in options.items():
            if f"{section}.{option}" in leave_out:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            flags.append(f"--{section}.{option}={text}")
    return flags


def dashboard_command(folder: Path, port: int | None, address: str, extra: Sequence[str]) -> list[str]:
    """The `streamlit run` command line: the project's settings, then --address/--port, then the caller's
    own Streamlit flags (Streamlit keeps the last value given for a flag).

    Run through the app's server entry (pages/_server.py): Streamlit's own command line, which also
    starts the server's warm-up as soon as the server runs instead of when the first browser connects.
    """
    command = [sys.executable, str(folder / "pages" / "_server.py"), "run", str(folder / "app.py")]
    given = {"server.address": address, "server.port": port}
    given = {name: value for name, value in given.items() if value is not None}
    command += streamlit_flags(folder / ".streamlit" / "config.toml", leave_out=tuple(given))
    command += [f"--{name}={value}" for name, value in given.items()]
    return command + list(extra)


def cmd_dashboard(args: argparse.Namespace) -> int:
    folder = app_folder()
    command = dashboard_command(folder, args.port, args.address, args.streamlit_args)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Idle OpenMP threads sleep instead of spinning (docs/BENCHMARKS.md: spinning made merges 100× slower).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if (folder / "zoo").is_dir():
        env.setdefault("MERGESCOPE_ZOO", str(folder / "zoo"))  # the installed copy of the demo zoo
    sys.stdout.flush()
    # Replace this process: Ctrl-C and a stop signal reach Streamlit itself, and no child is left behind.
    os.execve(sys.executable, command, env)
    return 0  # not reached


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag value is one line naming the flag (exit 2), like every other refusal;
    `--help` still shows the usage."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message.splitlines()[0] if message else 'bad arguments'} "
                                  f"(see {self.prog} --help)\n")


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]; argparse names the flag in its message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"{low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def _positive_number(text: str) -> float:
    """An argparse type: a finite number > 0 (a LoRA alpha of 0 trains an adapter that changes nothing)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text[:40]!r}")
    return value


def cmd_tour(args: argparse.Namespace) -> int:
    """Measure the Tour (or read it from the workspace's measure cache) and write the offline deck."""
    from merging.analysis import deck
    from merging.analysis import tour as story
    from merging.lab.lab import Lab
    from merging.store.measure_cache import MeasureCache
    from merging.training.zoo import REPO_ZOO, load_zoo

    out = Path(args.export)
    if out.is_dir():
        raise ValueError(f"--export {out}: is a folder; give a file name such as deck.html")
    if not out.parent.is_dir():
        raise ValueError(f"--export {out}: the folder {out.parent} does not exist")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--export {out}: the file exists; add --overwrite to replace it")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise ValueError(f"--eval-limit: expected a positive number of examples, got {args.eval_limit}")
    zoo = load_zoo(args.zoo or os.environ.get("MERGESCOPE_ZOO", str(REPO_ZOO)))
    tour = story.tour_steps(zoo)
    cache = MeasureCache.in_workspace(args.workspace)
    lab = Lab(zoo.base_model, device=args.device)
    measured = story.measure_tour(tour, lab, cache, progress=_Bar("measuring the tour"), eval_limit=args.eval_limit)
    deck.write_deck(out, deck.deck_html(tour, measured, eval_limit=args.eval_limit))
    _print_json({"out": str(out), "steps": len(tour.steps), "bytes": out.stat().st_size})
    return 0


def build_parser() -> argparse.ArgumentParser:
    # the name the user typed: the installed command, or the module
    prog = "mergescope" if Path(sys.argv[0]).name == "mergescope" else "python -m merging"
    parser = _Parser(prog=prog, description="Merge and inspect LoRA adapters.")
    commands = parser.add_subparsers(dest="command", required=True)

    merge = commands.add_parser("merge", help="merge the adapters of a recipe into a PEFT folder")
    merge.add_argument("recipe", help="recipe file (JSON or YAML), or a mergekit config (YAML)")
    merge.add_argument("--out", required=True, help="output folder (written atomically)")
    merge.add_argument(
        "--overwrite", action="store_true",
        help="write into an existing output folder (only one holding an adapter or an export): its adapter's "
        "(or export's) files are replaced when the new ones are complete; every other file there stays",
    )
    merge.add_argument("--per-module", action="store_true", help="include each module's rank and energy")
    merge.add_argument(
        "--exact-rank", action="store_true",
        help="PEFT output: write the exact merge at its numerical rank, however large (by default each module's "
        "rank is at most the recipe's rank, else the sum of the inputs' ranks)",
    )
    merge.add_argument(
        "--full-model", action="store_true",
        help="write the base model with the merged update folded in (loadable by from_pretrained) "
        "instead of a PEFT adapter folder",
    )
    merge.add_argument("--dtype", choices=DTYPE_CHOICES, help="overrides the recipe's dtype (auto: bfloat16 on "
                       "CUDA, float32 on the CPU; a full-model export in auto keeps the base's stored dtype)")
    merge.add_argument("--max-shard-size", help="full model: largest shard, e.g. 2GB (default), 500MB")
    merge.add_argument("--head", help="full classification model: the adapter whose task head is exported "
                       "(default: the first listed that has one)")
    merge.set_defaults(run=cmd_merge)

    export_mk = commands.add_parser(
        "export-mergekit", help="write a native recipe as the mergekit config that merges the same (or say why none does)"
    )
    export_mk.add_argument("recipe", help="recipe file (JSON or YAML)")
    export_mk.add_argument("--out", help="YAML file to write (default: print the YAML on stdout)")
    export_mk.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export_mk.set_defaults(run=cmd_export_mergekit)

    inspect = commands.add_parser("inspect", help="ranks, modules, scales and norms of adapters")
    inspect.add_argument("adapters", nargs="+", help="PEFT adapter folders")
    inspect.set_defaults(run=cmd_inspect)

    metrics = commands.add_parser("metrics", help="interference metrics of a recipe's adapters")
    metrics.add_argument("recipe", help="recipe file (JSON or YAML)")
    metrics.add_argument("--json", action="store_true", help="print JSON (the only format for now)")
    metrics.set_defaults(run=cmd_metrics)

    evaluate = commands.add_parser(
        "evaluate", help="merge, then per-task scores (accuracy; exact match and loss for causal LMs): base, single, merged"
    )
    evaluate.add_argument("recipe", help="recipe file (JSON or YAML)")
    evaluate.add_argument("--json", action="store_true", help="print JSON (default: a readable table)")
    evaluate.add_argument("--examples", type=_positive, default=0, metavar="N",
                          help="causal tasks: show N prompts per task with the reference and the base / single / "
                               "merged greedy outputs, each with its loss and perplexity")
    evaluate.add_argument("--dtype", choices=DTYPE_CHOICES, help="overrides the recipe's dtype (auto: bfloat16 on "
                          "CUDA, float32 on the CPU)")
    evaluate.set_defaults(run=cmd_evaluate)


    methods = commands.add_parser("methods", help="the merge methods, their parameters and mergekit names (from the registry)")
    shown = methods.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="each method's parameters (kind, range, default, help, "
                       "searchable), rules, paper and mergekit name, as JSON")
    shown.add_argument("--markdown", action="store_true", help="the Markdown table docs/METHODS.md holds")
    methods.set_defaults(run=cmd_methods)

    search = commands.add_parser("search", help="search per-adapter λ (and the method's searchable parameters) with Optuna, in-process or on Ray")
    search.add_argument("recipe", help="recipe file (JSON or YAML): the adapters, the method, the starting point")
    search.add_argument("--trials", type=_whole(1), default=30, help="budget: merges + dev evaluations (default 30)")
    search.add_argument("--objective", choices=["average", "normalized", "worst_task", "loss"], default="average",
                        help="what the trials optimise: average (mean merged score), normalized, worst_task, or loss "
                             "(mean completion loss of causal tasks, lower is better)")
    search.add_argument("--params", default="weights", help="what to search, comma-separated: weights and any "
                        f"searchable parameter of the recipe's method ({_searchable_help()}; see `mergescope methods`)")
    search.add_argument("--bounds", default="0,1.5", help="λ range LOW,HIGH for every adapter (default 0,1.5)")
    search.add_argument("--density-bounds", help="density range LOW,HIGH (default: the registry's, 0.1,1)")
    search.add_argument("--param-bounds", action="append", metavar="NAME=LOW,HIGH",
                        help="a searched parameter's range (repeatable; default: the registry's search bounds)")
    search.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run trials on Ray actors: a local runtime, or the cluster at ADDRESS (host:port)")
    search.add_argument("--workers", type=_whole(1), help="Ray actors (default: one per CPU of the cluster)")
    search.add_argument("--seed", type=_whole(0), default=0, help="sampler seed and dev-split seed")
    search.add_argument("--sampler", choices=["tpe", "cmaes"], default="tpe")
    search.add_argument("--dev-size", type=_whole(1), default=64,
                        help="dev examples per task: from its training data, or (a task with an evaluation file and no "
                             "'dev' file) at most half of the evaluation file's rows, the rest for the final report")
    search.add_argument("--workspace", help="run store folder (default: $MERGESCOPE_WORKSPACE or ./workspace)")
    search.add_argument("--no-store", action="store_true", help="do not write trials to the run store")
    search.add_argument("--no-report", action="store_true", help="skip the final report on the evaluation split")
    search.add_argument("--json", action="store_true", help="print JSON (the only format for now)")
    search.set_defaults(run=cmd_search)

    train = commands.add_parser("train", help="train one LoRA adapter on one task")
    train.add_argument("task", help="a demo task name, or a CSV/JSONL file with text,label columns")
    train.add_argument("--out", required=True, help="output adapter folder")
    train.add_argument("--init", choices=list(TRAIN_INITS), default="standard",
                       help="osrm: the authors' OSRM (one mean row per other task); gaussian: the OSRM authors' baseline "
                            "(PEFT's std 1/r); standard-scaled: PEFT's default rescaled to OSRM's size")
    train.add_argument("--other-tasks", nargs="*", default=[], help="tasks OSRM keeps this adapter away from (default: the other demo tasks)")
    train.add_argument("--freeze-a", action="store_true", help="keep OSRM's A fixed while training")
    train.add_argument("--base-model", help="local Hugging Face model folder (default: the packaged MiniLM)")
    train.add_argument("--rank", type=_whole(1), default=8)
    train.add_argument("--alpha", type=_positive_number, default=16)
    train.add_argument("--epochs", type=_whole(1), default=2)
    train.add_argument("--train-size", type=_whole(1), default=1000)
    train.add_argument("--eval-size", type=_whole(1), default=200)
    train.add_argument("--osrm-samples", type=_whole(1), default=100)
    train.add_argument("--seed", type=_whole(0), default=0)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(run=cmd_train)

    zoo = commands.add_parser("zoo", help="the built-in demo zoo")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    build = zoo_commands.add_parser("build", help="train every demo task × init and write a manifest")
    build.add_argument("--out", default="zoo", help="zoo folder (default: zoo)")
    build.add_argument("--tasks", nargs="*", help="demo tasks (default: the five demo tasks)")
    build.add_argument("--inits", nargs="*", help="kinds to train (default: standard osrm; none: only the shared-seed adapters)",
                       choices=[kind for kind in ZOO_KINDS if kind != "shared-seed"])
    build.add_argument("--shared-seed-tasks", nargs="*", help="tasks trained again from one shared seed (default: the zoo's pair)")
    build.add_argument("--train-size", type=_whole(1), help="training examples per task (default: the zoo's, 800)")
    build.add_argument("--eval-size", type=_whole(1), help="evaluation examples per task (default: the zoo's, 200)")
    build.add_argument("--epochs", type=_whole(1), default=None, help="default: the zoo's budget (merging.training.zoo.ZOO_TRAINING)")
    build.add_argument("--dev-size", type=_whole(0), default=None,
                       help="training examples held out to pick each adapter's best epoch (default: the zoo's, 100; 0: the last epoch)")
    build.add_argument("--keep-chance-runs", action="store_true",
                       help="ship a run that did not learn (flagged in the manifest) instead of retraining it with the next seed")
    build.add_argument("--seed", type=_whole(0), default=0, help="the data split")
    build.add_argument("--replicate", type=_whole(0), default=0, help="which training run: seeds are derived from task, kind and this")
    build.add_argument("--train-only", nargs="+", help="train only these tasks' adapters (a part; see `zoo combine`)")
    build.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    build.add_argument("--overwrite", action="store_true")
    build.set_defaults(run=cmd_zoo_build)
    combine = zoo_commands.add_parser("combine", help="one zoo from parts built with --train-only (e.g. in parallel)")
    combine.add_argument("parts", nargs="+", help="zoo folders built with the same settings")
    combine.add_argument("--out", default="zoo", help="zoo folder (default: zoo)")
    combine.add_argument("--overwrite", action="store_true")
    combine.set_defaults(run=cmd_zoo_combine)
    rescore = zoo_commands.add_parser("rescore", help="measure the zoo's single-task accuracies again")
    rescore.add_argument("--zoo", default="zoo", help="zoo folder (default: zoo)")
    rescore.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    rescore.set_defaults(run=cmd_zoo_rescore)

    tour = commands.add_parser("tour", help="the talk tour as one offline HTML deck (--export deck.html)")
    tour.add_argument("--export", required=True, metavar="FILE", help="the deck to write (one self-contained HTML file)")
    tour.add_argument("--zoo", help="zoo folder (default: MERGESCOPE_ZOO, else the built-in zoo)")
    tour.add_argument("--workspace", default=os.environ.get("MERGESCOPE_WORKSPACE", "workspace"),
                      help="its measure cache is read and filled (default: workspace, as the dashboard's)")
    tour.add_argument("--eval-limit", type=int, help="score each task on its first N evaluation examples (a quick deck)")
    tour.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    tour.add_argument("--overwrite", action="store_true", help="replace an existing file")
    tour.set_defaults(run=cmd_tour)

    dashboard = commands.add_parser(
        "dashboard",
        help="start the Streamlit dashboard with the project's settings",
        description="Start the dashboard from any folder. Other --section.option=value flags go to Streamlit.",
    )
    dashboard.add_argument("--port", type=_whole(1, 65535), help="port (default: .streamlit/config.toml's, 8501)")
    dashboard.add_argument("--address", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    dashboard.set_defaults(run=cmd_dashboard, streamlit_args=[])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "dashboard":
        args.streamlit_args = extra  # Streamlit's own flags, passed on as given
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (ValueError, OSError) as err:  # AdapterError, RecipeError, MethodError are ValueErrors
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
