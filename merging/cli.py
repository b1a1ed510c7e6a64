"""`python -m merging …`: the library from the command line.

Every command prints JSON on stdout. Bad input of any kind exits with status 2 and one line on
stderr; a merge writes its output folder atomically, so a failure never leaves a folder that looks
valid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from merging.lora import load_adapter
from merging.recipe import load_recipe

EXIT_BAD_INPUT = 2


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


def cmd_merge(args: argparse.Namespace) -> int:
    from merging.merge import run_recipe, save_merged

    recipe = load_recipe(args.recipe)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    merged = run_recipe(recipe, progress=_Bar("merging"))
    save_merged(merged, out, overwrite=args.overwrite)
    summary = merged.summary()
    if not args.per_module:
        summary.pop("modules")
    summary["out"] = str(out)
    _print_json(summary)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m merging", description="Merge and inspect LoRA adapters.")
    commands = parser.add_subparsers(dest="command", required=True)

    merge = commands.add_parser("merge", help="merge the adapters of a recipe into a PEFT folder")
    merge.add_argument("recipe", help="recipe file (JSON or YAML)")
    merge.add_argument("--out", required=True, help="output folder (written atomically)")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    merge.add_argument("--per-module", action="store_true", help="include each module's rank and energy")
    merge.set_defaults(run=cmd_merge)

    inspect = commands.add_parser("inspect", help="ranks, modules, scales and norms of adapters")
    inspect.add_argument("adapters", nargs="+", help="PEFT adapter folders")
    inspect.set_defaults(run=cmd_inspect)

    metrics = commands.add_parser("metrics", help="interference metrics of a recipe's adapters")
    metrics.add_argument("recipe", help="recipe file (JSON or YAML)")
    metrics.add_argument("--json", action="store_true", help="print JSON (the only format for now)")
    metrics.set_defaults(run=cmd_metrics)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (ValueError, OSError) as err:  # AdapterError, RecipeError, MethodError are ValueErrors
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
