"""Evaluation against a hand-written loop; the zoo builder's structure and its reproducibility."""

from __future__ import annotations

import json

import pytest
import torch

from merging.adapters.lora import Adapter, LoraModule, load_adapter
from merging.evaluation.evaluate import EvalSet, Evaluator, evaluate_merge, head_of, preview_indices
from merging.lab.lab import Lab
from merging.recipe.codec import recipe_from_dict
from merging.training.zoo import MANIFEST, load_zoo, load_zoo_adapters
from tests.tiny_models import tiny_bert

TEXTS = ["good great film", "awful boring plot", "the movie was fine", "terrible sad music", "love it", "hate it"]
TARGETS = [1, 0, 1, 0, 1, 0]


def _random_adapter(model, seed: int, num_labels: int = 2) -> Adapter:
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in model.named_modules():
        if name.endswith(("query", "value")) and isinstance(module, torch.nn.Linear):
            d_out, d_in = module.weight.shape
            modules[name] = LoraModule(
                torch.randn(2, d_in, generator=generator) * 0.3, torch.randn(d_out, 2, generator=generator) * 0.3, 1.5
            )
    hidden = model.config.hidden_size
    head = {
        "classifier.weight": torch.randn(num_labels, hidden, generator=generator),
        "classifier.bias": torch.randn(num_labels, generator=generator),
    }
    return Adapter(f"a{seed}", modules, saved_modules=head, meta={"task": "toy"})


def _hand_loop(model, tokenizer, adapter: Adapter) -> float:
    """Copy the model, add ΔW to its weights and swap its head, then score text by text."""
    import copy

    edited = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, module in adapter.modules.items():
            edited.get_submodule(name).weight += module.scale * module.B @ module.A
        weight = adapter.saved_modules["classifier.weight"]
        edited.classifier = torch.nn.Linear(weight.shape[1], weight.shape[0])
        edited.classifier.weight.copy_(weight)
        edited.classifier.bias.copy_(adapter.saved_modules["classifier.bias"])
    correct = 0
    with torch.no_grad():
        for text, target in zip(TEXTS, TARGETS):
            logits = edited(**tokenizer(text, return_tensors="pt")).logits
            correct += int(logits.argmax(-1).item() == target)
    return correct / len(TEXTS)


def test_evaluator_equals_a_hand_written_loop_and_restores_the_weights():
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluator = Evaluator(model, tokenizer, [EvalSet("toy", ["neg", "pos"], TEXTS, TARGETS)], batch_size=4)
    for seed in range(4):
        adapter = _random_adapter(model, seed)
        expected = _hand_loop(model, tokenizer, adapter)
        assert evaluator.accuracy("toy", head_of(adapter, "classifier"), adapter.modules) == expected
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # exact restore, head included


def test_evaluate_merge_reports_base_single_merged_and_normalised():
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    evaluator = Evaluator(model, tokenizer, [EvalSet("toy", ["neg", "pos"], TEXTS, TARGETS)])
    adapter = _random_adapter(model, 1)
    result = evaluate_merge(evaluator, [adapter], adapter.modules)
    scores = result.tasks["toy"]
    assert scores.merged == scores.single  # merging one adapter alone changes nothing
    assert scores.normalized == pytest.approx(1.0)
    assert scores.majority == 0.5
    assert scores.base == evaluator.accuracy("toy", head_of(adapter, "classifier"), None)


def test_zoo_manifest_structure(tiny_zoo):
    manifest = json.loads((tiny_zoo / MANIFEST).read_text())
    assert {t["name"] for t in manifest["tasks"]} == {"sms_spam", "question_type"}
    assert {(a["task"], a["init"]) for a in manifest["adapters"]} == {
        (t, i) for t in ("sms_spam", "question_type") for i in ("standard", "osrm")
    }
    for entry in manifest["adapters"]:
        adapter = load_adapter(tiny_zoo / entry["path"])
        assert adapter.task == entry["task"] and adapter.meta["init"] == entry["init"]
        assert 0.0 <= entry["single_task_accuracy"] <= 1.0 and entry["train_seconds"] > 0
        assert "classifier.weight" in adapter.saved_modules


def test_evaluate_reproduces_the_manifest_exactly(tiny_zoo):
    """The recorded single-task accuracies are what a fresh Lab measures on the saved adapters."""
    zoo = load_zoo(tiny_zoo)
    lab = Lab(zoo.base_model, device="cpu")
    adapters = load_zoo_adapters(zoo, [a.name for a in zoo.adapters])
    for adapter, entry in zip(adapters, zoo.adapters):
        recipe = recipe_from_dict({"adapters": [{"path": str(entry.path), "name": entry.name}]})
        run = lab.merge_and_evaluate([adapter], recipe)
        assert run.evaluation.tasks[entry.task].single == entry.single_task_accuracy, entry.name
        assert run.evaluation.tasks[entry.task].merged == entry.single_task_accuracy, entry.name


def test_cli_evaluate_prints_the_documented_json_and_matches_the_manifest(tiny_zoo, tmp_path, capsys):
    from merging.cli import main

    zoo = load_zoo(tiny_zoo)
    standard = [a for a in zoo.adapters if a.init == "standard"]
    recipe = {"adapters": [{"path": str(a.path), "name": a.name} for a in standard], "method": "ties", "density": 0.5}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    assert main(["evaluate", str(tmp_path / "r.json"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["average"]) >= {"base", "single", "merged", "normalized"}
    for entry in standard:
        scores = printed["tasks"][entry.task]
        assert scores["single"] == entry.single_task_accuracy
        assert scores["normalized"] == pytest.approx(scores["merged"] / scores["single"])


def test_recipe_switch_projects_adapters_onto_osrm_rows_before_merging(tiny_zoo, tmp_path, capsys):
    from merging.cli import main

    zoo = load_zoo(tiny_zoo)
    standard = [a for a in zoo.adapters if a.init == "standard"]
    recipe = {"adapters": [{"path": str(a.path), "name": a.name} for a in standard], "osrm_posthoc": True}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    assert main(["merge", str(tmp_path / "r.json"), "--out", str(tmp_path / "out"), "--per-module"]) == 0
    capsys.readouterr()
    merged = load_adapter(tmp_path / "out")
    plain = {n: sum(load_adapter(a.path).modules[n].delta() for a in standard) for n in merged.modules}
    # the projection changed the merge: a post-hoc adapter keeps only the part of ΔW on OSRM's rows
    assert any(not torch.allclose(merged.modules[n].delta(), plain[n], atol=1e-6) for n in merged.modules)


def test_rescore_rewrites_the_manifest_with_measured_accuracies(tiny_zoo, tmp_path):
    import shutil

    from merging.training.zoo import rescore_zoo

    copy = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    recorded = {a["name"]: a["single_task_accuracy"] for a in manifest["adapters"]}
    for entry in manifest["adapters"]:
        entry["single_task_accuracy"] = -1.0
    (copy / MANIFEST).write_text(json.dumps(manifest))
    rescored = rescore_zoo(copy)
    assert {a.name: a.single_task_accuracy for a in rescored.adapters} == recorded


# ----------------------------------------------------------------------------------------------
# The preview, the merged-score cache, and the all-zero shortcut


def test_preview_indices_take_every_third_example_of_each_class():
    targets = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0]
    # class 0 at 0, 2, 3, 6, 8, 9 → its 1st and 4th (0, 6); class 1 at 1, 4, 5, 7 → 1st and 4th (1, 7)
    assert preview_indices(targets, every=3) == [0, 1, 6, 7]


def test_preview_and_rest_partition_the_evaluation_set():
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    evaluator = Evaluator(model, tokenizer, [EvalSet("toy", ["neg", "pos"], TEXTS * 3, TARGETS * 3)], batch_size=4)
    seen = [int(i) for part in ("preview", "rest") for indices, _ in evaluator._batches["toy"][part] for i in indices]
    assert sorted(seen) == list(range(18))
    whole = [int(i) for indices, _ in evaluator._batches["toy"]["all"] for i in indices]
    assert sorted(whole) == list(range(18))
    adapter = _random_adapter(model, 2)
    head = head_of(adapter, "classifier")
    preview = evaluator.correct("toy", head, adapter.modules, ("preview",))
    rest = evaluator.correct("toy", head, adapter.modules, ("rest",))
    assert preview[1] == 6 and rest[1] == 12
    assert (preview[0] + rest[0]) / 18 == evaluator.accuracy("toy", head, adapter.modules)


def test_evaluate_merge_sends_a_preview_then_the_full_result():
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    evaluator = Evaluator(model, tokenizer, [EvalSet("toy", ["neg", "pos"], TEXTS * 3, TARGETS * 3)])
    adapter = _random_adapter(model, 3)
    other = _random_adapter(model, 4)
    previews = []
    result = evaluate_merge(evaluator, [adapter], other.modules, on_preview=previews.append)
    assert len(previews) == 1 and previews[0].preview and not result.preview
    head = head_of(adapter, "classifier")
    correct, scored = evaluator.correct("toy", head, other.modules, ("preview",))
    assert previews[0].tasks["toy"].merged == correct / scored
    assert result.tasks["toy"].merged == evaluator.accuracy("toy", head, other.modules)
    assert result.to_dict()["preview"] is False and previews[0].to_dict()["preview"] is True


def test_identical_bodies_are_scored_once_and_zero_updates_are_the_base(tmp_path, monkeypatch):
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    evaluator = Evaluator(model, tokenizer, [EvalSet("toy", ["neg", "pos"], TEXTS, TARGETS)])
    adapter = _random_adapter(model, 5)
    adapter.path = tmp_path  # a cache key needs a file-backed adapter
    other = _random_adapter(model, 6)
    cache: dict = {}
    singles: dict = {}
    first = evaluate_merge(evaluator, [adapter], other.modules, singles, merged_cache=cache)
    calls = []
    original = evaluator.correct
    monkeypatch.setattr(evaluator, "correct", lambda *a, **k: calls.append(a) or original(*a, **k))
    copied = {name: LoraModule(m.A.clone(), m.B.clone(), m.scale) for name, m in other.modules.items()}
    again = evaluate_merge(evaluator, [adapter], copied, singles, merged_cache=cache)
    assert again.tasks["toy"].merged == first.tasks["toy"].merged and calls == []
    copied[next(iter(copied))].B[0, 0] += 1.0  # any change is a new body
    evaluate_merge(evaluator, [adapter], copied, singles, merged_cache=cache)
    assert len(calls) == 2  # preview and rest
    calls.clear()
    zero = {name: LoraModule(m.A, torch.zeros_like(m.B), m.scale) for name, m in other.modules.items()}
    result = evaluate_merge(evaluator, [adapter], zero, singles, merged_cache=cache)
    assert calls == [] and result.tasks["toy"].merged == result.tasks["toy"].base
