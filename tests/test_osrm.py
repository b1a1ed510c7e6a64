"""OSRM: the initialisations solve their objectives, post-hoc projection, input-feature collection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging.adapters.lora import Adapter, LoraModule
from merging.training.osrm import (
    VARIANTS,
    ModuleFeatures,
    collect_input_features,
    osrm_A_for_task,
    osrm_cov_init,
    osrm_init,
    other_task_rows,
    posthoc_adapter,
    posthoc_projection,
    rows_used,
)
from tests.tiny_models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")


def random_orthonormal_rows(rank: int, d: int, generator: torch.Generator) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(d, rank, generator=generator, dtype=torch.float64))
    return Q.T  # (rank, d), orthonormal rows


def assert_orthonormal_rows(A: torch.Tensor) -> None:
    eye = torch.eye(A.shape[0], dtype=torch.float64)
    assert torch.allclose(A.double() @ A.double().T, eye, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# osrm_init


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 30),
    d=st.integers(2, 16),
    rank_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_osrm_init_minimises_projection_of_other_tasks(n, d, rank_fraction, seed):
    rank = max(1, min(d, round(rank_fraction * d)))
    generator = torch.Generator().manual_seed(seed)
    column_scales = torch.rand(d, generator=generator, dtype=torch.float64)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64) * column_scales
    A = osrm_init(X, rank)
    assert A.shape == (rank, d) and A.dtype == torch.float32
    assert_orthonormal_rows(A)

    # The minimum of ‖A·Xᵀ‖²_F over orthonormal A is the sum of the r smallest squared singular
    # values of X, counting d − n zeros when X has fewer rows than columns.
    singular = torch.linalg.svdvals(X)
    squared = torch.cat([singular**2, torch.zeros(max(0, d - n), dtype=torch.float64)])
    theoretical = squared.sort().values[:rank].sum()
    achieved = (A.double() @ X.T).pow(2).sum()
    scale = float((X**2).sum()) + 1.0
    assert abs(float(achieved - theoretical)) <= 1e-5 * scale
    for _ in range(5):
        other = random_orthonormal_rows(rank, d, generator)
        assert float((other @ X.T).pow(2).sum()) >= float(achieved) - 1e-5 * scale


def test_osrm_init_finds_the_null_space_when_there_is_one():
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(5, 40, generator=generator)  # 5 samples in 40 dimensions: a 35-dim null space
    A = osrm_init(X, 8)
    assert_orthonormal_rows(A)
    assert float((A @ X.T).abs().max()) < 1e-5


def test_osrm_init_rejects_bad_input():
    with pytest.raises(ValueError):
        osrm_init(torch.zeros(0, 4), 2)
    with pytest.raises(ValueError):
        osrm_init(torch.zeros(3, 4), 5)
    with pytest.raises(ValueError):
        osrm_init(torch.zeros(4), 1)


# ----------------------------------------------------------------------------------------------
# osrm_cov_init


@settings(max_examples=30, deadline=None)
@given(d=st.integers(2, 16), rank_fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_osrm_cov_init_minimises_the_covariance_objective(d, rank_fraction, seed):
    rank = max(1, min(d, round(rank_fraction * d)))
    generator = torch.Generator().manual_seed(seed)
    column_scales = torch.rand(d, generator=generator, dtype=torch.float64)
    X = torch.randn(3 * d, d, generator=generator, dtype=torch.float64) * column_scales
    C = X.T @ X
    A = osrm_cov_init(C, rank)
    assert A.shape == (rank, d)
    assert_orthonormal_rows(A)
    objective = torch.trace(A.double() @ C @ A.double().T)
    smallest = torch.linalg.eigvalsh(C)[:rank].sum()
    scale = float(torch.trace(C)) + 1.0
    assert abs(float(objective - smallest)) <= 1e-5 * scale
    for _ in range(5):
        other = random_orthonormal_rows(rank, d, generator)
        assert float(torch.trace(other @ C @ other.T)) >= float(objective) - 1e-5 * scale


def test_cov_and_mean_variants_agree_on_the_same_rows():
    """With C = XᵀX both objectives are the same: the two A's span the same subspace."""
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(50, 12, generator=generator, dtype=torch.float64) * torch.linspace(0.1, 3, 12, dtype=torch.float64)
    A_mean = osrm_init(X, 4).double()
    A_cov = osrm_cov_init(X.T @ X, 4).double()
    assert torch.allclose(A_mean.T @ A_mean, A_cov.T @ A_cov, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Post-hoc projection


def _module(d_out=9, d_in=12, rank=3, scale=0.7, seed=0) -> LoraModule:
    generator = torch.Generator().manual_seed(seed)
    return LoraModule(
        torch.randn(rank, d_in, generator=generator),
        torch.randn(d_out, rank, generator=generator),
        scale,
    )


def test_posthoc_projection_projects_onto_the_new_rows():
    module = _module()
    generator = torch.Generator().manual_seed(5)
    A_new = random_orthonormal_rows(4, 12, generator).float()
    projected = posthoc_projection(module, A_new)
    assert projected.scale == 1.0
    assert projected.rank == 4 and projected.shape == module.shape
    assert torch.equal(projected.A, A_new)
    expected = module.delta() @ A_new.T @ A_new
    assert torch.allclose(projected.delta(), expected, atol=1e-5)
    # Idempotent: projecting the projection again changes nothing.
    again = posthoc_projection(projected, A_new)
    assert torch.allclose(again.delta(), projected.delta(), atol=1e-5)


def test_posthoc_projection_is_exact_when_the_update_lies_in_the_new_rows():
    generator = torch.Generator().manual_seed(2)
    A_new = random_orthonormal_rows(5, 12, generator).float()
    # ΔW's rows are combinations of A_new's rows.
    module = LoraModule(torch.randn(3, 5, generator=generator) @ A_new, torch.randn(9, 3, generator=generator), 2.0)
    projected = posthoc_projection(module, A_new)
    assert torch.allclose(projected.delta(), module.delta(), atol=1e-5)


def test_posthoc_projection_with_non_orthonormal_rows_is_still_a_projection():
    module = _module()
    generator = torch.Generator().manual_seed(3)
    A_new = torch.randn(4, 12, generator=generator)
    projected = posthoc_projection(module, A_new)
    P = torch.linalg.pinv(A_new.double()) @ A_new.double()
    assert torch.allclose(projected.delta().double(), module.delta().double() @ P, atol=1e-4)


def test_posthoc_adapter_keeps_heads_and_refuses_missing_rows():
    adapter = Adapter(
        name="t",
        modules={"m1": _module(seed=1), "m2": _module(seed=2)},
        saved_modules={"classifier.weight": torch.ones(2, 9)},
        meta={"task": "t", "labels": ["a", "b"]},
    )
    generator = torch.Generator().manual_seed(0)
    rows = {m: random_orthonormal_rows(3, 12, generator).float() for m in adapter.modules}
    projected = posthoc_adapter(adapter, rows)
    assert set(projected.modules) == {"m1", "m2"}
    assert torch.equal(projected.saved_modules["classifier.weight"], adapter.saved_modules["classifier.weight"])
    assert projected.meta["init"] == "osrm-posthoc" and projected.task == "t"
    assert adapter.meta.get("init") is None  # the source adapter is untouched
    with pytest.raises(ValueError, match="m2"):
        posthoc_adapter(adapter, {"m1": rows["m1"]})


# ----------------------------------------------------------------------------------------------
# Input features of a real (tiny) model


TEXTS = ["good movie", "the film was very bad and boring", "happy", "sports team win the game today"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_bert(num_labels=2, seed=0)


def test_collect_input_features_matches_a_manual_computation(tiny):
    model, tokenizer = tiny
    features = collect_input_features(model, tokenizer, TEXTS, batch_size=4, covariance=True)
    expected_names = {
        f"bert.encoder.layer.{layer}.attention.self.{kind}" for layer in range(2) for kind in ("query", "value")
    }
    assert set(features) == expected_names

    # Layer 0's query sees the embeddings output, which is hidden_states[0].
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the test needs padding"
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[0]
    mask = batch["attention_mask"].bool()
    manual_means = torch.stack([hidden[i][mask[i]].mean(dim=0) for i in range(len(TEXTS))])
    tokens = hidden[mask].double()
    got = features["bert.encoder.layer.0.attention.self.query"]
    assert got.means.shape == (len(TEXTS), model.config.hidden_size)
    assert torch.allclose(got.means, manual_means, atol=1e-5)
    assert torch.allclose(got.second_moment, tokens.T @ tokens, atol=1e-4)
    assert got.tokens == int(mask.sum())
    # query and value read the same input.
    assert torch.allclose(features["bert.encoder.layer.0.attention.self.value"].means, manual_means, atol=1e-5)

    # Padding is masked: one text per batch (no padding at all) gives the same rows.
    unpadded = collect_input_features(model, tokenizer, TEXTS, batch_size=1)
    for name in expected_names:
        assert torch.allclose(unpadded[name].means, features[name].means, atol=1e-5)
        assert unpadded[name].second_moment is None
    assert not model.training


def test_osrm_A_for_task_uses_only_the_other_tasks(tiny):
    model, tokenizer = tiny
    features = {
        "sentiment": collect_input_features(model, tokenizer, ["good movie", "bad film"], covariance=True),
        "topic": collect_input_features(model, tokenizer, ["sports game", "science atom cell"], covariance=True),
    }
    samples = osrm_A_for_task(features, "sentiment", rank=4, variant="osrm-samples")
    for name, rows in samples.items():
        assert rows.shape == (4, model.config.hidden_size)
        # Two "topic" rows in 32 dimensions: A sits in their null space.
        assert float((rows @ features["topic"][name].means.T).abs().max()) < 1e-4
    authors = osrm_A_for_task(features, "sentiment", rank=4)  # the default: the authors' reading
    cov = osrm_A_for_task(features, "sentiment", rank=4, variant="osrm-cov")
    name = next(iter(authors))
    assert_orthonormal_rows(authors[name])
    assert_orthonormal_rows(cov[name])
    with pytest.raises(ValueError, match="other task"):
        osrm_A_for_task({"only": features["topic"]}, "only", rank=2)
    with pytest.raises(ValueError, match="unknown OSRM variant"):
        osrm_A_for_task(features, "sentiment", rank=2, variant="nope")


# ----------------------------------------------------------------------------------------------
# The variants: the authors' reading by default


def _features_of(rows_by_task: dict[str, torch.Tensor]) -> dict[str, dict[str, ModuleFeatures]]:
    """Hand-made per-sample rows (one module, "m") for each task."""
    return {task: {"m": ModuleFeatures(rows, None, rows.shape[0])} for task, rows in rows_by_task.items()}


def test_the_authors_rows_are_one_mean_row_per_other_task():
    # Task b's samples are e1 and e2 (mean (½, ½, 0, 0)); task c's are 2·e3 and 0 (mean e3).
    e = torch.eye(4)
    features = _features_of({"a": e[:1], "b": e[[0, 1]], "c": torch.stack([2 * e[2], torch.zeros(4)])})
    X = other_task_rows([features["b"]["m"], features["c"]["m"]], "osrm")
    assert torch.equal(X, torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    X_samples = other_task_rows([features["b"]["m"], features["c"]["m"]], "osrm-samples")
    assert X_samples.shape == (4, 4)
    # The authors' A for task a: rank 2 in 4 dims minus 2 task rows = exactly the null space,
    # spanned by e4 and (e1 − e2)/√2; it is orthogonal to every other task's mean row.
    A = osrm_A_for_task(features, "a", rank=2)["m"]
    assert_orthonormal_rows(A)
    assert float((A @ X.T).abs().max()) < 1e-6
    null_projector = torch.zeros(4, 4)
    null_projector[3, 3] = 1.0
    null_projector[:2, :2] = torch.tensor([[0.5, -0.5], [-0.5, 0.5]])
    assert torch.allclose(A.T @ A, null_projector, atol=1e-6)
    # Per-sample rows (4 of them in 4 dims) leave no null space: A is the least-variance directions.
    A_samples = osrm_A_for_task(features, "a", rank=2, variant="osrm-samples")["m"]
    assert float((A_samples @ X_samples.T).abs().max()) > 1e-3


def test_the_authors_A_is_orthogonal_to_every_other_tasks_mean_features_on_a_real_model(tiny):
    model, tokenizer = tiny
    texts = {
        "sentiment": ["good movie", "bad film", "great plot"],
        "topic": ["sports game", "science atom cell", "the vote"],
        "spam": ["win a free prize now", "call me later", "free entry"],
    }
    features = {task: collect_input_features(model, tokenizer, t) for task, t in texts.items()}
    A = osrm_A_for_task(features, "sentiment", rank=4)
    for module, rows in A.items():
        for other in ("topic", "spam"):
            mean_row = features[other][module].means.mean(dim=0)
            assert float((rows @ mean_row).abs().max()) < 1e-4 * float(mean_row.norm())
    # Another task's A differs: it avoids other rows.
    B = osrm_A_for_task(features, "topic", rank=4)
    module = next(iter(A))
    assert not torch.allclose(A[module].T @ A[module], B[module].T @ B[module], atol=1e-3)


def test_rows_used_says_what_A_was_computed_from():
    features = _features_of({"a": torch.ones(3, 4), "b": torch.ones(5, 4), "c": torch.ones(2, 4)})
    authors = rows_used(features, "a", "osrm")
    assert authors["variant"] == "osrm" and authors["row_count"] == 2
    assert authors["other_tasks"] == ["b", "c"] and authors["samples_per_task"] == {"b": 5, "c": 2}
    assert rows_used(features, "a", "osrm-samples")["row_count"] == 7
    assert rows_used(features, "a", "osrm-cov")["row_count"] == 7  # tokens (here one per sample)
    assert VARIANTS[0] == "osrm"
    with pytest.raises(ValueError, match="unknown OSRM variant"):
        rows_used(features, "a", "osrm-tasks")
