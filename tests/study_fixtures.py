"""A synthetic seed study beside a copy of a zoo (tests only): five seeds whose numbers are chosen so
that the expected sentences are known — OSRM +10 pp under task arithmetic λ = 1 against both
baselines, no difference elsewhere, feature shift rising with the loss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from merging.analysis.seed_study import STUDY_FILE, manifest_hash, summarise


def synthetic_seed(osrm_ta1: float, shift: float) -> dict:
    def kind(single, ta1, shift):
        return {
            "single": {"a": single, "b": single},
            "majority": {"a": 0.5, "b": 0.5},
            "merged": {"ta_1": {"a": ta1, "b": ta1 - 0.02}, "ta_05": {"a": 0.8, "b": 0.8}, "ties": {"a": 0.7, "b": 0.7}},
            "predictors": {"a": {"feature_shift": shift, "input_overlap": 0.02, "abs_cosine": 0.01},
                           "b": {"feature_shift": shift * 1.1, "input_overlap": 0.03, "abs_cosine": 0.01}},
            "pairs": [{"tasks": ["a", "b"], "magnitude_variance": shift / 10, "normalised_accuracy": ta1 / single}],
        }  # fmt: skip

    return {"kinds": {"standard": kind(0.9, 0.6, 1.0 + shift), "gaussian": kind(0.9, 0.62, 0.9 + shift),
                      "osrm": kind(0.9, osrm_ta1, shift)}}  # fmt: skip


def zoo_with_synthetic_study(zoo: Path, folder: Path) -> Path:
    """Copy `zoo` to `folder` and write a synthetic seed study that matches its manifest."""
    shutil.copytree(zoo, folder)
    seeds = [synthetic_seed(0.70 + 0.01 * i, 0.2 + 0.1 * i) for i in range(5)]
    for seed in seeds:
        seed["manifest_sha256"] = manifest_hash(folder)
    ablations = {"random_reference": 8 / 384, "kinds": {
        "standard": {"energy_share_init": 0.02, "energy_share_trained": 0.05, "overlap_init": 0.02, "overlap_trained": 0.03},
        "osrm": {"energy_share_init": 0.0, "energy_share_trained": 0.04, "overlap_init": 0.98, "overlap_trained": 0.9},
    }}  # fmt: skip
    full = {"full_finetune": 0.2, "lora": {"standard": 0.5, "osrm": 0.4}}
    study = {"per_seed": seeds[:1], "summary": summarise(seeds), "ablations": ablations, "full_finetune": full}
    (folder / STUDY_FILE).write_text(json.dumps(study))
    return folder
