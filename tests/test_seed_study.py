"""merging.analysis.seed_study: the "why" measures against hand-computed values, the summary's pairing and
intervals on synthetic per-seed studies, staleness, and one real study of the tiny test zoo."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from merging.adapters.lora import Adapter, LoraModule
from merging.analysis.seed_study import (
    STUDY_FILE,
    StudyError,
    best_predictor,
    feature_shift,
    load_study,
    magnitude_cv,
    magnitude_variance_across,
    manifest_hash,
    summarise,
    task_predictors,
)


def _module(B, A, scale=1.0) -> LoraModule:
    return LoraModule(A=torch.tensor(A, dtype=torch.float32), B=torch.tensor(B, dtype=torch.float32), scale=scale)


def test_feature_shift_by_hand():
    own = _module([[1.0], [0.0]], [[1.0, 0.0]])  # ΔW = [[1, 0], [0, 0]]
    other = _module([[0.0], [2.0]], [[1.0, 1.0]])  # ΔW = [[0, 0], [2, 2]]
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # own: ΔW Xᵀ = [[1, 0], [0, 0]] → norm 1; other: [[0, 0], [2, 2]] → norm √8
    assert feature_shift(own, [other], X) == pytest.approx(math.sqrt(8))
    assert feature_shift(own, [other, other], X) == pytest.approx(2 * math.sqrt(8))  # summed, not averaged
    assert feature_shift(own, [], X) == 0.0
    blind = _module([[0.0], [1.0]], [[0.0, 0.0]])  # responds to nothing
    assert feature_shift(blind, [other], X) == math.inf


def test_magnitude_variance_is_a_coefficient_of_variation_across_adapters():
    assert magnitude_cv([1.0, 1.0]) == 0.0
    assert magnitude_cv([1.0, 3.0]) == pytest.approx(0.5)  # std 1, mean 2
    assert magnitude_cv([0.0, 0.0]) == 0.0
    a = Adapter("a", {"m": _module([[1.0]], [[1.0]])})
    b = Adapter("b", {"m": _module([[3.0]], [[1.0]]), "only_b": _module([[1.0]], [[1.0]])})
    assert magnitude_variance_across([a, b]) == pytest.approx(0.5)  # shared modules only
    scaled = Adapter("c", {"m": _module([[10.0]], [[1.0]])})
    twice = Adapter("d", {"m": _module([[30.0]], [[1.0]])})
    assert magnitude_variance_across([scaled, twice]) == pytest.approx(0.5)  # scale-free


def test_task_predictors_see_orthogonal_adapters_as_harmless():
    e = torch.eye(4)
    apart = {"x": Adapter("x", {"m": LoraModule(A=e[:2], B=e[:, :2], scale=1.0)}),
             "y": Adapter("y", {"m": LoraModule(A=e[2:], B=e[:, 2:], scale=1.0)})}  # fmt: skip
    inputs = {"x": {"m": e[:2]}, "y": {"m": e[2:]}}
    result = task_predictors(apart, inputs)
    assert result["x"]["feature_shift"] == 0.0 and result["x"]["input_overlap"] == 0.0
    assert result["x"]["abs_cosine"] == 0.0
    same = {"x": apart["x"], "y": Adapter("y", {"m": LoraModule(A=e[:2], B=e[:, :2], scale=1.0)})}
    result = task_predictors(same, {"x": {"m": e[:2]}, "y": {"m": e[:2]}})
    assert result["x"]["feature_shift"] == pytest.approx(1.0) and result["x"]["input_overlap"] == pytest.approx(1.0)


def _seed(values: dict) -> dict:
    """A synthetic per-seed study: kind → (single, ta_1, ta_05, ties) averages over two tasks."""
    kinds = {}
    for kind, (single, ta1, ta05, ties, shift) in values.items():
        kinds[kind] = {
            "single": {"a": single, "b": single},
            "merged": {"ta_1": {"a": ta1, "b": ta1}, "ta_05": {"a": ta05, "b": ta05}, "ties": {"a": ties, "b": ties}},
            "predictors": {"a": {"feature_shift": shift, "input_overlap": 0.1, "abs_cosine": 0.0},
                           "b": {"feature_shift": shift, "input_overlap": 0.1, "abs_cosine": 0.0}},
            "pairs": [{"tasks": ["a", "b"], "magnitude_variance": shift, "normalised_accuracy": ta1 / single}],
        }  # fmt: skip
    return {"kinds": kinds}


def test_summary_pairs_seeds_and_says_which_differences_survive():
    seeds = [
        _seed({"standard": (0.9, 0.60 + 0.01 * i, 0.8, 0.7, 1.0 + 0.1 * i),
               "gaussian": (0.9, 0.62, 0.8, 0.7, 1.2),
               "osrm": (0.9 - 0.01 * (i % 2), 0.70 + 0.01 * i, 0.8 + 0.02 * ((-1) ** i), 0.7, 0.5)})
        for i in range(5)
    ]  # fmt: skip
    summary = summarise(seeds)
    ta1 = summary["differences"]["osrm-standard:ta_1"]
    assert ta1["n"] == 5 and ta1["mean"] == pytest.approx(0.10) and ta1["survives"]
    assert not summary["differences"]["osrm-standard:ta_05"]["survives"]  # ±0.02 around 0
    assert summary["kinds"]["osrm"]["single"]["values"] == pytest.approx([0.9, 0.89, 0.9, 0.89, 0.9])
    assert len(summary["why"]["points"]) == 5 * 3 * 2
    # drop = single − ta_1: the smaller the feature shift the smaller the drop here → r > 0
    assert summary["why"]["feature_shift"]["r"] > 0.9
    assert best_predictor(summary)[0] == "feature_shift"
    assert math.isnan(summary["why"]["abs_cosine"]["r"])  # constant: no correlation, never "predicts"
    assert summary["magnitude_variance"]["correlation"]["n"] == 15


def test_a_missing_kind_is_left_out_of_the_pairing():
    seeds = [_seed({"standard": (0.9, 0.6, 0.8, 0.7, 1.0), "osrm": (0.9, 0.7, 0.8, 0.7, 0.5)}) for _ in range(3)]
    seeds.append(_seed({"standard": (0.9, 0.6, 0.8, 0.7, 1.0)}))
    summary = summarise(seeds)
    assert summary["differences"]["osrm-standard:ta_1"]["n"] == 3
    assert "osrm-gaussian:ta_1" not in summary["differences"]


def test_load_study_refuses_a_missing_malformed_or_stale_study(tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "seeds" / "1").mkdir(parents=True)
    (zoo / "manifest.json").write_text("{}")
    (zoo / "seeds" / "1" / "manifest.json").write_text('{"a": 1}')
    with pytest.raises(StudyError, match="no seed study"):
        load_study(zoo)
    (zoo / STUDY_FILE).write_text("{not json")
    with pytest.raises(StudyError, match="malformed"):
        load_study(zoo)
    study = {"per_seed": [{"manifest_sha256": manifest_hash(zoo)}, {"manifest_sha256": manifest_hash(zoo / "seeds" / "1")}]}
    (zoo / STUDY_FILE).write_text(json.dumps(study))
    assert load_study(zoo) == study
    (zoo / "seeds" / "1" / "manifest.json").write_text('{"a": 2}')  # a seed zoo was rebuilt
    with pytest.raises(StudyError, match="stale"):
        load_study(zoo)


@pytest.mark.slow
def test_a_real_study_of_the_tiny_zoo(tiny_zoo, tmp_path):
    from merging.analysis.seed_study import study_zoo
    from merging.lab.lab import Lab
    from merging.models.base import load_base_model
    from merging.tasks import load_demo_task
    from merging.training.pipeline import TrainSettings, task_input_features
    from merging.training.zoo import base_model_dir, load_zoo

    zoo = load_zoo(tiny_zoo)
    model, tokenizer = load_base_model(base_model_dir(zoo.base_model), num_labels=2)
    data = [load_demo_task(t.name, zoo.data["train_size"], zoo.data["eval_size"], zoo.data["seed"]) for t in zoo.tasks]
    features = task_input_features(model, tokenizer, data, TrainSettings(osrm_samples=8))
    inputs = {t: {m: f.means for m, f in per.items()} for t, per in features.items()}
    study = study_zoo(Lab(zoo.base_model, device="cpu"), zoo, inputs, kinds=("standard", "osrm"))
    standard = study["kinds"]["standard"]
    assert set(standard["merged"]) == {"ta_1", "ta_05", "ties"} and set(standard["single"]) == {"sms_spam", "question_type"}
    assert all(0.0 <= v <= 1.0 for v in standard["merged"]["ta_1"].values())
    assert len(standard["pairs"]) == 1 and math.isfinite(standard["pairs"][0]["magnitude_variance"])
    assert all(math.isfinite(p["feature_shift"]) for p in standard["predictors"].values())
    assert study["manifest_sha256"] == manifest_hash(tiny_zoo)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_zoo, copy)
    assert manifest_hash(copy) == study["manifest_sha256"]
