"""`python -m merging …`: the library from the command line.

Every command prints JSON on stdout. Bad input of any kind exits with status 2 and one line on
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

from merging.lora import load_adapter
from merging.mergekit_config import load_recipe_file as load_recipe  # native recipes and mergekit YAML
from merging.staging import check_replaceable

EXIT_BAD_INPUT = 2
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # merging.recipe.DTYPES


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
    from merging.merge import merge_adapters, save_merged
    from merging.models import peak_memory

    recipe = _with_dtype(load_recipe(args.recipe), args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    if args.overwrite:
        # before the work: only a folder holding an adapter (or an earlier export) is ever replaced
        check_replaceable(out, markers=_export_markers() if args.full_model else ("adapter_config.json",))
    if not args.full_model and (args.max_shard_size or args.head):
        raise ValueError("--max-shard-size and --head apply to --full-model exports only")
    inputs = _merge_inputs(recipe)
    base_dir = _export_base(recipe, inputs) if args.full_model else None  # refused before the merge
    merged = merge_adapters(inputs.adapters, recipe, progress=_Bar("merging"))
    summary = merged.summary()
    if args.full_model:
        from merging.export import DEFAULT_MAX_SHARD_BYTES, export_merged

        report = export_merged(
            merged, base_dir, out, head_from=args.head, max_shard_size=args.max_shard_size or DEFAULT_MAX_SHARD_BYTES,
            overwrite=args.overwrite, progress=_Bar("writing shards"),
        )
        summary["export"] = report.to_dict()
    else:
        save_merged(merged, out, overwrite=args.overwrite)
    if not args.per_module:
        summary.pop("modules")
    summary["out"] = str(out)
    summary["output"] = "full model" if args.full_model else "PEFT adapter"
    summary["dtype"] = recipe.dtype
    summary["memory"] = peak_memory(merged.device)
    _print_json(summary)
    return 0


def _export_markers() -> tuple[str, ...]:
    from merging.export import EXPORT_MARKERS

    return EXPORT_MARKERS


def _export_base(recipe, inputs):
    """The base model's local folder for a full-model export (a folder or the local HF cache)."""
    from merging.catalog import resolve_base_model
    from merging.models import resolve_model_source

    spec = inputs.base_model or resolve_base_model(recipe, inputs.adapters)
    return resolve_model_source(spec)


def _merge_inputs(recipe, labs: dict | None = None):
    """What the recipe merges, its `osrm` mode applied (merging.catalog), with the Lab it needed."""
    from merging.catalog import merge_inputs
    from merging.lab import Lab

    labs = {} if labs is None else labs

    def lab_for(base_model: str) -> Lab:
        if base_model not in labs:
            labs[base_model] = Lab(base_model, device=recipe.device, dtype=recipe.dtype)
        return labs[base_model]

    return merge_inputs(recipe, lab_for=lab_for)


def cmd_inspect(args: argparse.Namespace) -> int:
    _print_json([load_adapter(path).summary() for path in args.adapters])
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from merging.merge import load_recipe_adapters, resolve_device
    from merging.metrics import adapter_metrics

    recipe = load_recipe(args.recipe)
    adapters = load_recipe_adapters(recipe)
    _print_json(adapter_metrics(adapters, device=resolve_device(recipe.device)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from merging.lab import Lab

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
    from merging.models import peak_memory

    results["dtype"] = str(next(lab.model.parameters()).dtype).removeprefix("torch.")
    results["memory"] = peak_memory(lab.device)  # one base copy + the work: what this evaluation needed
    _print_json(results)
    return 0


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from merging.merge import resolve_device
    from merging.tasks import DEFAULT_DEMO_TASKS
    from merging.zoo import MANIFEST, ZOO_TRAINING, BuildSettings, build_zoo

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
        training=ZOO_TRAINING if args.epochs is None else replace(ZOO_TRAINING, epochs=args.epochs),
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
    from merging.zoo import MANIFEST, combine_zoos

    if args.overwrite:
        check_replaceable(Path(args.out), markers=(MANIFEST,))
    zoo = combine_zoos(args.parts, args.out, overwrite=args.overwrite)
    _print_json({"out": str(zoo.folder), "adapters": [a.name for a in zoo.adapters]})
    return 0


def cmd_zoo_rescore(args: argparse.Namespace) -> int:
    from merging.merge import resolve_device
    from merging.zoo import rescore_zoo

    zoo = rescore_zoo(args.zoo, device=resolve_device(args.device), progress=_Bar("scoring"))
    _print_json({a.name: a.single_task_accuracy for a in zoo.adapters})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from merging.train_pipeline import train_task_adapter

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


def cmd_search(args: argparse.Namespace) -> int:
    """λ search (merging/search.py); every finished trial goes to the workspace's run store."""
    import os

    from merging.runs import RunStore
    from merging.search import SearchError, missing_packages, run_search

    if "optuna" in missing_packages() or (args.ray is not None and "ray" in missing_packages()):
        from merging.search import INSTALL_HINT

        needed = "Optuna and Ray" if args.ray is not None else "Optuna"
        raise SearchError(f"search needs {needed}, which is not installed; run: {INSTALL_HINT}")
    recipe = load_recipe(args.recipe)
    workspace = Path(args.workspace or os.environ.get("MERGESCOPE_WORKSPACE", "workspace"))
    result = run_search(
        recipe,
        trials=args.trials,
        objective=args.objective,
        params=[p.strip() for p in args.params.split(",") if p.strip()],
        weight_bounds=_pair(args.bounds, "--bounds"),
        density_bounds=_pair(args.density_bounds, "--density-bounds"),
        sampler=args.sampler,
        seed=args.seed,
        dev_size=args.dev_size,
        ray=args.ray is not None,
        ray_address=None if args.ray in (None, "local") else args.ray,
        workers=args.workers,
        store=None if args.no_store else RunStore(workspace / "runs.sqlite"),
        report=not args.no_report,
        progress=_Bar("searching"),
    )
    _print_json(result.to_dict())
    return 0


def _pair(text: str, flag: str) -> tuple[float, float]:
    from merging.search import SearchError

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


def cmd_tour(args: argparse.Namespace) -> int:
    """Measure the Tour (or read it from the workspace's measure cache) and write the offline deck."""
    from merging import deck
    from merging import tour as story
    from merging.lab import Lab
    from merging.measure_cache import MeasureCache
    from merging.zoo import REPO_ZOO, load_zoo

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
    parser = argparse.ArgumentParser(prog=prog, description="Merge and inspect LoRA adapters.")
    commands = parser.add_subparsers(dest="command", required=True)

    merge = commands.add_parser("merge", help="merge the adapters of a recipe into a PEFT folder")
    merge.add_argument("recipe", help="recipe file (JSON or YAML), or a mergekit config (YAML)")
    merge.add_argument("--out", required=True, help="output folder (written atomically)")
    merge.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing output folder (only one holding an adapter; swapped in when complete)",
    )
    merge.add_argument("--per-module", action="store_true", help="include each module's rank and energy")
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
    evaluate.add_argument("--json", action="store_true", help="print JSON (the only format for now)")
    evaluate.add_argument("--dtype", choices=DTYPE_CHOICES, help="overrides the recipe's dtype (auto: bfloat16 on "
                          "CUDA, float32 on the CPU)")
    evaluate.set_defaults(run=cmd_evaluate)


    search = commands.add_parser("search", help="search per-adapter λ (and density) with Optuna, in-process or on Ray")
    search.add_argument("recipe", help="recipe file (JSON or YAML): the adapters, the method, the starting point")
    search.add_argument("--trials", type=int, default=30, help="budget: merges + dev evaluations (default 30)")
    search.add_argument("--objective", choices=["average", "normalized", "worst_task"], default="average")
    search.add_argument("--params", default="weights", help="what to search: weights, density or weights,density")
    search.add_argument("--bounds", default="0,1.5", help="λ range LOW,HIGH for every adapter (default 0,1.5)")
    search.add_argument("--density-bounds", default="0.1,1", help="density range LOW,HIGH (default 0.1,1)")
    search.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run trials on Ray actors: a local runtime, or the cluster at ADDRESS (host:port)")
    search.add_argument("--workers", type=int, help="Ray actors (default: one per CPU of the cluster)")
    search.add_argument("--seed", type=int, default=0, help="sampler seed and dev-split seed")
    search.add_argument("--sampler", choices=["tpe", "cmaes"], default="tpe")
    search.add_argument("--dev-size", type=int, default=64, help="dev examples per task, from its training data")
    search.add_argument("--workspace", help="run store folder (default: $MERGESCOPE_WORKSPACE or ./workspace)")
    search.add_argument("--no-store", action="store_true", help="do not write trials to the run store")
    search.add_argument("--no-report", action="store_true", help="skip the final report on the evaluation split")
    search.add_argument("--json", action="store_true", help="print JSON (the only format for now)")
    search.set_defaults(run=cmd_search)

    train = commands.add_parser("train", help="train one LoRA adapter on one task")
    train.add_argument("task", help="a demo task name, or a CSV/JSONL file with text,label columns")
    train.add_argument("--out", required=True, help="output adapter folder")
    train.add_argument("--init", choices=["standard", "osrm", "osrm-samples", "osrm-cov"], default="standard",
                       help="osrm: the authors' OSRM (one mean row per other task)")
    train.add_argument("--other-tasks", nargs="*", default=[], help="tasks OSRM keeps this adapter away from (default: the other demo tasks)")
    train.add_argument("--freeze-a", action="store_true", help="keep OSRM's A fixed while training")
    train.add_argument("--base-model", help="local Hugging Face model folder (default: the packaged MiniLM)")
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--alpha", type=float, default=16)
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--train-size", type=int, default=1000)
    train.add_argument("--eval-size", type=int, default=200)
    train.add_argument("--osrm-samples", type=int, default=100)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(run=cmd_train)

    zoo = commands.add_parser("zoo", help="the built-in demo zoo")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    build = zoo_commands.add_parser("build", help="train every demo task × init and write a manifest")
    build.add_argument("--out", default="zoo", help="zoo folder (default: zoo)")
    build.add_argument("--tasks", nargs="*", help="demo tasks (default: the five demo tasks)")
    build.add_argument("--inits", nargs="*", help="kinds to train (default: standard osrm; none: only the shared-seed adapters)",
                       choices=["standard", "osrm", "osrm-samples", "osrm-cov", "osrm-frozen"])
    build.add_argument("--shared-seed-tasks", nargs="*", help="tasks trained again from one shared seed (default: the zoo's pair)")
    build.add_argument("--train-size", type=int, help="training examples per task (default: the zoo's, 800)")
    build.add_argument("--eval-size", type=int, help="evaluation examples per task (default: the zoo's, 200)")
    build.add_argument("--epochs", type=int, default=None, help="default: the zoo's budget (merging.zoo.ZOO_TRAINING)")
    build.add_argument("--seed", type=int, default=0, help="the data split")
    build.add_argument("--replicate", type=int, default=0, help="which training run: seeds are derived from task, kind and this")
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
    dashboard.add_argument("--port", type=int, help="port (default: .streamlit/config.toml's, 8501)")
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
