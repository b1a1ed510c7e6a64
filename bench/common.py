"""Shared pieces of the benchmark programs: machine description, timing, tables, JSON output.

A benchmark is a program that prints measured figures (markdown tables) and, with ``--json PATH``,
writes the same figures as JSON; ``bench/run_all.py`` renders docs/BENCHMARKS.md from that JSON with
the same table code, so every number in the document is one the program printed.

The machine may be shared: every measurement records ``os.getloadavg()`` next to it, and timings are
the minimum (and median) of a few repeats, the usual estimator on a noisy machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The library under test: the repository's `merging/`, unless another copy comes first on
# PYTHONPATH (how a patched copy is measured against the same benchmark programs).
if importlib.util.find_spec("merging") is None:
    sys.path.append(str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402 - after the path and offline settings above, on purpose


def tiny_models():
    """The tests' tiny model builders (one set, tests/tiny_models.py), read by path: `tests` is not a
    package on sys.path when the library comes from an install."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mergescope_tiny_models", ROOT / "tests" / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (recorded with every measurement)."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def lapack_probe_ms() -> float:
    """Median time of a 128×128 SVD, in ms: a few ms on a healthy machine, hundreds when OpenMP's
    spinning threads fight other processes for the cores (see docs/BENCHMARKS.md)."""
    matrix = torch.randn(128, 128, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        torch.linalg.svd(matrix, full_matrices=False)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def library_info() -> dict:
    import merging

    folder = Path(merging.__file__).resolve().parent
    try:
        shown = str(folder.relative_to(ROOT))
    except ValueError:
        shown = str(folder)
    # a copy of the tree on a rented GPU machine may carry a stale .git: the environment says which commit runs
    commit = os.environ.get("MERGESCOPE_COMMIT")
    try:
        commit = commit or subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"merging": shown, "commit": commit}


def machine_info(device: str = "cpu") -> dict:
    """What ran the benchmark: CPU model, cores, torch threads, load, and the GPU's name if one ran it."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "device_name": cpu_model(),
        "loadavg": loadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "svd128_ms": lapack_probe_ms(),
        **library_info(),
    }
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    return info


def check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA GPU is available here")
    return device


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int, device: str = "cpu", setup: Callable[[], Any] | None = None) -> dict:
    """Run `fn` `repeats` times; return min/median seconds, each run's time and load, and the last result."""
    times, loads, result = [], [], None
    for _ in range(max(1, repeats)):
        if setup is not None:
            setup()
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
        loads.append(loadavg()[0])
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "times_s": times,
        "load1": loads,
        "result": result,
    }


def rel_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """‖ours − theirs‖_F / ‖theirs‖_F in float64."""
    ours, theirs = ours.double().cpu(), theirs.double().cpu()
    denominator = float(torch.linalg.matrix_norm(theirs))
    return float(torch.linalg.matrix_norm(ours - theirs)) / (denominator if denominator > 0 else 1.0)


# ----------------------------------------------------------------------------------------------
# Output


def fmt(value: Any) -> str:
    """How a number is shown in a table (the same in the program's output and in the document)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.1e}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(cell) for cell in row) + " |")
    return "\n".join(lines)


def render(result: dict, heading_level: int = 3) -> str:
    """A benchmark's tables, targets and notes as markdown (printed, and pasted into the document)."""
    hashes = "#" * heading_level
    parts = []
    for table in result.get("tables", []):
        parts.append(f"{hashes} {table['title']}\n")
        if table.get("caption"):
            parts.append(table["caption"] + "\n")
        parts.append(markdown_table(table["headers"], table["rows"]) + "\n")
        for note in table.get("notes", []):
            parts.append(f"- {note}")
        if table.get("notes"):
            parts.append("")
    targets = result.get("targets", [])
    if targets:
        parts.append(f"{hashes} Targets\n")
        parts.append(
            markdown_table(
                ["target", "goal", "measured", "met"],
                [[t["name"], t["goal"], t["measured"], t["met"]] for t in targets],
            )
            + "\n"
        )
    return "\n".join(parts)


def target(name: str, goal: str, measured: Any, met: bool | None) -> dict:
    return {"name": name, "goal": goal, "measured": measured, "met": met}


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true", help="smallest sizes: a smoke test (what CI runs)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser


def setup(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(args.device)


def finish(name: str, args: argparse.Namespace, tables: list[dict], targets: list[dict], data: dict) -> dict:
    """Print the tables and write the JSON; return the result (for callers that run in-process)."""
    result = {
        "benchmark": name,
        "command": " ".join(["python", *_command_args(sys.argv)]),
        "machine": machine_info(args.device),
        "tables": tables,
        "targets": targets,
        "data": data,
    }
    print(render(result))
    print(f"machine: {json.dumps(result['machine'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return result


def _command_args(argv: list[str]) -> list[str]:
    """argv without --json PATH (where the figures went is not how they were made)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--json":
            skip = True
            continue
        if arg.startswith("--json="):
            continue
        out.append(_rel(arg))
    return out


def _rel(arg: str) -> str:
    try:
        return str(Path(arg).resolve().relative_to(ROOT)) if Path(arg).exists() else arg
    except ValueError:
        return arg
