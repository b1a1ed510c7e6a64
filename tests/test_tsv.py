"""TSV-Merge against a hand-checkable case, an independent float64 reference, and its invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging.adapters.lora import Adapter, LoraModule
from merging.engine.merge import merge_adapters
from merging.methods import get_method
from merging.recipe.codec import recipe_from_dict
from tests.conftest import TWO_LAYERS, random_adapter

TSV = get_method("tsv")


def tsv_reference(deltas: list[torch.Tensor], weights: list[float], fraction: float = 1.0) -> torch.Tensor:
    """TSV-Merge written independently, in float64, from the paper's equations on dense matrices.

    Per task the top-k SVD (k = int(fraction·min(d)/n), at most the update's rank); the stacked
    U and V made orthonormal by whitening, X (XᵀX)^(-1/2) (the authors' eigendecomposition variant;
    equal to the Procrustes P·Qᵀ when X has full column rank); ΔW = U⊥ Σ V⊥ᵀ.
    """
    n = len(deltas)
    Us, Ss, Vs = [], [], []
    for delta, weight in zip(deltas, weights):
        M = delta.double() * weight
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        rank = int(torch.linalg.matrix_rank(M))
        k = min(max(1, int(fraction * min(M.shape) / n)), rank)
        Us.append(U[:, :k])
        Ss.append(S[:k])
        Vs.append(Vh[:k].T)

    def whiten(X: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(X.T @ X)
        return X @ (vectors @ torch.diag(values.rsqrt()) @ vectors.T)

    return whiten(torch.cat(Us, 1)) @ torch.diag(torch.cat(Ss)) @ whiten(torch.cat(Vs, 1)).T


def exact(module: LoraModule) -> torch.Tensor:
    """ΔW in float64 from the factors: float32 rounding would make a rank-r update full rank."""
    return module.scale * (module.B.double() @ module.A.double())


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a.double() - b.double()) / torch.linalg.matrix_norm(b.double()))


def test_tsv_hand_example_pushes_two_overlapping_directions_apart():
    # ΔW₁ = 2·e₁e₁ᵀ, ΔW₂ = 1·u₂e₂ᵀ with u₂ at 45°: the input directions are orthogonal already, the
    # output directions are not. The nearest orthonormal pair to (0°, 45°) is (−22.5°, 67.5°).
    c = math.cos(math.pi / 4)
    first = LoraModule(A=torch.tensor([[1.0, 0.0]]), B=torch.tensor([[2.0], [0.0]]), scale=1.0)
    second = LoraModule(A=torch.tensor([[0.0, 1.0]]), B=torch.tensor([[c], [c]]), scale=1.0)
    merged = TSV.merge_factored([first, second], [1.0, 1.0])
    a, b = math.radians(-22.5), math.radians(67.5)
    expected = torch.tensor([[2 * math.cos(a), math.cos(b)], [2 * math.sin(a), math.sin(b)]])
    assert torch.allclose(merged.B @ merged.A, expected, atol=1e-6)


def test_tasks_in_orthogonal_subspaces_give_task_arithmetic():
    generator = torch.Generator().manual_seed(0)
    modules, weights = [], [1.0, -0.5, 2.0]
    for i, rank in enumerate([3, 2, 4]):  # task i lives in its own rows and columns
        B = torch.zeros(30, rank)
        A = torch.zeros(rank, 27)
        B[10 * i : 10 * i + 10] = torch.randn(10, rank, generator=generator)
        A[:, 9 * i : 9 * i + 9] = torch.randn(rank, 9, generator=generator)
        modules.append(LoraModule(A, B, 0.5))
    merged = TSV.merge_factored(modules, weights)
    task_arithmetic = sum(w * m.delta() for m, w in zip(modules, weights))
    assert torch.allclose(merged.B @ merged.A, task_arithmetic, atol=1e-5)


MODULES = {"small": (12, 10), "wide": (40, 64), "tall": (96, 48)}


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.1])
def test_tsv_equals_the_float64_reference(fraction):
    adapters = [random_adapter(f"t{i}", MODULES, rank=r, scale=0.5, seed=40 + i) for i, r in enumerate([4, 2, 8])]
    weights = [1.0, 0.6, -0.8]
    for module in MODULES:
        modules = [a.modules[module] for a in adapters]
        reference = tsv_reference([exact(m) for m in modules], weights, fraction)
        factored = TSV.merge_factored(modules, weights, fraction=fraction)
        dense = TSV.merge_dense([m.delta() for m in modules], weights, fraction=fraction)
        assert _relative(factored.B @ factored.A, reference) < 1e-4, module
        assert _relative(dense, reference) < 1e-4, module


def test_tsv_through_merge_adapters_is_exact_in_factored_form_and_keeps_at_most_the_budget():
    adapters = [random_adapter(f"t{i}", MODULES, rank=r, scale=0.5, seed=40 + i) for i, r in enumerate([4, 2, 8])]
    weights = [1.0, 0.6, -0.8]
    recipe = recipe_from_dict({"adapters": [{"path": a.name, "weight": w} for a, w in zip(adapters, weights)],
                               "method": "tsv", "device": "cpu"})
    merged = merge_adapters(adapters, recipe)
    for module, (d_out, d_in) in MODULES.items():
        budget = max(1, min(d_out, d_in) // 3)
        kept = sum(min(budget, r) for r in (4, 2, 8))
        assert merged.reports[module].path == "factored"
        assert merged.adapter.modules[module].rank == kept  # Σ kept ranks, here all independent
        reference = tsv_reference([exact(a.modules[module]) for a in adapters], weights)
        assert _relative(merged.adapter.modules[module].delta(), reference) < 1e-4


def test_identical_adapters_give_the_adapter_and_a_zero_weight_adapter_drops_out():
    adapter = random_adapter("same", TWO_LAYERS, rank=3, seed=2)
    other = random_adapter("other", TWO_LAYERS, rank=3, seed=3)
    module = "encoder.layer.0.attention.self.query"
    m = adapter.modules[module]
    twins = TSV.merge_factored([m, m, m], [1.0, 1.0, 1.0])
    assert torch.allclose(twins.B @ twins.A, m.delta(), atol=1e-5)
    # min(12, 10) / 2 = 5 ≥ rank 3, so the budget does not change between n = 1 and n = 2
    dropped = TSV.merge_factored([m, other.modules[module]], [1.0, 0.0])
    assert torch.allclose(dropped.B @ dropped.A, m.delta(), atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    d_out=st.integers(4, 20),
    d_in=st.integers(4, 20),
    ranks=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    fraction=st.sampled_from([1.0, 0.5, 0.25]),
    seed=st.integers(0, 10_000),
)
def test_tsv_invariants(d_out, d_in, ranks, fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    modules = [LoraModule(torch.randn(r, d_in, generator=generator), torch.randn(d_out, r, generator=generator), 0.7)
               for r in ranks]
    weights = [float(w) for w in torch.rand(len(ranks), generator=generator) + 0.1]
    merged = TSV.merge_factored(modules, weights, fraction=fraction)
    product = merged.B @ merged.A
    budget = max(1, int(fraction * min(d_out, d_in) / len(ranks)))
    assert merged.A.shape[0] <= sum(min(budget, r) for r in ranks)  # rank ≤ Σ kept ranks
    assert bool(torch.isfinite(product).all())
    order = list(reversed(range(len(ranks))))
    swapped = TSV.merge_factored([modules[i] for i in order], [weights[i] for i in order], fraction=fraction)
    scale = max(float(product.abs().max()), 1.0)
    assert torch.allclose(swapped.B @ swapped.A, product, atol=1e-4 * scale)  # the order of tasks is irrelevant
    dense = TSV.merge_dense([m.delta() for m in modules], weights, fraction=fraction)
    assert torch.allclose(dense, product, atol=1e-4 * scale)


def test_tsv_on_do_merging_directions_equals_the_hand_built_decoupled_merge():
    """decouple + orthogonalize + TSV, rebuilt in float64 from independent parts: column magnitudes,
    unit-column directions, the float64 Adam oracle of orthogonalize (test_do_merging_oracle), TSV's
    reference on the directions, unit columns again, times the λ-weighted mean magnitude."""
    from tests.test_do_merging_oracle import orthogonalize_oracle

    adapters = [random_adapter(f"t{i}", TWO_LAYERS, rank=3, seed=50 + i) for i in range(2)]
    weights = [1.0, 0.6]
    recipe = recipe_from_dict({"adapters": [{"path": a.name, "weight": w} for a, w in zip(adapters, weights)],
                               "method": "tsv", "device": "cpu",
                               "do_merging": {"decouple": True, "orthogonalize": True, "steps": 5}})
    merged = merge_adapters(adapters, recipe)
    plain = merge_adapters(adapters, recipe_from_dict({**recipe.to_dict(), "do_merging": {}}))
    for module in TWO_LAYERS:
        delta = merged.adapter.modules[module].delta().double()
        assert merged.reports[module].path == "dense"
        deltas = [exact(a.modules[module]) for a in adapters]
        magnitudes = [d.norm(dim=0) for d in deltas]
        moved, _ = orthogonalize_oracle([d / m for d, m in zip(deltas, magnitudes)], steps=5, lr=0.01, mu=1.0)
        units = [d / d.norm(dim=0) for d in moved]
        direction = tsv_reference(units, weights)
        expected = direction / direction.norm(dim=0) * (sum(w * m for w, m in zip(weights, magnitudes)) / 2)
        assert _relative(delta, expected) < 1e-4, module
        # and DO-Merging changed the merge: plain TSV is another matrix
        assert _relative(plain.adapter.modules[module].delta(), expected) > 1e-2, module


def test_an_all_zero_module_merges_to_zero():
    zero = LoraModule(torch.zeros(2, 10), torch.zeros(12, 2), 1.0)
    merged = TSV.merge_factored([zero, zero], [1.0, 1.0])
    assert torch.equal(merged.B @ merged.A, torch.zeros(12, 10))
    assert isinstance(Adapter("x", {"m": merged.as_module()}), Adapter)
