"""mergescope vs mergekit: the same TIES merge into a full model, whole process, idle and busy.

The job (issue 21): TIES (density 0.5, weights 1.0, mergekit's `normalize: true`) of 4 PEFT LoRA
adapters (rank 16 on q, k, v, o) into a 134M-parameter Llama in float32, full-model output, CPU.
The program builds everything itself: a Llama config scaled to ~134M parameters (hidden 768, 12
layers, MLP 2048, vocabulary 32000) with seeded random weights, and 4 seeded PEFT adapters.

Each run is a whole process under `/usr/bin/time -v` (wall clock and peak resident set size, imports
and all): `python -m merging merge RECIPE --full-model` (and the PEFT-adapter output for
reference), and mergekit 0.1.5's `mergekit-yaml CONFIG --lazy-unpickle` with a fresh LoRA cache
each time. The tools run in interleaved repeats (a, b, c, a, b, c), so a change in the machine's
load touches both. "busy" repeats the runs while `--busy-procs` other processes each run
`--busy-threads`-thread torch matmuls in a loop (a laptop with a notebook open).

mergekit lives in its own virtualenv outside the repository (`--mergekit-venv`, default
~/.cache/mergescope-bench/mergekit-venv; `--install` creates it: `pip install mergekit==0.1.5
torch==2.13.0`). Without it (or with `--tiny`, the smoke size) the mergekit rows are left out and
the output says why. Each full model is also checked against a float64 TIES computed here.

    .venv/bin/python bench/mergekit_compare.py                 # idle and busy, 2 repeats
    .venv/bin/python bench/mergekit_compare.py --install       # create mergekit's venv first
    .venv/bin/python bench/mergekit_compare.py --tiny          # smoke test, no mergekit
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import base_parser, finish, loadavg, setup, target, tiny_models

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
DEFAULT_VENV = Path.home() / ".cache" / "mergescope-bench" / "mergekit-venv"
MERGEKIT_PIN = ("mergekit==0.1.5", "torch==2.13.0")
BUSY = (
    "import torch, sys\n"
    "torch.set_num_threads(int(sys.argv[1]))\n"
    "a = torch.randn(768, 768)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)


# ----------------------------------------------------------------------------------------------
# The models


def llama_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    return LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=False)


def build(workdir: Path, tiny: bool, adapters: int, rank: int) -> tuple[Path, list[Path], int]:
    """The base model folder and the adapters' folders (written once; reused when present)."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    builders = tiny_models()
    save_model_folder, tiny_causal_tokenizer = builders.save_model_folder, builders.tiny_causal_tokenizer

    base = workdir / "base"
    config = llama_config(tiny)
    if not (base / "config.json").is_file():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        save_model_folder(model, tiny_causal_tokenizer(), base)
        del model
    parameters = _parameters(config)
    folders = []
    for i in range(adapters):
        folder = workdir / f"adapter{i}"
        folders.append(folder)
        if (folder / "adapter_model.safetensors").is_file():
            continue
        generator = torch.Generator().manual_seed(100 + i)
        state = {}
        for layer in range(config.num_hidden_layers):
            for projection in PROJECTIONS:
                d_out = config.hidden_size if projection in ("q_proj", "o_proj") else (
                    config.num_key_value_heads * (config.hidden_size // config.num_attention_heads))
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{projection}"
                state[f"{prefix}.lora_A.weight"] = torch.randn(rank, config.hidden_size, generator=generator) / config.hidden_size**0.5
                state[f"{prefix}.lora_B.weight"] = torch.randn(d_out, rank, generator=generator) * 0.01
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(PROJECTIONS), lora_dropout=0.0,
                   task_type="CAUSAL_LM", base_model_name_or_path=str(base)).save_pretrained(str(folder))
        save_file(state, str(folder / "adapter_model.safetensors"))
    return base, folders, parameters


def _parameters(config) -> int:
    h, m, v, n = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    return 2 * v * h + n * (2 * h * h + 2 * h * kv + 3 * h * m + 2 * h) + h


def write_configs(workdir: Path, base: Path, folders: list[Path], density: float) -> tuple[Path, Path]:
    recipe = {
        "adapters": [{"path": str(f), "name": f"a{i}", "weight": 1.0} for i, f in enumerate(folders)],
        "method": "ties", "density": density, "base_model": str(base), "seed": 0, "device": "cpu",
    }
    recipe_path = workdir / "recipe.json"
    recipe_path.write_text(json.dumps(recipe, indent=1), encoding="utf-8")
    lines = ["merge_method: ties", f"base_model: {base}", "parameters:", "  normalize: true", "dtype: float32", "models:"]
    for folder in folders:
        lines += [f"  - model: {base}+{folder}", "    parameters:", f"      density: {density}", "      weight: 1.0"]
    yaml_path = workdir / "mergekit.yml"
    yaml_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return recipe_path, yaml_path


# ----------------------------------------------------------------------------------------------
# Running a whole process under /usr/bin/time -v


def time_v(command: list[str], env: dict, timeout: float) -> dict:
    """Wall clock and peak RSS of a whole process (GNU time's -v report), and its load average."""
    load_before = loadavg()
    start = time.perf_counter()
    completed = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env,
                               timeout=timeout, check=False)
    wall = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", completed.stderr)
    result = {"wall_s": wall, "peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None,
              "load_before": load_before, "load_after": loadavg(), "exit": completed.returncode}
    if completed.returncode != 0:
        result["error"] = (completed.stderr.strip().splitlines() or ["?"])[-12:]
    return result


def tool_commands(args, workdir: Path, recipe: Path, yaml_path: Path, venv: Path | None) -> dict[str, tuple[str, list[str]]]:
    """name → (output, command); each writes into workdir/out-NAME (replaced every run)."""
    python = sys.executable
    tools = {
        "mergescope": ("full model", [python, "-m", "merging", "merge", str(recipe), "--out", str(workdir / "out-mergescope"),
                                      "--full-model", "--overwrite"]),
    }
    if not args.tiny:
        tools["mergescope (PEFT)"] = ("PEFT adapter", [python, "-m", "merging", "merge", str(recipe), "--out",
                                                       str(workdir / "out-mergescope (PEFT)"), "--overwrite"])
    if args.baseline is not None:
        tools["baseline"] = ("full model", ["env", f"PYTHONPATH={args.baseline.resolve()}", python, "-P",  # -P: not the cwd's copy
                                            *tools["mergescope"][1][1:5], "--out",
                                            str(workdir / "out-baseline"), "--full-model", "--overwrite"])
    if venv is not None:
        tools["mergekit"] = ("full model", [str(venv / "bin" / "mergekit-yaml"), str(yaml_path), str(workdir / "out-mergekit"),
                                            "--lazy-unpickle", "--lora-merge-cache", str(workdir / "lora-cache"), "--quiet",
                                            "--no-write-model-card"])
    return tools


def _fresh(workdir: Path, name: str) -> None:
    shutil.rmtree(workdir / f"out-{name}", ignore_errors=True)
    if name == "mergekit":
        shutil.rmtree(workdir / "lora-cache", ignore_errors=True)  # mergekit caches the LoRA-applied models


def start_busy(count: int, threads: int) -> list[subprocess.Popen]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return [subprocess.Popen([sys.executable, "-c", BUSY, str(threads)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(count)]


def stop_busy(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# ----------------------------------------------------------------------------------------------
# Exactness: each full model against a float64 TIES (trim, elect the sign of the sum, disjoint mean)


def ties64(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    trimmed = []
    for delta in deltas:
        k = int(density * delta.numel())
        flat = delta.reshape(-1)
        keep = torch.zeros(flat.shape, dtype=torch.bool)
        keep[torch.topk(flat.abs(), k).indices] = True
        trimmed.append(torch.where(keep, flat, 0.0).reshape(delta.shape))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
    agree = stacked * sign > 0
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


def exactness(out: Path, base: Path, folders: list[Path], density: float) -> dict:
    """Max |W' − W64'| over the updated weights, and how many entries are off by more than 1e-4·max|ΔW|."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        found = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (a safe_open handle)
                    found[key] = (path, key)
        return found

    base_index, out_index = tensors(base), tensors(out)
    adapters = [load_file(str(f / "adapter_model.safetensors")) for f in folders]
    scale = 2.0  # lora_alpha / r
    worst, wrong, entries = 0.0, 0, 0
    for key in adapters[0]:
        if not key.endswith("lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        deltas = [scale * (a[f"base_model.model.{module}.lora_B.weight"].double() @ a[key].double()) for a in adapters]
        merged = ties64(deltas, density)
        name = f"{module}.weight"
        with safe_open(str(base_index[name][0]), "pt") as handle:
            reference = handle.get_tensor(name).double() + merged
        with safe_open(str(out_index[name][0]), "pt") as handle:
            written = handle.get_tensor(name).double()
        error = (written - reference).abs()
        worst = max(worst, float(error.max()))
        wrong += int((error > 1e-4 * float(merged.abs().max())).sum())
        entries += error.numel()
    return {"max_abs_error": worst, "entries_off": wrong, "entries": entries}


# ----------------------------------------------------------------------------------------------


def mergekit_venv(args) -> tuple[Path | None, str]:
    """mergekit's own virtualenv, or None and why not."""
    if args.tiny:
        return None, "--tiny (the smoke size) runs mergescope alone; mergekit is measured at full size only"
    if args.no_mergekit:
        return None, "--no-mergekit"
    venv = args.mergekit_venv
    if not (venv / "bin" / "mergekit-yaml").is_file():
        if not args.install:
            return None, f"mergekit is not installed in {venv} (run with --install to create it)"
        print(f"creating {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        completed = subprocess.run([str(venv / "bin" / "pip"), "install", *MERGEKIT_PIN], check=False)
        if completed.returncode != 0 or not (venv / "bin" / "mergekit-yaml").is_file():
            return None, f"pip install {' '.join(MERGEKIT_PIN)} failed (exit {completed.returncode})"
    return venv, ""


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per scenario")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--scenarios", nargs="+", choices=["idle", "busy"], default=["idle", "busy"])
    parser.add_argument("--busy-procs", type=int, default=2, help="other processes running in the busy scenario")
    parser.add_argument("--busy-threads", type=int, default=2, help="torch threads of each busy process")
    parser.add_argument("--mergekit-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--install", action="store_true", help="create mergekit's venv when it is missing")
    parser.add_argument("--no-mergekit", action="store_true", help="measure mergescope alone")
    parser.add_argument("--tools", nargs="+", choices=["mergescope", "mergescope (PEFT)", "mergekit", "baseline"],
                        default=None, help="which runs (default: all that are available)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a folder holding another copy of merging/ (e.g. `git archive REV merging | tar -x -C DIR`): "
                             "its full-model run is the 'baseline' row")
    parser.add_argument("--workdir", type=Path, default=None, help="where models and outputs go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed per run")
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.scenarios, args.rank = 1, ["idle"], 4
    setup(args)
    venv, why_not = mergekit_venv(args)
    if why_not:
        print(f"mergekit column left out: {why_not}", flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mergescope-vs-mergekit-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import merging

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(Path(merging.__file__).resolve().parent.parent),
                                           *filter(None, [os.environ.get("PYTHONPATH")])]))
    # each tool runs with its own default threads (what a user gets): --threads sets this process's only
    env.pop("OMP_NUM_THREADS", None)
    rows, runs, checks = [], [], {}
    try:
        base, folders, parameters = build(workdir, args.tiny, args.adapters, args.rank)
        recipe, yaml_path = write_configs(workdir, base, folders, args.density)
        tools = tool_commands(args, workdir, recipe, yaml_path, venv)
        if args.tools:
            tools = {name: spec for name, spec in tools.items() if name in args.tools}
        print(f"base: {parameters / 1e6:.1f}M parameters in {base}; {len(folders)} adapters", flush=True)
        for scenario in args.scenarios:
            busy = start_busy(args.busy_procs, args.busy_threads) if scenario == "busy" else []
            try:
                if busy:
                    time.sleep(3)
                for repeat in range(args.repeats):
                    for name, (output, command) in tools.items():
                        _fresh(workdir, name)
                        run = {"scenario": scenario, "tool": name, "output": output, "repeat": repeat,
                               **time_v(command, env, args.timeout)}
                        runs.append(run)
                        rss = (run["peak_rss_bytes"] or 0) / 2**30
                        print(f"{scenario:>4} #{repeat} {name:<18} {run['wall_s']:7.2f} s  {rss:.2f} GiB  "
                              f"load {run['load_before'][0]}→{run['load_after'][0]}"
                              + (f"  FAILED: {run['error'][-1]}" if run.get("error") else ""), flush=True)
                        if output == "full model" and not run.get("error") and name not in checks:
                            checks[name] = exactness(workdir / f"out-{name}", base, folders, args.density)
            finally:
                stop_busy(busy)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    def median(name: str, scenario: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["tool"] == name and r["scenario"] == scenario and not r.get("error")]
        return statistics.median(values) if values else None

    for scenario in args.scenarios:
        for name, (output, _) in tools.items():
            mine = [r for r in runs if r["tool"] == name and r["scenario"] == scenario]
            ok = [r for r in mine if not r.get("error")]
            idle = median(name, "idle", "wall_s")
            wall = median(name, scenario, "wall_s")
            check = checks.get(name, {})
            rows.append([
                scenario, name, output, wall, ", ".join(f"{r['wall_s']:.1f}" for r in ok) or "failed",
                max((r["peak_rss_bytes"] or 0) for r in ok) / 2**30 if ok else None,
                (wall / idle) if (wall and idle and scenario != "idle") else None,
                check.get("max_abs_error"), check.get("entries_off"),
                ", ".join(f"{r['load_before'][0]:.1f}→{r['load_after'][0]:.1f}" for r in mine),
            ])
    headers = ["scenario", "tool", "output", "wall (s, median)", "each run (s)", "peak RSS (GiB, max)", "× idle",
               "max error vs float64", "entries off", "load (1 min) before→after"]
    caption = (
        f"TIES (density {args.density}, weights 1.0, normalize) of {args.adapters} PEFT LoRA adapters (r {args.rank} on "
        f"q, k, v, o) into a {parameters / 1e6:.3g}M-parameter Llama in float32, CPU. Whole process under "
        f"`/usr/bin/time -v` (imports included), each tool with its default threads, {args.repeats} interleaved repeats per scenario; busy: "
        f"{args.busy_procs} other processes of {args.busy_threads}-thread torch matmuls running. Exactness of each full "
        "model against a float64 TIES computed by the benchmark: the largest weight error, and the entries off by "
        "more than 1e-4·max|ΔW| (of "
        f"{next(iter(checks.values()))['entries'] if checks else '?'})."
    )
    notes = [f"mergekit left out: {why_not}"] if why_not else []
    tables = [{"title": "mergescope vs mergekit 0.1.5, full-model TIES", "caption": caption, "headers": headers,
               "rows": rows, "notes": notes}]
    targets = []
    ours_idle, theirs_idle = median("mergescope", "idle", "wall_s"), median("mergekit", "idle", "wall_s")
    ours_rss = max((r["peak_rss_bytes"] or 0) for r in runs if r["tool"] == "mergescope" and not r.get("error")) if any(
        r["tool"] == "mergescope" and not r.get("error") for r in runs) else None
    theirs_rss = max((r["peak_rss_bytes"] or 0 for r in runs if r["tool"] == "mergekit" and not r.get("error")), default=None)
    if ours_idle and theirs_idle:
        targets.append(target("full model, idle: mergekit's wall / mergescope's", "≥ 3×", f"{theirs_idle / ours_idle:.1f}×",
                              theirs_idle / ours_idle >= 3))
    if ours_rss and theirs_rss:
        targets.append(target("full model: mergescope's peak RSS / mergekit's", "≤ 1/5 (0.20)", f"{ours_rss / theirs_rss:.2f}",
                              ours_rss / theirs_rss <= 0.2))
    ours_busy = median("mergescope", "busy", "wall_s")
    if ours_idle and ours_busy:
        targets.append(target("mergescope full model: busy / idle wall", "≤ 4×", f"{ours_busy / ours_idle:.1f}×",
                              ours_busy / ours_idle <= 4))
    return finish("mergekit_compare", args, tables, targets,
                  {"runs": runs, "checks": checks, "mergekit": str(venv) if venv else None, "why_not": why_not,
                   "parameters": parameters})


if __name__ == "__main__":
    main()
