"""Tests of merging/analysis/metrics.py: hand-checkable cases, invariants, and factored results against dense ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging.adapters.lora import Adapter, LoraModule
from merging.analysis import metrics as M

FAST = settings(max_examples=25, deadline=None)


def module(B, A, scale: float = 1.0) -> LoraModule:
    return LoraModule(torch.as_tensor(A, dtype=torch.float32), torch.as_tensor(B, dtype=torch.float32), scale)


def dense_as_module(delta) -> LoraModule:
    """A module whose update is exactly `delta` (A = I, B = delta)."""
    delta = torch.as_tensor(delta, dtype=torch.float32)
    return module(delta, torch.eye(delta.shape[1]))


def random_module(gen: torch.Generator, d_out: int, d_in: int, r: int, scale: float = 1.0) -> LoraModule:
    return module(torch.randn(d_out, r, generator=gen), torch.randn(r, d_in, generator=gen), scale)


def close(got, expected, atol: float = 1e-5) -> bool:
    """Nested lists or tensors equal within atol (pytest.approx does not nest)."""
    got, expected = (torch.as_tensor(x, dtype=torch.float64) for x in (got, expected))
    return torch.allclose(got, expected, atol=atol, rtol=0)


shapes = st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 4), st.integers(0, 2**31 - 1))


# ----------------------------------------------------------------------------------------------
# 1. Magnitude variance


def test_column_norms_of_a_single_column_update():
    # ΔW = B A = [[1, 0], [0, 0], [0, 0]]: column 0 has norm 1, column 1 is zero.
    m = module([[1, 0], [0, 1], [0, 0]], [[1, 0], [0, 0]])
    assert M.column_norms(m).tolist() == pytest.approx([1.0, 0.0])
    stats = M.column_norm_stats(m)
    assert stats["mean"] == pytest.approx(0.5)
    assert stats["variance"] == pytest.approx(0.25)  # population: ((0.5)² + (0.5)²) / 2
    assert stats["cv"] == pytest.approx(1.0)


def test_column_norms_use_the_scale():
    # ΔW = 2 · diag(3, 4) = diag(6, 8): c = [6, 8], mean 7, variance 1, cv 1/7.
    m = module(torch.eye(2), [[3, 0], [0, 4]], scale=2.0)
    assert M.column_norms(m).tolist() == pytest.approx([6.0, 8.0])
    stats = M.column_norm_stats(m)
    assert stats["variance"] == pytest.approx(1.0)
    assert stats["cv"] == pytest.approx(1 / 7)


def test_column_norm_stats_of_zero_update_are_zero():
    m = module(torch.zeros(3, 2), torch.randn(2, 4))  # B = 0, as at initialisation
    assert M.column_norm_stats(m) == {"mean": 0.0, "variance": 0.0, "cv": 0.0}


@FAST
@given(shapes)
def test_column_norms_match_dense(shape):
    d_out, d_in, r, seed = shape
    m = random_module(torch.Generator().manual_seed(seed), d_out, d_in, r, scale=0.7)
    dense = m.delta().norm(dim=0)
    assert torch.allclose(M.column_norms(m), dense, rtol=1e-4, atol=1e-5)
    assert M.column_norm_stats(m)["variance"] == pytest.approx(float(dense.var(unbiased=False)), rel=1e-3, abs=1e-5)


def test_norm_variance_across_is_population_variance():
    # Norms 3 and 5: population variance 1 (the unbiased estimate would be 2).
    m3 = dense_as_module([[3.0, 0.0]])
    m5 = dense_as_module([[0.0, 5.0]])
    assert M.norm_variance_across([m3, m5]) == pytest.approx(1.0)
    # An absent module is a zero update: norms 3, 5, 0 → mean 8/3, variance (1/9 + 49/9 + 64/9)/3.
    assert M.norm_variance_across([m3, m5, None]) == pytest.approx(114 / 27)
    assert M.delta_norm(m5) == pytest.approx(5.0)
    assert M.delta_norm(None) == 0.0


@FAST
@given(shapes, st.integers(2, 4))
def test_gram_matrix_matches_dense_inner_products(shape, n):
    d_out, d_in, r, seed = shape
    gen = torch.Generator().manual_seed(seed)
    mods = [random_module(gen, d_out, d_in, 1 + (r + i) % 4, scale=0.5 + i) for i in range(n)]
    dense = torch.stack([m.delta().reshape(-1) for m in mods]).double()
    expected = dense @ dense.T
    got = M.gram_matrix(mods).double()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


# ----------------------------------------------------------------------------------------------
# 2. Subspace overlap


def e(i: int, d: int = 6) -> list[float]:
    return [1.0 if k == i else 0.0 for k in range(d)]


def test_identical_adapters_overlap_fully():
    m = random_module(torch.Generator().manual_seed(0), 5, 6, 3)
    for side in ("input", "output"):
        overlap = M.subspace_overlap_matrix([m, m], side)
        assert torch.allclose(overlap, torch.ones(2, 2), atol=1e-5)
        Q = M.module_subspace(m, side)
        assert torch.allclose(M.principal_angles(Q, Q), torch.zeros(3), atol=1e-3)


def test_orthogonal_coordinate_subspaces():
    # Adapter 1 reads e0, e1 and writes e0, e1; adapter 2 reads e2, e3 and writes e2, e3.
    m1 = module(torch.tensor([e(0), e(1)]).T, [e(0), e(1)])
    m2 = module(torch.tensor([e(2), e(3)]).T, [e(2), e(3)])
    for side in ("input", "output"):
        assert close(M.subspace_overlap_matrix([m1, m2], side), [[1, 0], [0, 1]])
        angles = M.principal_angles(M.module_subspace(m1, side), M.module_subspace(m2, side))
        assert angles.tolist() == pytest.approx([math.pi / 2] * 2, abs=1e-5)


def test_half_shared_and_nested_subspaces():
    e01 = M.orthonormal_basis(torch.tensor([e(0), e(1)]).T)
    e02 = M.orthonormal_basis(torch.tensor([e(0), e(2)]).T)
    e0 = M.orthonormal_basis(torch.tensor([e(0)]).T)
    diagonal = M.orthonormal_basis(torch.tensor([[1.0, 1.0, 0, 0, 0, 0]]).T)
    assert M.subspace_overlap(e01, e02) == pytest.approx(0.5)
    assert M.principal_angles(e01, e02).tolist() == pytest.approx([0.0, math.pi / 2], abs=1e-5)
    assert M.subspace_overlap(e0, e01) == pytest.approx(1.0)  # nested: divided by the smaller rank
    assert M.subspace_overlap(e0, diagonal) == pytest.approx(0.5)
    assert M.principal_angles(e0, diagonal).tolist() == pytest.approx([math.pi / 4], abs=1e-5)


def test_zero_B_has_output_rank_zero_and_overlap_zero():
    A = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    fresh = module(torch.zeros(3, 2), A)  # LoRA at initialisation
    trained = module(torch.randn(3, 2, generator=torch.Generator().manual_seed(2)), A)
    assert M.module_subspace(fresh, "output").shape == (3, 0)
    assert M.module_subspace(fresh, "input").shape == (4, 2)  # A still has rank 2
    out = M.subspace_overlap_matrix([fresh, trained], "output")
    assert close(out, [[0, 0], [0, 1]])
    assert M.principal_angles(M.module_subspace(fresh, "output"), M.module_subspace(trained, "output")).numel() == 0
    # The input side is unaffected by B: the same A gives overlap 1.
    assert M.subspace_overlap_matrix([fresh, trained], "input")[0, 1] == pytest.approx(1.0, abs=1e-5)


def test_numerical_rank_drops_zero_and_repeated_directions():
    a = torch.tensor([1.0, 2.0, 0.0, -1.0, 0.5])
    b = torch.tensor([0.0, 1.0, 3.0, 1.0, -2.0])
    # A zero column before b: unpivoted QR alone would give it a spurious basis vector.
    basis = M.orthonormal_basis(torch.stack([a, torch.zeros(5), b, a + b, 2 * a], dim=1))
    assert basis.shape == (5, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2), atol=1e-5)
    for v in (a, b):
        assert torch.allclose(basis @ (basis.T @ v), v, atol=1e-5)  # the span is exactly {a, b}
    assert M.orthonormal_basis(torch.zeros(5, 3)).shape == (5, 0)


def reference_overlap(M1: torch.Tensor, M2: torch.Tensor) -> float:
    """φ from projectors of dense float64 SVD bases: trace(P₁P₂) / min(k₁, k₂)."""
    bases = []
    for X in (M1.double(), M2.double()):
        U, S, _ = torch.linalg.svd(X, full_matrices=False)
        bases.append(U[:, : int((S > 1e-9 * S.max()).sum())])
    P1, P2 = (Q @ Q.T for Q in bases)
    return float(torch.trace(P1 @ P2)) / min(q.shape[1] for q in bases)


@FAST
@given(st.integers(2, 8), st.integers(2, 8), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_overlap_invariants_and_dense_agreement(d_out, d_in, r1, r2, seed):
    gen = torch.Generator().manual_seed(seed)
    m1, m2 = random_module(gen, d_out, d_in, r1), random_module(gen, d_out, d_in, r2, scale=3.0)
    for side in ("input", "output"):
        overlap = M.subspace_overlap_matrix([m1, m2], side)
        assert torch.equal(overlap, overlap.T)
        assert bool(((overlap >= 0) & (overlap <= 1)).all())
        Q1, Q2 = M.module_subspace(m1, side), M.module_subspace(m2, side)
        assert torch.allclose(Q1.T @ Q1, torch.eye(Q1.shape[1]), atol=1e-4)
        # φ is the mean squared cosine of the principal angles.
        angles = M.principal_angles(Q1, Q2)
        assert float(overlap[0, 1]) == pytest.approx(float(torch.cos(angles).square().mean()), abs=1e-4)
        assert bool(((angles >= 0) & (angles <= math.pi / 2 + 1e-6)).all())
        dense1, dense2 = (m1.A.T, m2.A.T) if side == "input" else (m1.B, m2.B)
        assert float(overlap[0, 1]) == pytest.approx(reference_overlap(dense1, dense2), abs=1e-4)


def test_overlap_ignores_an_invertible_remix_of_the_factors():
    # Same row space of A, different A: overlap 1 on the input side, though ΔW differs.
    gen = torch.Generator().manual_seed(3)
    m1 = random_module(gen, 6, 7, 3)
    mix = torch.randn(3, 3, generator=gen) + 3 * torch.eye(3)
    m2 = module(torch.randn(6, 3, generator=gen), mix @ m1.A)
    assert float(M.subspace_overlap_matrix([m1, m2], "input")[0, 1]) == pytest.approx(1.0, abs=1e-4)
    assert float(M.subspace_overlap_matrix([m1, m2], "output")[0, 1]) < 0.999


# ----------------------------------------------------------------------------------------------
# 3. Task-vector cosine


def test_cosine_identical_negated_orthogonal():
    m = random_module(torch.Generator().manual_seed(4), 4, 5, 2)
    negated = LoraModule(m.A, m.B, -m.scale)
    orthogonal = dense_as_module(torch.zeros(4, 5).index_fill_(1, torch.tensor([0]), 1.0))
    other = dense_as_module(torch.zeros(4, 5).index_fill_(1, torch.tensor([1]), 1.0))
    assert M.cosine(m, m) == pytest.approx(1.0, abs=1e-5)
    assert M.cosine(m, negated) == pytest.approx(-1.0, abs=1e-5)
    assert M.cosine(orthogonal, other) == pytest.approx(0.0, abs=1e-7)


def test_cosine_of_zero_update_is_zero():
    zero = module(torch.zeros(3, 2), torch.randn(2, 4))
    m = random_module(torch.Generator().manual_seed(5), 3, 4, 2)
    assert close(M.cosine_matrix([zero, m, None]), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


@FAST
@given(shapes, st.floats(0.01, 100.0), st.floats(0.01, 100.0))
def test_cosine_matches_dense_and_ignores_scale(shape, s1, s2):
    d_out, d_in, r, seed = shape
    gen = torch.Generator().manual_seed(seed)
    m1, m2 = random_module(gen, d_out, d_in, r), random_module(gen, d_out, d_in, 1 + r % 3)
    x, y = m1.delta().reshape(-1).double(), m2.delta().reshape(-1).double()
    expected = float(x @ y / (x.norm() * y.norm()))
    assert M.cosine(m1, m2) == pytest.approx(expected, abs=1e-4)
    rescaled = M.cosine(LoraModule(m1.A, m1.B, s1), LoraModule(m2.A, m2.B * s2, 1.0))
    assert rescaled == pytest.approx(expected, abs=1e-4)
    matrix = M.cosine_matrix([m1, m2])
    assert torch.equal(matrix, matrix.T)


def test_adapter_cosine_concatenates_modules_and_zero_fills_missing():
    gen = torch.Generator().manual_seed(6)
    q1, v1, q2 = (random_module(gen, 3, 4, 2) for _ in range(3))
    a = Adapter("a", {"layer.0.q": q1, "layer.0.v": v1})
    b = Adapter("b", {"layer.0.q": q2})  # no v: zeros there
    x = torch.cat([q1.delta().reshape(-1), v1.delta().reshape(-1)]).double()
    y = torch.cat([q2.delta().reshape(-1), torch.zeros(12)]).double()
    expected = float(x @ y / (x.norm() * y.norm()))
    matrix = M.adapter_cosine_matrix([a, b])
    assert float(matrix[0, 1]) == pytest.approx(expected, abs=1e-5)
    assert float(matrix[1, 0]) == pytest.approx(expected, abs=1e-5)
    assert torch.diagonal(matrix).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    # Not the mean of per-module cosines: v's zero in b lowers it below cos(q1, q2) in magnitude.
    assert abs(expected) < abs(M.cosine(q1, q2))


# ----------------------------------------------------------------------------------------------
# 4. Sign conflicts


def test_sign_conflicts_identical_and_negated():
    m = random_module(torch.Generator().manual_seed(7), 4, 5, 2)
    negated = LoraModule(m.A, m.B, -m.scale)
    assert M.sign_conflict_rate([m, m]) == 0.0
    assert M.sign_conflict_rate([m, negated]) == 1.0
    assert M.sign_conflict_rate([m, negated], density=0.5) == 1.0  # both keep the same entries


def test_sign_conflict_hand_case_and_denominators():
    m1 = dense_as_module([[1.0, -1.0], [0.0, 2.0]])
    m2 = dense_as_module([[1.0, 1.0], [0.0, -2.0]])
    # Conflicts at (0, 1) and (1, 1); entry (1, 0) is zero in both, so untouched.
    assert M.sign_conflict_rate([m1, m2]) == pytest.approx(2 / 3)
    assert M.sign_conflict_rate([m1, m2], over="all") == pytest.approx(2 / 4)
    # A third adapter that is zero there does not resolve a conflict; one positive, one negative suffice.
    assert M.sign_conflict_rate([m1, m2, None]) == pytest.approx(2 / 3)
    assert M.sign_conflict_rate([m1]) == 0.0


def test_sign_conflict_after_trimming():
    m1 = dense_as_module([[4.0, -1.0], [0.0, 0.0]])
    m2 = dense_as_module([[3.0, 2.0], [0.0, 0.0]])
    assert M.sign_conflict_rate([m1, m2]) == pytest.approx(0.5)
    # density 0.25 of 4 entries keeps one each: 4 and 3, both positive.
    assert M.sign_conflict_rate([m1, m2], density=0.25) == 0.0
    with pytest.raises(ValueError):
        M.sign_conflict_rate([m1, m2], density=0.0)


def test_chance_sign_conflicts_by_hand_for_two_three_and_five_adapters():
    # density 1: an entry is undisputed only when all n signs agree, 2 of the 2ⁿ sign patterns
    assert M.chance_sign_conflict_rate(2) == pytest.approx(0.5)
    assert M.chance_sign_conflict_rate(3) == pytest.approx(0.75)
    assert M.chance_sign_conflict_rate(5) == pytest.approx(1 - 1 / 16)  # ≈ 94 %, not the 50 % of two
    assert M.chance_sign_conflict_rate(1) == 0.0
    # two adapters at density ½: P(both touch) = ¼, then half disagree → ⅛ of all entries;
    # touched = 1 − ¼ = ¾ → ⅛ ÷ ¾ = ⅙
    assert M.chance_sign_conflict_rate(2, 0.5, over="all") == pytest.approx(1 / 8)
    assert M.chance_sign_conflict_rate(2, 0.5) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="adapters"):
        M.chance_sign_conflict_rate(0)


@pytest.mark.parametrize("n, density", [(2, 1.0), (5, 1.0), (5, 0.2), (3, 0.5)])
def test_chance_sign_conflicts_match_the_metric_on_independent_random_adapters(n, density):
    # an independent oracle: the metric itself, measured on random LoRA updates
    gen = torch.Generator().manual_seed(11)
    rates = [M.sign_conflict_rate([random_module(gen, 48, 40, 4) for _ in range(n)], density=density)
             for _ in range(6)]
    assert sum(rates) / len(rates) == pytest.approx(M.chance_sign_conflict_rate(n, density), abs=0.02)


def test_sign_conflicts_trim_with_the_methods_own_keep_top_magnitude():
    from merging.methods.sparsify import keep_top_magnitude

    # ties at the cut: 1, 1, 1 and 2 at density ½ keep 2 and the first 1 (row-major), as TIES would
    m1 = dense_as_module([[1.0, 1.0], [1.0, 2.0]])
    m2 = dense_as_module([[-1.0, 0.0], [0.0, 0.0]])
    kept = keep_top_magnitude(m1.delta(), 0.5)
    assert kept.tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert M.sign_conflict_rate([m1, m2], density=0.5) == pytest.approx(1 / 2)  # (0,0) disputed of (0,0), (1,1)


@FAST
@given(shapes, st.integers(2, 4), st.sampled_from([1.0, 0.5, 0.2]))
def test_sign_conflict_matches_dense_reference(shape, n, density):
    d_out, d_in, r, seed = shape
    gen = torch.Generator().manual_seed(seed)
    mods = [random_module(gen, d_out, d_in, r) for _ in range(n)]
    deltas = []
    for m in mods:
        d = m.delta().reshape(-1)
        k = int(density * d.numel())
        kept = torch.zeros_like(d)
        if k:
            idx = d.abs().argsort(descending=True)[:k]
            kept[idx] = d[idx]
        deltas.append(kept)
    stacked = torch.stack(deltas)
    conflict = (stacked > 0).any(0) & (stacked < 0).any(0)
    touched = (stacked != 0).any(0)
    expected = float(conflict.sum()) / float(touched.sum()) if touched.any() else 0.0
    assert M.sign_conflict_rate(mods, density=density) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------
# 5. Data-parameter interference


def test_interference_hand_case():
    # Adapter 0 is the identity on R²; adapter 1 only acts on feature 1. Task 0 only uses feature 0.
    m0 = dense_as_module(torch.eye(2))
    m1 = dense_as_module([[0.0, 0.0], [0.0, 3.0]])
    X0 = torch.tensor([[1.0, 0.0]])
    X1 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    matrix = M.interference_matrix([m0, m1], [X0, X1])
    # Row 0: adapter 1 ignores task 0 → 0. Row 1: adapter 0 answers with norm √2, adapter 1 with 3√2.
    assert close(matrix, [[1.0, 0.0], [1 / 3, 1.0]])


def test_interference_zero_own_response_gives_inf_and_nan():
    m0 = dense_as_module([[0.0, 0.0], [0.0, 1.0]])  # ignores feature 0
    m1 = dense_as_module(torch.eye(2))
    m2 = dense_as_module([[0.0, 0.0], [0.0, 5.0]])
    X0 = torch.tensor([[1.0, 0.0]])
    X = torch.tensor([[0.0, 1.0]])
    matrix = M.interference_matrix([m0, m1, m2], [X0, X, X])
    assert math.isnan(float(matrix[0, 0])) and math.isinf(float(matrix[0, 1])) and math.isnan(float(matrix[0, 2]))


@FAST
@given(shapes, st.integers(2, 3), st.integers(1, 6))
def test_interference_matches_dense_and_has_unit_diagonal(shape, n, tokens):
    d_out, d_in, r, seed = shape
    gen = torch.Generator().manual_seed(seed)
    mods = [random_module(gen, d_out, d_in, r, scale=0.5 + i) for i in range(n)]
    # Features may carry batch dimensions; they are flattened to (n, d_in).
    feats = [torch.randn(2, tokens, d_in, generator=gen) for _ in range(n)]
    matrix = M.interference_matrix(mods, feats).double()
    assert torch.allclose(matrix.diagonal(), torch.ones(n, dtype=torch.float64), atol=1e-5)
    for i in range(n):
        X = feats[i].reshape(-1, d_in)
        own = (mods[i].delta() @ X.T).norm()
        for j in range(n):
            expected = float((mods[j].delta() @ X.T).norm() / own)
            assert float(matrix[i, j]) == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_interference_refuses_mismatched_features():
    m = dense_as_module(torch.eye(2))
    with pytest.raises(ValueError):
        M.interference_matrix([m, m], [torch.ones(1, 2)])
    with pytest.raises(ValueError):
        M.interference_matrix([m], [torch.ones(1, 3)])


# ----------------------------------------------------------------------------------------------
# Per layer, scale and the CLI's dict


def test_layer_means_group_by_block_in_numeric_order():
    values = {"enc.layer.10.q": 5.0, "enc.layer.0.q": 1.0, "enc.layer.0.v": 3.0, "pooler.dense": 7.0}
    means = M.layer_means(values)
    assert list(means) == [0, 10, None]
    assert means == {0: 2.0, 10: 5.0, None: 7.0}
    tensors = M.layer_means({"layer.1.a": torch.zeros(2, 2), "layer.1.b": torch.ones(2, 2)})
    assert torch.equal(tensors[1], torch.full((2, 2), 0.5))


def test_factored_metrics_never_form_the_dense_update():
    # d = 3·10⁵: a dense d × d float32 update would need 360 GB, so these only pass from the factors.
    gen = torch.Generator().manual_seed(8)
    d = 300_000
    m1, m2 = (module(torch.randn(d, 2, generator=gen), torch.randn(2, d, generator=gen)) for _ in range(2))
    assert -1.0 <= M.cosine(m1, m2) <= 1.0
    assert M.column_norms(m1).shape == (d,)
    overlap = M.subspace_overlap_matrix([m1, m2], "input")
    # float32 dot products over 3·10⁵ terms lose up to ~1e-3; at real widths (≤ 10⁴) about 1e-6.
    assert float(overlap[0, 0]) == pytest.approx(1.0, abs=2e-3) and float(overlap[0, 1]) < 0.01
    matrix = M.interference_matrix([m1, m2], [torch.randn(3, d, generator=gen), torch.randn(3, d, generator=gen)])
    assert float(matrix[0, 0]) == pytest.approx(1.0)


def test_low_precision_factors_are_computed_in_float32():
    gen = torch.Generator().manual_seed(9)
    m = random_module(gen, 4, 5, 2)
    half = LoraModule(m.A.to(torch.bfloat16), m.B.to(torch.bfloat16), m.scale)
    norms = M.column_norms(half)
    assert norms.dtype == torch.float32
    assert torch.allclose(norms, half.delta().norm(dim=0), rtol=1e-4)


def zoo() -> list[Adapter]:
    gen = torch.Generator().manual_seed(10)
    names = ["enc.layer.0.attn.q", "enc.layer.0.attn.v", "enc.layer.1.attn.q"]
    a = Adapter("a", {n: random_module(gen, 4, 6, 2, scale=2.0) for n in names})
    b = Adapter("b", {n: a.modules[n] for n in names[:2]})  # same as a where present; lacks layer 1
    c = Adapter("c", {n: LoraModule(m.A, m.B, -m.scale) for n, m in a.modules.items()})  # negated a
    return [a, b, c]


def test_adapter_metrics_is_json_and_reads_right():
    calls = []
    result = M.adapter_metrics(zoo(), progress=lambda done, total, what: calls.append((done, total, what)))
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN or inf
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)] and calls[2][2] == "enc.layer.1.attn.q"
    assert result["adapters"] == ["a", "b", "c"]
    assert result["missing"] == {"enc.layer.1.attn.q": ["b"]}
    assert list(result["modules"]) == ["enc.layer.0.attn.q", "enc.layer.0.attn.v", "enc.layer.1.attn.q"]
    q0 = result["modules"]["enc.layer.0.attn.q"]
    assert q0["layer"] == 0
    assert close(q0["cosine"], [[1, 1, -1], [1, 1, -1], [-1, -1, 1]])
    assert close(q0["input_overlap"], [[1.0] * 3] * 3)
    assert q0["sign_conflict_rate"] == 1.0  # c opposes a and b everywhere
    assert q0["norm_variance_across"] == pytest.approx(0.0, abs=1e-3)
    assert len(q0["input_angles"][0][1]) == 2
    q1 = result["modules"]["enc.layer.1.attn.q"]
    assert q1["delta_norm"][1] == 0.0 and q1["cosine"][1] == [0.0, 0.0, 0.0]
    assert q1["norm_variance_across"] > 0
    # Layer 0 averages its two modules; layer 1 has one.
    layer0, layer1 = result["layers"]["0"], result["layers"]["1"]
    assert layer0["modules"] == 2 and layer1["modules"] == 1
    v0 = result["modules"]["enc.layer.0.attn.v"]
    for key in ("column_norm_cv", "delta_norm"):
        assert layer0[key] == pytest.approx([(x + y) / 2 for x, y in zip(q0[key], v0[key])])
    assert "input_angles" not in layer0
    assert result["adapter_cosine"][0][2] == pytest.approx(-1.0, abs=1e-5)


def test_adapter_metrics_refuses_mismatched_shapes():
    gen = torch.Generator().manual_seed(11)
    a = Adapter("a", {"layer.0.q": random_module(gen, 4, 6, 2)})
    b = Adapter("b", {"layer.0.q": random_module(gen, 4, 5, 2)})
    with pytest.raises(ValueError):
        M.adapter_metrics([a, b])


def test_by_layer_matrices_average_the_block():
    adapters = zoo()
    names = ["enc.layer.0.attn.q", "enc.layer.0.attn.v", "enc.layer.1.attn.q"]
    q0, v0, q1 = (M.modules_at(adapters, name) for name in names)
    cos = M.cosine_matrix_by_layer(adapters)
    assert list(cos) == [0, 1]
    assert torch.allclose(cos[0], (M.cosine_matrix(q0) + M.cosine_matrix(v0)) / 2)
    assert torch.allclose(cos[1], M.cosine_matrix(q1))
    out = M.subspace_overlap_by_layer(adapters, "output")
    assert torch.allclose(out[1], M.subspace_overlap_matrix(q1, "output"))
    assert float(out[1][1, 1]) == 0.0  # b lacks the layer-1 module: rank 0


def test_interference_from_moments_matches_features():
    gen = torch.Generator().manual_seed(12)
    mods = [random_module(gen, 5, 4, 2, scale=1.0 + i) for i in range(3)]
    feats = [torch.randn(7, 4, generator=gen) for _ in range(3)]
    from_features = M.interference_matrix(mods, feats)
    # Any positive multiple of XᵀX gives the same ratios.
    moments = [X.T @ X / (i + 1) for i, X in enumerate(feats)]
    assert torch.allclose(M.interference_from_moments(mods, moments), from_features, rtol=1e-4)
    with pytest.raises(ValueError):
        M.interference_from_moments(mods, [torch.eye(3)] * 3)


def test_interference_by_layer_groups_modules_and_averages_all():
    from merging.training.osrm import ModuleFeatures
    from tests.conftest import TWO_LAYERS, random_adapter

    adapters = [random_adapter(f"t{i}", TWO_LAYERS, seed=i) for i in range(2)]
    for index, adapter in enumerate(adapters):
        adapter.meta["task"] = f"task{index}"
    generator = torch.Generator().manual_seed(5)
    features = {
        f"task{i}": {m: ModuleFeatures(torch.randn(7, 10, generator=generator), None, 0) for m in TWO_LAYERS}
        for i in range(2)
    }
    result = M.interference_by_layer(adapters, features, "means")
    assert set(result) == {"0", "1", "all"}
    per_module = {
        m: M.interference_matrix([a.modules[m] for a in adapters], [features[f"task{i}"][m].means for i in range(2)])
        for m in TWO_LAYERS
    }
    layer0 = [m for m in TWO_LAYERS if ".0." in m]
    assert torch.allclose(result["0"], sum(per_module[m] for m in layer0) / len(layer0))
    assert torch.allclose(result["all"], sum(per_module.values()) / len(per_module))
    assert torch.allclose(torch.diagonal(result["all"]), torch.ones(2))
    with pytest.raises(ValueError, match="no input features"):
        M.interference_by_layer(adapters, {"task0": features["task0"]}, "means")
