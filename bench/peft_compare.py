"""mergescope against PEFT's add_weighted_adapter: same adapters, same process, same result?

For each hidden size d, a model of `--layers` blocks with four d×d projections (k, o, q, v) carries
`--adapters` LoRA adapters of rank `--rank` with seeded random factors, loaded into PEFT. The same
factors, as mergescope Adapters, are merged by `merge_adapters`; PEFT merges them with
`add_weighted_adapter`. Both truncate to rank `--out-rank`.

    ours                                   PEFT
    task_arithmetic, rank=k (factored)     combination_type="svd"
    ties, density ρ, rank=k                combination_type="ties_svd"
    dare_ties, density ρ, rank=k           combination_type="dare_ties_svd"

Reported: the time of each (minimum over `--repeats`), the ratio PEFT / ours, and the relative error
max over modules of ‖ΔW_ours − ΔW_PEFT‖_F / ‖ΔW_PEFT‖_F.

TIES and DARE-TIES use equal weights: PEFT elects the sign before weighting and mergescope after,
which agree when the weights are equal and positive. DARE draws random masks; PEFT draws them with
the global RNG, mergescope with a seeded generator, so for the *error* column PEFT is run once more
with its `random_pruning` replaced by one that draws mergescope's masks (same generator, same module
and adapter order); the *time* column is PEFT's own code, unpatched.

    .venv/bin/python bench/peft_compare.py            # d = 1024 and 2048, 6 adapters, r = 16
    .venv/bin/python bench/peft_compare.py --tiny     # smoke test
"""

from __future__ import annotations

import gc
import time

import torch
from common import base_parser, finish, loadavg, rel_error, setup, sync, target, timed
from torch import nn

PROJECTIONS = ("k_proj", "o_proj", "q_proj", "v_proj")  # defined in sorted order: PEFT's and our module order agree

METHODS = [
    # (ours, PEFT's combination_type, uses density, goal ratio)
    ("task_arithmetic", "svd", False, 10.0),
    ("ties", "ties_svd", True, 2.0),
    ("dare_ties", "dare_ties_svd", True, 2.0),
]


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        for name in PROJECTIONS:
            setattr(self, name, nn.Linear(d, d, bias=False))


class Stack(nn.Module):
    def __init__(self, d: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(layers))

    def forward(self, x):
        for block in self.layers:
            for name in PROJECTIONS:
                x = getattr(block, name)(x)
        return x


def build_peft_model(d: int, layers: int, adapters: int, rank: int, alpha: float, seed: int, device: str):
    """A PeftModel with `adapters` LoRA adapters a0..a{n-1} whose factors are seeded noise."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = Stack(d, layers)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(PROJECTIONS), init_lora_weights=False, lora_dropout=0.0
    )
    model = get_peft_model(base, config, adapter_name="a0")
    for index in range(1, adapters):
        model.add_adapter(f"a{index}", config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if ".lora_A." in name:
                param.copy_(torch.randn(param.shape, generator=generator) / d**0.5)
            elif ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.to(device).eval()


def lora_layers(model) -> dict[str, nn.Module]:
    """PEFT's LoRA layers by the base model's module name."""
    prefix = "base_model.model."
    return {
        name[len(prefix):]: module
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and isinstance(getattr(module, "scaling", None), dict)
    }


def ours_from_peft(model, names: list[str]):
    from merging.adapters.lora import Adapter, LoraModule

    layers = lora_layers(model)
    return [
        Adapter(
            name,
            {
                module_name: LoraModule(
                    layer.lora_A[name].weight.detach().clone(),
                    layer.lora_B[name].weight.detach().clone(),
                    float(layer.scaling[name]),
                )
                for module_name, layer in layers.items()
                if name in layer.lora_A
            },
        )
        for name in names
    ]


def recipe_for(names, weights, method, density, out_rank, seed, device):
    from merging.recipe.codec import recipe_from_dict

    return recipe_from_dict(
        {
            "adapters": [{"path": n, "name": n, "weight": w} for n, w in zip(names, weights)],
            "method": method,
            "density": density,
            "rank": out_rank,
            "seed": seed,
            "device": "cuda" if device.startswith("cuda") else device,
        }
    )


class MatchedMasks:
    """Replace PEFT's random_pruning with one that draws mergescope's DARE masks, in the same order."""

    def __init__(self, seed: int, device: str):
        from peft.utils import merge_utils

        self.merge_utils = merge_utils
        self.original = merge_utils.random_pruning
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __enter__(self):
        generator = self.generator

        def random_pruning(tensor, density, rescale):
            keep = torch.rand(tensor.shape, generator=generator, device=generator.device) < density
            return torch.where(keep.to(tensor.device), tensor / density if rescale else tensor, torch.zeros_like(tensor))

        self.merge_utils.random_pruning = random_pruning
        return self

    def __exit__(self, *exc):
        self.merge_utils.random_pruning = self.original


def peft_merge(model, names, weights, combination, out_rank, density, merged_name):
    kwargs = {"density": density} if density is not None else {}
    with torch.no_grad():
        model.add_weighted_adapter(names, weights, merged_name, combination_type=combination, svd_rank=out_rank, **kwargs)


def peft_deltas(model, merged_name) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            name: layer.get_delta_weight(merged_name).detach().float().cpu()
            for name, layer in lora_layers(model).items()
            if merged_name in layer.lora_A
        }


def run_size(args, d: int) -> list[dict]:
    from merging.engine.merge import merge_adapters

    device = args.device
    names = [f"a{i}" for i in range(args.adapters)]
    model = build_peft_model(d, args.layers, args.adapters, args.rank, args.alpha, args.seed, device)
    adapters = ours_from_peft(model, names)
    modules = len(adapters[0].modules)
    rows = []
    for ours, theirs, uses_density, goal in METHODS:
        if ours not in args.methods:
            continue
        density = args.density if uses_density else None
        # task arithmetic: unequal weights; TIES/DARE: equal weights (see the module docstring)
        weights = [round(1.0 - 0.1 * i, 2) for i in range(args.adapters)] if not uses_density else [0.5] * args.adapters
        recipe = recipe_for(names, weights, ours, density or 1.0, args.out_rank, args.seed, device)
        load_before = loadavg()[0]
        ours_timing = timed(lambda recipe=recipe: merge_adapters(adapters, recipe), args.repeats, device)
        merged = ours_timing.pop("result")
        counter = iter(range(10**6))

        def theirs_once(theirs=theirs, counter=counter, weights=weights, density=density):
            name = f"peft_{theirs}_{next(counter)}"
            peft_merge(model, names, weights, theirs, args.out_rank, density, name)
            return name

        def forget(name):
            model.delete_adapter(name)
            gc.collect()

        theirs_timing = {"times_s": [], "load1": []}
        last = None
        for _ in range(args.peft_repeats):
            if last is not None:
                forget(last)
            sync(device)
            start = time.perf_counter()
            last = theirs_once()
            sync(device)
            theirs_timing["times_s"].append(time.perf_counter() - start)
            theirs_timing["load1"].append(loadavg()[0])
        if ours.startswith("dare"):
            forget(last)
            with MatchedMasks(args.seed, "cuda" if device.startswith("cuda") else "cpu"):
                last = theirs_once()
        reference = peft_deltas(model, last)
        forget(last)
        errors = [rel_error(merged.adapter.modules[m].delta(), reference[m]) for m in reference]
        ours_s = ours_timing["min_s"]
        theirs_s = min(theirs_timing["times_s"])
        paths = sorted({r.path for r in merged.reports.values()})
        rows.append(
            {
                "hidden": d,
                "adapters": args.adapters,
                "rank": args.rank,
                "modules": modules,
                "ours": ours,
                "peft": theirs,
                "path": "/".join(paths),
                "ours_s": ours_s,
                "ours_times_s": ours_timing["times_s"],
                "peft_s": theirs_s,
                "peft_times_s": theirs_timing["times_s"],
                "ratio": theirs_s / ours_s,
                "goal": goal,
                "max_rel_error": max(errors),
                "load1": [load_before, *ours_timing["load1"], *theirs_timing["load1"]],
            }
        )
        print(
            f"d={d} {ours:>15} {ours_s:8.3f}s  PEFT {theirs:>13} {theirs_s:8.3f}s  ×{theirs_s / ours_s:6.1f}  "
            f"rel.err {max(errors):.1e}  load {loadavg()}",
            flush=True,
        )
    return rows


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32)
    parser.add_argument("--out-rank", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2, help="blocks of four d×d projections (k, o, q, v)")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2, help="runs of our merge (the minimum is reported)")
    parser.add_argument("--peft-repeats", type=int, default=1, help="runs of PEFT's (slow) merge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS], choices=[m[0] for m in METHODS])
    args = parser.parse_args(argv)
    if args.tiny:
        args.hidden, args.adapters, args.rank, args.out_rank, args.layers = [64], 3, 4, 4, 1
        args.repeats = args.peft_repeats = 1
    setup(args)
    rows = [row for d in args.hidden for row in run_size(args, d)]
    table = {
        "title": "mergescope vs PEFT add_weighted_adapter",
        "caption": (
            f"{args.adapters} adapters of rank {args.rank}, {args.layers} blocks × 4 projections (d×d), "
            f"merged and truncated to rank {args.out_rank}; TIES/DARE density {args.density}, equal weights. "
            f"Time: minimum of {args.repeats} runs (ours) and {args.peft_repeats} (PEFT), device {args.device}."
        ),
        "headers": [
            "d", "modules", "ours", "PEFT", "our path", "ours (s)", "PEFT (s)", "PEFT / ours", "max rel. error",
            "load (1 min)",
        ],
        "rows": [
            [r["hidden"], r["modules"], r["ours"], r["peft"], r["path"], r["ours_s"], r["peft_s"], r["ratio"],
             r["max_rel_error"], max(r["load1"])]
            for r in rows
        ],
        "notes": [
            (
                "relative error: max over modules of ‖ΔW_ours − ΔW_PEFT‖_F / ‖ΔW_PEFT‖_F; for DARE-TIES PEFT is "
                "rerun with mergescope's masks (its time is that of its own, unpatched code)."
            ),
            "load: highest 1-minute load average seen during the row's runs.",
        ],
    }
    targets = [
        target(
            f"{r['ours']} vs PEFT {r['peft']}, d={r['hidden']}",
            f"≥ {r['goal']:g}× faster, same result",
            f"{r['ratio']:.1f}×, rel. err {r['max_rel_error']:.1e}",
            bool(r["ratio"] >= r["goal"] and r["max_rel_error"] < 1e-3),
        )
        for r in rows
    ] if not args.tiny else []
    return finish("peft_compare", args, [table], targets, {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}})


if __name__ == "__main__":
    main()
