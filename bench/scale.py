"""Scale: TIES merges of Llama-2-7B-shaped adapters on one machine, time and peak memory.

The benchmark writes random LoRA adapters as PEFT folders itself (no base weights are needed to
merge): q, k, v, o projections of d×d in `--layers` blocks, rank `--rank`, named like Llama's
(`model.layers.{i}.self_attn.q_proj`). With d = 4096 and 32 layers one adapter is 67 MB of float32.

Each merge runs in a child process (`load_adapter` × n, then `merge_adapters` with TIES, density
`--density`, truncated to rank `--out-rank`), so the peak resident memory it reports
(getrusage ru_maxrss of the child itself) belongs to that merge alone. The child's address space is
capped (`--mem-limit-gb`) so a merge that would not fit fails instead of starving the machine.

A merge that has not finished after `--budget-s` seconds is stopped at a module boundary (through
merge_adapters' progress callback) and its merge time is extrapolated from the modules done; all
modules have the same shape and cost, and the table says how many were measured.

Points: the adapter counts `--adapter-counts` at hidden size `--hidden-main`, and the hidden sizes
`--hidden-sizes` at `--adapters-main` adapters.

    .venv/bin/python bench/scale.py           # 2, 4, 8, 16 adapters at d = 4096; d = 1024, 2048, 4096 at 8
    .venv/bin/python bench/scale.py --tiny    # smoke test
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import base_parser, finish, loadavg, setup, target

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
RESULT_TAG = "SCALE_RESULT "


def module_names(layers: int) -> list[str]:
    return [f"model.layers.{i}.self_attn.{p}" for i in range(layers) for p in PROJECTIONS]


def write_adapter(folder: Path, hidden: int, layers: int, rank: int, seed: int) -> int:
    """A PEFT LoRA folder with seeded random factors; returns the weights file's size in bytes."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in module_names(layers):
        prefix = f"base_model.model.{name}"
        state[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=generator) / hidden**0.5
        state[f"{prefix}.lora_B.weight"] = torch.randn(hidden, rank, generator=generator) * 0.01
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(PROJECTIONS),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "base_model_name_or_path": "llama-2-7b-shapes",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    save_file(state, str(folder / "adapter_model.safetensors"))
    return (folder / "adapter_model.safetensors").stat().st_size


# ----------------------------------------------------------------------------------------------
# The child: one merge, measured


class _OutOfBudget(Exception):
    pass


def child(spec: dict) -> dict:
    on_gpu = spec["device"].startswith("cuda")
    if not on_gpu:  # CUDA reserves far more address space than it uses: no cap there
        limit = int(spec["mem_limit_gb"] * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from merging.adapters.lora import load_adapter
    from merging.engine.merge import merge_adapters
    from merging.recipe.codec import recipe_from_dict

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    adapters = [load_adapter(folder, name=f"a{i}") for i, folder in enumerate(spec["folders"])]
    load_s = time.perf_counter() - start
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    recipe = recipe_from_dict(
        {
            "adapters": [{"path": f, "name": f"a{i}", "weight": 1.0} for i, f in enumerate(spec["folders"])],
            "method": spec["method"],
            "density": spec["density"],
            "rank": spec["out_rank"],
            "seed": 0,
            "device": "cuda" if spec["device"].startswith("cuda") else "cpu",
        }
    )
    done = {"modules": 0, "total": 0}
    merge_start = time.perf_counter()

    def progress(index: int, total: int, what: str) -> None:
        done["modules"], done["total"] = index, total
        if spec["budget_s"] and index >= 1 and index < total and time.perf_counter() - merge_start > spec["budget_s"]:
            raise _OutOfBudget

    error = None
    try:
        merge_adapters(adapters, recipe, progress=progress)
    except _OutOfBudget:
        pass
    except MemoryError:
        error = f"out of memory (address space capped at {spec['mem_limit_gb']:g} GB)"
    if on_gpu:
        torch.cuda.synchronize()
    merge_s = time.perf_counter() - merge_start
    result = {
        "load_s": load_s,
        "merge_s": merge_s,
        "modules_done": done["modules"],
        "modules_total": done["total"],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_imports_bytes": rss_imports,
        "rss_after_load_bytes": rss_loaded,
        "error": error,
        "loadavg": loadavg(),
        "threads": torch.get_num_threads(),
    }
    if on_gpu:
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def run_child(spec: dict, timeout: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
    return {"error": f"child exited {completed.returncode}: {' / '.join(tail)}"}


# ----------------------------------------------------------------------------------------------
# The parent: write adapters, run the points, print the tables


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--adapter-counts", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--hidden-main", type=int, default=4096)
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--adapters-main", type=int, default=8)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--out-rank", type=int, default=16)
    parser.add_argument("--method", default="ties")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--budget-s", type=float, default=60.0, help="stop a merge after this long and extrapolate")
    parser.add_argument("--mem-limit-gb", type=float, default=12.0, help="address-space cap of each merge's process")
    parser.add_argument("--workdir", type=Path, default=None, help="where the adapters are written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the written adapters")
    parser.add_argument("--target-s", type=float, default=60.0)
    parser.add_argument("--target-gb", type=float, default=3.0)
    parser.add_argument("--child", default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.child is not None:
        print(RESULT_TAG + json.dumps(child(json.loads(args.child))), flush=True)
        return {}
    if args.tiny:
        args.adapter_counts, args.hidden_sizes, args.hidden_main, args.adapters_main = [3], [64, 128], 128, 3
        args.layers, args.rank, args.out_rank, args.budget_s = 2, 4, 4, 0
    setup(args)

    points = [(n, args.hidden_main) for n in args.adapter_counts]
    points += [(args.adapters_main, d) for d in sorted(args.hidden_sizes) if (args.adapters_main, d) not in points]
    needed: dict[int, int] = {}
    for n, d in points:
        needed[d] = max(needed.get(d, 0), n)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mergescope-scale-"))
    rows = []
    try:
        folders: dict[int, list[str]] = {}
        sizes: dict[int, int] = {}
        for d, count in sorted(needed.items()):
            folders[d] = []
            for i in range(count):
                folder = workdir / f"d{d}" / f"adapter{i}"
                if not (folder / "adapter_model.safetensors").is_file():
                    sizes[d] = write_adapter(folder, d, args.layers, args.rank, seed=1000 * d + i)
                else:
                    sizes[d] = (folder / "adapter_model.safetensors").stat().st_size
                folders[d].append(str(folder))
            print(f"wrote {count} adapters of d={d} ({sizes[d] / 1e6:.0f} MB each) in {workdir}", flush=True)
        for n, d in points:
            spec = {
                "folders": folders[d][:n],
                "method": args.method,
                "density": args.density,
                "out_rank": args.out_rank,
                "device": args.device,
                "budget_s": args.budget_s,
                "mem_limit_gb": args.mem_limit_gb,
                "threads": args.threads,
            }
            load_before = loadavg()
            result = run_child(spec, timeout=max(600.0, 4 * (args.budget_s or 0)))
            row = {"adapters": n, "hidden": d, "adapter_mb": sizes[d] / 1e6, "load_before": load_before, **result}
            if not result.get("error") and result["modules_total"]:
                row["complete"] = result["modules_done"] >= result["modules_total"]
                row["merge_total_s"] = result["merge_s"] / max(result["modules_done"], 1) * result["modules_total"]
                row["total_s"] = result["load_s"] + row["merge_total_s"]
                row["per_module_s"] = row["merge_total_s"] / result["modules_total"]
            rows.append(row)
            if row.get("error"):
                line = row["error"]
            else:
                partial = "" if row["complete"] else f" (extrapolated from {row['modules_done']}/{row['modules_total']})"
                line = (
                    f"load {row['load_s']:.1f}s merge {row['merge_total_s']:.1f}s{partial} "
                    f"peak RSS {row['peak_rss_bytes'] / 1e9:.2f} GB  load avg {row['loadavg']}"
                )
            print(f"n={n:>2} d={d:>5}: {line}", flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    def table_rows(selected):
        out = []
        for r in selected:
            if r.get("error"):
                gpu = [None] if on_gpu else []
                out.append([r["adapters"], r["hidden"], None, None, None, None, None, *gpu, r["error"],
                            max(r["load_before"][0], 0)])
                continue
            measured = "all" if r["complete"] else f"{r['modules_done']}/{r['modules_total']} (extrapolated)"
            gpu = [r.get("cuda_peak_bytes", 0) / 1e9] if on_gpu else []
            out.append(
                [r["adapters"], r["hidden"], r["load_s"], r["merge_total_s"], r["total_s"], r["per_module_s"],
                 r["peak_rss_bytes"] / 1e9, *gpu, measured, max(r["load_before"][0], r["loadavg"][0])]
            )
        return out

    on_gpu = args.device.startswith("cuda")
    headers = ["adapters", "d", "load (s)", "merge (s)", "load + merge (s)", "per module (s)", "peak RSS (GB)",
               *(["peak GPU memory (GB)"] if on_gpu else []), "modules measured", "load (1 min)"]
    caption = (
        f"{args.method.upper()} (density {args.density}) of rank-{args.rank} adapters on q, k, v, o ({args.layers} "
        f"layers, {4 * args.layers} modules), truncated to rank {args.out_rank}; device {args.device}. One child "
        f"process per merge; peak RSS is that process's ru_maxrss (Python, torch and the loaded adapters included)"
        + ("; peak GPU memory is torch.cuda.max_memory_allocated (adapters are loaded on the CPU and moved module "
           "by module)." if on_gpu else ".")
    )
    notes = []
    if args.budget_s:
        notes.append(
            f"a merge still running after {args.budget_s:g} s is stopped at a module boundary and its merge time "
            "extrapolated from the modules done (all modules have the same shape and cost)."
        )
    tables = [
        {
            "title": f"Adapters: 2 → 16 at d = {args.hidden_main}",
            "caption": caption,
            "headers": headers,
            "rows": table_rows([r for r in rows if r["hidden"] == args.hidden_main and r["adapters"] in args.adapter_counts]),
            "notes": notes,
        },
        {
            "title": f"Hidden size at {args.adapters_main} adapters",
            "caption": caption,
            "headers": headers,
            "rows": table_rows(sorted(
                (r for r in rows if r["adapters"] == args.adapters_main and r["hidden"] in args.hidden_sizes),
                key=lambda r: r["hidden"],
            )),
            "notes": notes,
        },
    ]
    targets = []
    main_row = next((r for r in rows if r["adapters"] == args.adapters_main and r["hidden"] == args.hidden_main), None)
    if main_row is not None and not args.tiny:
        if main_row.get("error"):
            targets.append(target("time", f"≤ {args.target_s:g} s", main_row["error"], False))
        else:
            label = "" if main_row["complete"] else " (extrapolated)"
            targets.append(
                target(
                    f"{args.adapters_main} adapters, d={args.hidden_main}, {4 * args.layers} modules: load + merge",
                    f"≤ {args.target_s:g} s",
                    f"{main_row['total_s']:.1f} s{label}",
                    bool(main_row["total_s"] <= args.target_s),
                )
            )
            targets.append(
                target(
                    f"{args.adapters_main} adapters, d={args.hidden_main}: peak RSS",
                    f"≤ {args.target_gb:g} GB",
                    f"{main_row['peak_rss_bytes'] / 1e9:.2f} GB",
                    bool(main_row["peak_rss_bytes"] / 1e9 <= args.target_gb),
                )
            )
    args.child = None
    return finish("scale", args, tables, targets, {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}})


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
