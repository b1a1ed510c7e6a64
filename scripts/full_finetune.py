"""Fully fine-tune the demo's MiniLM on each demo task and record what DO-Merging's claim (b) needs.

DO-Merging argues that LoRA updates spread their magnitude over the input features far more unevenly
than full fine-tuning does. This script fine-tunes every weight of the packaged MiniLM on each task
(same data split, dev split, schedule and clipping as the zoo's LoRA adapters; the weights are not
kept) and writes, per task, the accuracy on the evaluation split (a forward pass) and, per query/value
module, the coefficient of variation of ΔW's column norms (merging.analysis.metrics' magnitude variance,
scale-free so LoRA and full updates compare). scripts/findings.py reads the JSON beside the zoo's.

    .venv/bin/python scripts/full_finetune.py --out docs/full_finetune.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from merging.models.base import demo_model_dir, load_base_model  # noqa: E402
from merging.tasks import DEFAULT_DEMO_TASKS, carve_dev, load_demo_task  # noqa: E402
from merging.training.trainer import _accuracy, adapter_seed, full_finetune  # noqa: E402
from merging.training.zoo import EVAL_MAX_LENGTH, ZOO_TRAINING  # noqa: E402


def column_norm_cv(delta: torch.Tensor) -> float:
    """std / mean of ‖ΔW[:, j]‖₂ over the input features j (0 for a zero update)."""
    norms = delta.double().norm(dim=0)
    mean = float(norms.mean())
    return float(norms.std(unbiased=False)) / mean if mean > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/full_finetune.json")
    parser.add_argument("--tasks", nargs="*", default=list(DEFAULT_DEMO_TASKS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-5)
    args = parser.parse_args()

    model, tokenizer = load_base_model(demo_model_dir(), num_labels=2, device="cpu")
    settings = {"epochs": args.epochs, "lr": args.lr, "batch_size": ZOO_TRAINING.batch_size,
                "max_length": ZOO_TRAINING.max_length, "warmup_ratio": ZOO_TRAINING.warmup_ratio,
                "max_grad_norm": ZOO_TRAINING.max_grad_norm, "dev_size": ZOO_TRAINING.dev_size,
                "train_size": 800, "eval_size": 200, "split_seed": 0}  # fmt: skip
    results = {}
    started = time.perf_counter()
    for task_name in args.tasks:
        data = load_demo_task(task_name, 800, 200, 0)
        train, dev_texts, dev_labels = carve_dev(data, ZOO_TRAINING.dev_size, seed=0)
        result = full_finetune(
            model, tokenizer, train.train_texts, train.train_labels,
            dev_texts=dev_texts, dev_labels=dev_labels, epochs=args.epochs, lr=args.lr,
            batch_size=ZOO_TRAINING.batch_size, max_length=ZOO_TRAINING.max_length,
            warmup_ratio=ZOO_TRAINING.warmup_ratio, max_grad_norm=ZOO_TRAINING.max_grad_norm,
            seed=adapter_seed(task_name, "full", 0), num_labels=data.num_labels,
        )  # fmt: skip
        accuracy = _accuracy(result.model, tokenizer, data.eval_texts, data.eval_labels, 32, EVAL_MAX_LENGTH, "cpu")
        cvs = {name: column_norm_cv(delta) for name, delta in sorted(result.deltas.items())}
        if not all(math.isfinite(v) for v in cvs.values()):
            raise SystemExit(f"{task_name}: a non-finite magnitude variance; nothing written")
        results[task_name] = {
            "eval_accuracy": accuracy,
            "dev_accuracy": result.dev_accuracy,
            "best_epoch": result.best_epoch,
            "epoch_losses": result.epoch_losses,
            "seconds": round(result.seconds, 1),
            "column_norm_cv": cvs,
            "mean_column_norm_cv": sum(cvs.values()) / len(cvs),
            "delta_frobenius": {name: float(delta.norm()) for name, delta in sorted(result.deltas.items())},
        }
        print(f"{task_name}: accuracy {100 * accuracy:.1f} %, mean CV {results[task_name]['mean_column_norm_cv']:.3f}, "
              f"best epoch {result.best_epoch}, {result.seconds:.0f} s", flush=True)  # fmt: skip
        del result
    out = Path(args.out)
    staging = out.with_name(f".{out.name}.tmp")
    staging.write_text(json.dumps({
        "generated_by": "scripts/full_finetune.py", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": torch.get_num_threads(), "settings": settings, "seconds": round(time.perf_counter() - started, 1),
        "tasks": results,
    }, indent=2), encoding="utf-8")  # fmt: skip
    staging.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
