"""Measure the demo's claims over every shipped training seed and write zoo/seed_study.json.

    .venv/bin/python scripts/seed_study.py [--zoo zoo] [--full-finetune docs/full_finetune.json]

For the shipped zoo and each zoo/seeds/N (same tasks and split, other training seeds): singles and
headline merges of standard, gaussian and OSRM adapters, the per-task "why" measures and every pair's
magnitude variance against its merged accuracy (merging.analysis.seed_study); for the shipped zoo also where
OSRM's effect comes from (merging.analysis.osrm_effect: captured energy share and input-subspace overlap at
initialisation and after training, every kind) and DO-Merging's claim (b): the magnitude variance
across tasks of LoRA updates against full fine-tuning's (from scripts/full_finetune.py's JSON).
The Tour, the Interference page and scripts/findings.py read the JSON; load_study refuses it when a
zoo changed after it was measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from merging.analysis.osrm_effect import zoo_effect_report  # noqa: E402
from merging.analysis.seed_study import (  # noqa: E402
    STUDY_FILE,
    magnitude_cv,
    magnitude_variance_across,
    manifest_hash,
    seed_zoo_folders,
    study_zoo,
    summarise,
)
from merging.lab.lab import Lab  # noqa: E402
from merging.models.base import load_base_model  # noqa: E402
from merging.tasks import load_demo_task  # noqa: E402
from merging.training.pipeline import TrainSettings, task_input_features  # noqa: E402
from merging.training.zoo import base_model_dir, load_zoo, load_zoo_adapters  # noqa: E402


def full_finetune_comparison(zoo, path: Path) -> dict | None:
    """DO-Merging's claim (b): magnitude variance across the five tasks, LoRA (each kind) vs full fine-tuning."""
    if not path.is_file():
        return None
    full = json.loads(path.read_text(encoding="utf-8"))
    tasks = [t.name for t in zoo.tasks]
    modules = sorted(set.intersection(*(set(full["tasks"][t]["delta_frobenius"]) for t in tasks)))
    full_cv = sum(magnitude_cv([full["tasks"][t]["delta_frobenius"][m] for t in tasks]) for m in modules) / len(modules)
    lora = {}
    for kind in zoo.inits:
        entries = [a.name for a in zoo.adapters if a.init == kind]
        if len(entries) == len(tasks):
            lora[kind] = magnitude_variance_across(load_zoo_adapters(zoo, entries))
    return {
        "reading": "coefficient of variation across the five tasks of each query/value module's ‖ΔW‖_F, mean over modules",
        "full_finetune": full_cv,
        "lora": lora,
        "full_finetune_accuracy": {t: full["tasks"][t]["eval_accuracy"] for t in tasks},
        "full_finetune_settings": full["settings"],
        "within_update_cv": {"full_finetune": {t: full["tasks"][t]["mean_column_norm_cv"] for t in tasks}},
    }


def write_partial(out: Path, per_seed: list) -> None:
    """The per-seed measurements so far, beside the study (`--reuse` picks them up after an interruption)."""
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(json.dumps(finite({"per_seed": per_seed}), allow_nan=False), encoding="utf-8")


def finite(value):
    """JSON with no NaN or inf: such a value is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(ROOT / "zoo"))
    parser.add_argument("--full-finetune", default=str(ROOT / "docs" / "full_finetune.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the stored per-seed measurements (and ablations) of zoos whose manifest is unchanged")
    parser.add_argument("--only-first", action="store_true", help="measure the shipped zoo only (seed 0), not zoo/seeds/N")
    parser.add_argument("--pairs-seeds", type=int, default=None,
                        help="merge every pair of adapters (DO-Merging's claim (c)) in the first N seed zoos only (default: all)")
    args = parser.parse_args()

    started = time.perf_counter()
    folders = seed_zoo_folders(args.zoo)
    zoo = load_zoo(folders[0])
    training = zoo.training
    settings = TrainSettings(max_length=int(training.get("max_length", 32)),
                             target_modules=tuple(training.get("target_modules", ("query", "value"))),
                             osrm_samples=int(training.get("osrm_samples", 100)))  # fmt: skip
    model, tokenizer = load_base_model(base_model_dir(zoo.base_model), num_labels=2, device=args.device)
    data = [load_demo_task(t.name, zoo.data.get("train_size", 800), zoo.data.get("eval_size", 200), zoo.data.get("seed", 0))
            for t in zoo.tasks]  # fmt: skip
    features = task_input_features(model, tokenizer, data, settings, device=args.device)
    inputs = {task: {module: f.means for module, f in per_module.items()} for task, per_module in features.items()}
    del model
    lab = Lab(zoo.base_model, device=args.device)

    previous = {}
    out = Path(args.zoo) / STUDY_FILE
    if args.reuse and out.is_file():
        old = json.loads(out.read_text(encoding="utf-8"))
        previous = {s["manifest_sha256"]: s for s in old.get("per_seed", [])}
        partial = out.with_name(f".{out.name}.partial")
        if partial.is_file():
            previous.update({s["manifest_sha256"]: s for s in json.loads(partial.read_text(encoding="utf-8"))["per_seed"]})
        previous["ablations"] = old.get("ablations") if old.get("ablations_sha256") == manifest_hash(folders[0]) else None
    per_seed = []
    for index, folder in enumerate(folders[:1] if args.only_first else folders):
        kept = previous.get(manifest_hash(folder))
        if kept is not None:
            print(f"{folder}: unchanged, measurements reused", flush=True)
            per_seed.append({**kept, "folder": str(folder)})
            continue
        seed_zoo = load_zoo(folder)
        pairs = args.pairs_seeds is None or index < args.pairs_seeds
        per_seed.append(study_zoo(lab, seed_zoo, inputs, progress=lambda what: print(what, flush=True), pairs=pairs))
        write_partial(out, per_seed)  # a long study keeps what it measured if it is stopped
    summary = summarise(per_seed)
    ablations = previous.get("ablations")
    if ablations is None:
        print("ablations (where OSRM's effect comes from)", flush=True)
        ablations = zoo_effect_report(zoo, device=args.device)
    study = {
        "generated_by": "scripts/seed_study.py",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, device {args.device}",
        "seconds": None,
        "per_seed": per_seed,
        "summary": summary,
        "ablations": ablations,
        "ablations_sha256": manifest_hash(folders[0]),
        "full_finetune": full_finetune_comparison(zoo, Path(args.full_finetune)),
    }
    study["seconds"] = round(time.perf_counter() - started, 1)
    staging = out.with_name(f".{out.name}.tmp")
    staging.write_text(json.dumps(finite(study), indent=1, allow_nan=False), encoding="utf-8")
    staging.replace(out)
    print(f"wrote {out} in {study['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
