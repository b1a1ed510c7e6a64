"""The zoo's training regime (issue 17): dev split and best epoch, gradient clipping, the baselines'
and ablations' initial A, the chance refusal with the next seed, full fine-tuning, and the measures
of where OSRM's effect comes from (captured energy share, input-subspace overlap)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from merging.analysis.osrm_effect import captured_energy_share, initial_A, input_overlap, mean_pairwise_overlap
from merging.tasks import TaskData, TaskError, carve_dev
from merging.training.osrm import osrm_A_for_task, osrm_init, osrm_random_init
from merging.training.trainer import (
    INITS,
    chance_verdict,
    full_finetune,
    gaussian_lora_A,
    scaled_standard_lora_A,
    standard_lora_A,
    train_lora,
)
from merging.training.zoo import KINDS, MANIFEST, MAX_ATTEMPTS, BuildSettings, build_zoo, retry_seed
from tests.tiny_models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")

POSITIVE = ["good movie", "great film", "happy food", "nice place", "excellent music", "love the plot"]
NEGATIVE = ["bad movie", "awful film", "sad food", "poor place", "terrible music", "hate the plot"]
TEXTS = POSITIVE + NEGATIVE
LABELS = [0] * len(POSITIVE) + [1] * len(NEGATIVE)


def _orthonormal_rows(A: torch.Tensor) -> bool:
    return torch.allclose(A @ A.T, torch.eye(A.shape[0]), atol=1e-5)


# ------------------------------------------------------------------ initial A of every kind


def test_random_null_space_basis_is_orthonormal_annihilates_the_rows_and_depends_on_the_seed():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(1, 40, generator=generator, dtype=torch.float64)
    rows = base + 0.01 * torch.randn(4, 40, generator=generator, dtype=torch.float64)  # nearly parallel, as MiniLM's
    A = osrm_random_init(rows, 6, seed=1)
    assert A.shape == (6, 40) and _orthonormal_rows(A)
    assert float((A.double() @ rows.T).abs().max()) < 1e-5  # inside the null space: A·x̄ = 0
    assert torch.equal(A, osrm_random_init(rows, 6, seed=1))
    other = osrm_random_init(rows, 6, seed=2)
    assert input_overlap(A, other) < 0.6  # a different basis of the 36-dim null space, not LAPACK's one
    # LAPACK's basis (the authors') is one fixed choice: the same for every seed
    assert input_overlap(osrm_init(rows, 6), osrm_init(rows, 6)) == pytest.approx(1.0)


def test_random_basis_falls_back_to_the_smallest_directions_when_the_null_space_is_too_small():
    rows = torch.randn(38, 40, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(osrm_random_init(rows, 4, seed=3), osrm_init(rows, 4))


def test_gaussian_A_has_std_one_over_r_and_the_scale_control_has_osrm_size():
    shapes = {"m1": (8, 4096), "m0": (8, 4096)}
    gaussian = gaussian_lora_A(shapes, seed=5)
    for A in gaussian.values():
        assert float(A.std()) == pytest.approx(1 / 8, rel=0.03)  # PEFT's "gaussian": std 1/r
    assert torch.equal(gaussian["m1"], gaussian_lora_A(shapes, seed=5)["m1"])
    standard, scaled = standard_lora_A(shapes, 5), scaled_standard_lora_A(shapes, 5)
    for name in shapes:
        assert float(scaled[name].norm()) == pytest.approx(math.sqrt(8), rel=1e-5)  # OSRM's ‖A‖_F: r unit rows
        cosine = float((standard[name] * scaled[name]).sum() / (standard[name].norm() * scaled[name].norm()))
        assert cosine == pytest.approx(1.0, abs=1e-6)  # same directions as PEFT's default


def test_recomputed_initial_A_is_what_training_started_from():
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    from merging.training.osrm import collect_input_features

    features = {
        "mine": collect_input_features(model, tokenizer, TEXTS),
        "other": collect_input_features(model, tokenizer, ["sports team win", "election vote law", "the game score"]),
    }
    for init in ("standard", "gaussian", "standard-scaled", "osrm", "osrm-random"):
        A = osrm_A_for_task(features, "mine", 4, variant=init, seed=11) if init.startswith("osrm") else None
        result = train_lora(model, tokenizer, TEXTS, LABELS, rank=4, alpha=8, epochs=0, init=init, osrm_A=A, seed=11)
        shapes = {name: tuple(a.shape) for name, a in result.initial_A.items()}
        again = initial_A(init, 11, "mine", features, shapes, 4)
        assert set(again) == set(result.initial_A)
        for name, tensor in result.initial_A.items():
            assert torch.allclose(again[name], tensor), (init, name)


# ------------------------------------------------------------------ training: dev split, best epoch, clipping


def test_best_epoch_is_the_one_with_the_best_dev_accuracy_and_its_weights_are_returned():
    from merging.evaluation.evaluate import EvalSet, Evaluator, head_of

    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    dev_texts, dev_labels = TEXTS[::2], LABELS[::2]
    result = train_lora(model, tokenizer, TEXTS, LABELS, rank=4, alpha=8, epochs=5, lr=2e-2, batch_size=4,
                        seed=3, dev_texts=dev_texts, dev_labels=dev_labels)  # fmt: skip
    assert len(result.dev_accuracy) == 5 and len(result.epoch_losses) == 5
    best = max(result.dev_accuracy)
    assert result.best_epoch == result.dev_accuracy.index(best) + 1  # the earliest best, as HF's Trainer
    evaluator = Evaluator(model, tokenizer, [EvalSet("dev", ["p", "n"], list(dev_texts), list(dev_labels))], device="cpu")
    measured = evaluator.accuracy("dev", head_of(result.adapter, evaluator.head_name), result.adapter.modules)
    assert measured == pytest.approx(result.dev_accuracy[result.best_epoch - 1])


def test_gradient_clipping_bounds_each_step():
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    common = dict(rank=4, alpha=8, epochs=1, lr=1e-2, batch_size=len(TEXTS), warmup_ratio=0.0, seed=3)
    free = train_lora(model, tokenizer, TEXTS, LABELS, max_grad_norm=None, **common)
    clipped = train_lora(model, tokenizer, TEXTS, LABELS, max_grad_norm=1e-9, **common)
    # Adam divides by √v + ε (ε = 1e-8): a gradient clipped to norm 1e-9 is far below ε, so the
    # first steps move B a hundred times less than the unclipped ones
    assert free.config["max_grad_norm"] is None and clipped.config["max_grad_norm"] == 1e-9
    B_free = torch.cat([m.B.flatten() for m in free.adapter.modules.values()])
    B_clipped = torch.cat([m.B.flatten() for m in clipped.adapter.modules.values()])
    assert torch.isfinite(B_clipped).all() and float(B_free.abs().max()) > 0
    assert float(B_clipped.abs().max()) < 0.1 * float(B_free.abs().max())


def test_carve_dev_takes_a_stratified_seeded_share_of_the_training_split_only():
    data = TaskData("t", ("a", "b"), tuple(f"x{i}" for i in range(40)), tuple([0] * 30 + [1] * 10),
                    ("e1", "e2"), (0, 1))  # fmt: skip
    train, dev_texts, dev_labels = carve_dev(data, 8, seed=0)
    assert len(dev_texts) == 8 and len(train.train_texts) == 32
    assert set(dev_texts).isdisjoint(train.train_texts) and set(dev_texts) <= set(data.train_texts)
    assert sorted(dev_labels) == [0] * 6 + [1] * 2  # 30:10 → 6:2
    assert train.eval_texts == data.eval_texts
    assert carve_dev(data, 8, seed=0)[1] == dev_texts and carve_dev(data, 8, seed=1)[1] != dev_texts
    assert carve_dev(data, 0)[0] is data
    with pytest.raises(TaskError, match="needs more than 40"):
        carve_dev(data, 40)


# ------------------------------------------------------------------ refusing runs that did not learn


def test_chance_verdict_names_each_reason():
    assert chance_verdict(0.85, 0.5, 0.3, 2) is None
    assert "within 10 pp" in chance_verdict(0.55, 0.5, 0.3, 2)
    loss_only = chance_verdict(0.9, 0.5, 0.99 * math.log(2), 2)
    assert "within 2 % of ln 2" in loss_only and "pp" not in loss_only
    both = chance_verdict(0.5, 0.5, math.log(6), 6)
    assert "majority" in both and "ln 6" in both
    assert chance_verdict(0.5999, 0.5, None, 2) is not None and chance_verdict(0.6001, 0.5, None, 2) is None


def test_retry_seeds_are_stable_and_distinct():
    seeds = [retry_seed(1234, attempt) for attempt in range(MAX_ATTEMPTS)]
    assert seeds[0] == 1234 and len(set(seeds)) == MAX_ATTEMPTS
    assert seeds == [retry_seed(1234, attempt) for attempt in range(MAX_ATTEMPTS)]


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regime") / "tiny-bert"
    model, tokenizer = tiny_bert()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_run_that_cannot_learn_is_retrained_with_the_next_seeds_and_never_shipped(tmp_path, tiny_model_folder):
    from merging.training.pipeline import TrainSettings

    settings = BuildSettings(tasks=("sms_spam", "question_type"), inits=("standard",), train_size=24, eval_size=12,
                             training=TrainSettings(epochs=1, lr=0.0, dev_size=8), shared_seed_tasks=(),
                             train_only=("sms_spam",))  # fmt: skip
    zoo = build_zoo(tmp_path / "zoo", settings, base_model=str(tiny_model_folder))  # lr 0: nothing can learn
    assert zoo.adapters == []
    manifest = json.loads((tmp_path / "zoo" / MANIFEST).read_text())
    (refused,) = manifest["not_shipped"]
    assert refused["name"] == "sms_spam-standard" and len(refused["refused_seeds"]) == MAX_ATTEMPTS
    assert len({r["seed"] for r in refused["refused_seeds"]}) == MAX_ATTEMPTS
    assert all("dev split" in r["why"] for r in refused["refused_seeds"])
    assert not (tmp_path / "zoo" / "sms_spam-standard").exists()
    assert zoo.not_shipped == manifest["not_shipped"]

    kept = build_zoo(tmp_path / "kept", BuildSettings(**{**settings.__dict__, "refuse_chance": False}),
                     base_model=str(tiny_model_folder))  # fmt: skip
    (entry,) = json.loads((tmp_path / "kept" / MANIFEST).read_text())["adapters"]
    assert "dev split" in entry["did_not_learn"] and kept.adapters[0].name == "sms_spam-standard"
    assert entry["best_epoch"] == 1 and len(entry["dev_accuracy"]) == 1 and entry["A_drift"] == 0.0


def test_new_kinds_are_built_with_their_own_A(tmp_path, tiny_model_folder):
    from merging.adapters.lora import load_adapter
    from merging.training.pipeline import TrainSettings

    settings = BuildSettings(tasks=("sms_spam", "question_type"), inits=("gaussian", "standard-scaled", "osrm-random"),
                             train_size=24, eval_size=12, training=TrainSettings(epochs=1, osrm_samples=8, dev_size=4),
                             shared_seed_tasks=(), refuse_chance=False)  # fmt: skip
    zoo = build_zoo(tmp_path / "zoo", settings, base_model=str(tiny_model_folder))
    assert sorted(zoo.inits) == ["gaussian", "osrm-random", "standard-scaled"]
    randoms = [load_adapter(a.path) for a in zoo.adapters if a.init == "osrm-random"]
    for adapter in randoms:
        assert all(m.A.shape[0] == 8 for m in adapter.modules.values())
    manifest = json.loads((tmp_path / "zoo" / MANIFEST).read_text())
    assert {a["osrm_rows"]["variant"] for a in manifest["adapters"] if a["init"] == "osrm-random"} == {"osrm-random"}
    assert manifest["training"]["dev_size"] == 4 and manifest["training"]["max_grad_norm"] == 1.0


# ------------------------------------------------------------------ full fine-tuning


def test_full_finetune_returns_dense_updates_and_leaves_the_base_model_alone():
    model, tokenizer = tiny_bert(num_labels=2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = full_finetune(model, tokenizer, TEXTS, LABELS, epochs=2, lr=1e-3, batch_size=4,
                           dev_texts=TEXTS[::2], dev_labels=LABELS[::2])  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(result.deltas) == {f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")}
    for name, delta in result.deltas.items():
        weight = dict(result.model.named_modules())[name].weight
        base = dict(model.named_modules())[name].weight
        assert torch.allclose(delta, (weight - base).detach()) and float(delta.abs().max()) > 0
    assert result.best_epoch in (1, 2) and len(result.dev_accuracy) == 2


# ------------------------------------------------------------------ where OSRM's effect comes from


def test_captured_energy_share_hand_cases():
    A = torch.eye(3, 6)  # reads coordinates 0..2
    inside = torch.tensor([[1.0, 2.0, 0, 0, 0, 0]])
    outside = torch.tensor([[0, 0, 0, 1.0, 0, 0]])
    half = torch.tensor([[1.0, 0, 0, 1.0, 0, 0]])
    assert captured_energy_share(A, inside) == pytest.approx(1.0)
    assert captured_energy_share(A, outside) == pytest.approx(0.0)
    assert captured_energy_share(A, half) == pytest.approx(0.5)
    assert captured_energy_share(5 * A, half) == pytest.approx(0.5)  # scale-free
    rows = torch.randn(50, 400, generator=torch.Generator().manual_seed(0))
    random_A = torch.randn(8, 400, generator=torch.Generator().manual_seed(1))
    assert captured_energy_share(random_A, rows) == pytest.approx(8 / 400, rel=0.35)  # r/d at random


def test_mean_pairwise_overlap_of_identical_orthogonal_and_random_subspaces():
    e = torch.eye(8)
    assert mean_pairwise_overlap({"a": {"m": e[:2]}, "b": {"m": 3 * e[:2]}}) == pytest.approx(1.0)
    assert mean_pairwise_overlap({"a": {"m": e[:2]}, "b": {"m": e[2:4]}, "c": {"m": e[4:6]}}) == pytest.approx(0.0)
    assert mean_pairwise_overlap({"a": {"m": e[:2]}}) is None


def test_cli_lists_the_library_inits_and_kinds():
    from merging import cli

    assert cli.TRAIN_INITS == INITS and cli.ZOO_KINDS == KINDS
