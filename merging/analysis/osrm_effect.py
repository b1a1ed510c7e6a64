"""Where OSRM's effect comes from: what A captures of the other tasks' inputs, and how much the
tasks' input subspaces overlap, at initialisation and after training.

Two measures per adapter kind (standard, the authors' gaussian baseline, the scale control, OSRM
and its ablations), each averaged over the target modules:

- **captured energy share**: the share of the other tasks' mean-input energy that lies in the row
  space of A, ‖P_A X̄ᵀ‖²_F / ‖X̄‖²_F with X̄ one mean row per other task (OSRM's own rows) and P_A
  the projector onto A's row space. Scale-free; 0 is OSRM's target at initialisation, a random
  r-dimensional subspace of R^d captures about r/d.
- **input-subspace overlap between tasks**: merging.analysis.metrics.subspace_overlap of two tasks' A row
  spaces (mean squared cosine of their principal angles), averaged over task pairs; two random
  subspaces give about r/d.

Initial A's are recomputed exactly as training drew them (the seed for seeded kinds, the features
for OSRM's), so nothing beyond the zoo and the base model is needed. Pure functions over tensors
except :func:`zoo_effect_report`, which loads a zoo's adapters and the base model.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from merging.adapters.lora import load_adapter
from merging.analysis.metrics import orthonormal_basis, subspace_overlap
from merging.models.base import load_base_model
from merging.tasks import load_demo_task
from merging.training.osrm import osrm_A_for_task, other_task_rows
from merging.training.pipeline import TrainSettings, task_input_features
from merging.training.trainer import SEEDED_A
from merging.training.zoo import base_model_dir, kind_training


def captured_energy_share(A: torch.Tensor, rows: torch.Tensor) -> float:
    """‖P_A Xᵀ‖²_F / ‖X‖²_F: the share of the rows' energy inside A's row space (A: r × d, X: k × d)."""
    basis = orthonormal_basis(A.detach().T.float())
    X = rows.detach().float()
    total = float(X.square().sum())
    if total == 0.0 or basis.shape[1] == 0:
        return 0.0
    return float((X @ basis).square().sum()) / total


def input_overlap(A1: torch.Tensor, A2: torch.Tensor) -> float:
    """Subspace overlap of two A's row spaces (0 orthogonal, 1 the same, ≈ r/d at random)."""
    return subspace_overlap(orthonormal_basis(A1.detach().T.float()), orthonormal_basis(A2.detach().T.float()))


def mean_pairwise_overlap(A_by_task: Mapping[str, Mapping[str, torch.Tensor]]) -> float | None:
    """Mean over task pairs and shared modules of :func:`input_overlap` (None with fewer than two tasks)."""
    values = []
    for first, second in itertools.combinations(sorted(A_by_task), 2):
        for module in sorted(set(A_by_task[first]) & set(A_by_task[second])):
            values.append(input_overlap(A_by_task[first][module], A_by_task[second][module]))
    return sum(values) / len(values) if values else None


def mean_energy_share(A_by_module: Mapping[str, torch.Tensor], rows_by_module: Mapping[str, torch.Tensor]) -> float:
    """Mean over modules of :func:`captured_energy_share`."""
    values = [captured_energy_share(A, rows_by_module[m]) for m, A in A_by_module.items() if m in rows_by_module]
    return sum(values) / len(values) if values else float("nan")


def initial_A(
    kind_init: str,
    seed: int,
    task: str,
    features: Mapping[str, Mapping[str, object]],
    shapes: Mapping[str, tuple[int, int]],
    rank: int,
) -> dict[str, torch.Tensor]:
    """The A an adapter started from, recomputed as training drew it: merging.training.trainer.SEEDED_A for
    the seeded inits, merging.training.osrm.osrm_A_for_task for the OSRM variants."""

    if kind_init in SEEDED_A:
        return SEEDED_A[kind_init](shapes, seed)
    return osrm_A_for_task(features, task, rank, variant=kind_init, seed=seed)


def other_rows(features: Mapping[str, Mapping[str, object]], task: str) -> dict[str, torch.Tensor]:
    """Per module, one mean input row per task other than `task` (OSRM's X̄)."""

    others = [name for name in features if name != task]
    modules = list(features[others[0]]) if others else []
    return {m: other_task_rows([features[name][m] for name in others], "osrm") for m in modules}


def kind_summary(
    trained: Mapping[str, Mapping[str, torch.Tensor]],
    initial: Mapping[str, Mapping[str, torch.Tensor]],
    features: Mapping[str, Mapping[str, object]],
) -> dict:
    """For one kind (task → module → A, trained and initial): energy shares per task and the mean
    pairwise overlap, both at initialisation and after training. JSON-ready."""
    per_task = {}
    for task in trained:
        rows = other_rows(features, task)
        per_task[task] = {
            "energy_share_init": mean_energy_share(initial[task], rows),
            "energy_share_trained": mean_energy_share(trained[task], rows),
        }
    shares_init = [v["energy_share_init"] for v in per_task.values()]
    shares_trained = [v["energy_share_trained"] for v in per_task.values()]
    return {
        "tasks": per_task,
        "energy_share_init": sum(shares_init) / len(shares_init) if shares_init else None,
        "energy_share_trained": sum(shares_trained) / len(shares_trained) if shares_trained else None,
        "overlap_init": mean_pairwise_overlap(initial),
        "overlap_trained": mean_pairwise_overlap(trained),
    }


def zoo_effect_report(zoo, kinds: Sequence[str] | None = None, device: str = "cpu") -> dict:
    """:func:`kind_summary` for every kind of `zoo` (a merging.training.zoo.Zoo) that covers two tasks or more,
    with the random-subspace reference r/d. Reads the base model's input features over each task's
    first ``osrm_samples`` training texts, as the build did."""

    manifest_training = zoo.training
    settings = TrainSettings(
        max_length=int(manifest_training.get("max_length", 32)),
        target_modules=tuple(manifest_training.get("target_modules", ("query", "value"))),
        osrm_samples=int(manifest_training.get("osrm_samples", 100)),
    )
    rank = int(manifest_training.get("rank", 8))
    model, tokenizer = load_base_model(base_model_dir(zoo.base_model), num_labels=2, device=device)
    data = [load_demo_task(t.name, zoo.data.get("train_size", 800), zoo.data.get("eval_size", 200), zoo.data.get("seed", 0))
            for t in zoo.tasks]  # fmt: skip
    features = task_input_features(model, tokenizer, data, settings, device=device)
    report: dict = {"kinds": {}, "random_reference": None}
    for kind in kinds or zoo.inits:
        entries = [a for a in zoo.adapters if a.init == kind]
        if len({a.task for a in entries}) < 2 or kind == "shared-seed":
            continue
        init, _ = kind_training(kind)
        trained, initial = {}, {}
        for entry in entries:
            adapter = load_adapter(entry.path, name=entry.name)
            trained[entry.task] = {m: module.A for m, module in adapter.modules.items()}
            shapes = {m: tuple(module.A.shape) for m, module in adapter.modules.items()}
            initial[entry.task] = initial_A(init, int(entry.seed or 0), entry.task, features, shapes, rank)
            d_in = next(iter(shapes.values()))[1]
            report["random_reference"] = rank / d_in
        report["kinds"][kind] = kind_summary(trained, initial, features)
    return report
