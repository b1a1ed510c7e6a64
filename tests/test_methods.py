"""Merge methods against hand-checkable cases, invariants, and PEFT as an independent oracle."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging.adapters.lora import Adapter, LoraModule
from merging.engine.merge import merge_adapters
from merging.methods import (
    REGISTRY,
    MethodError,
    concatenate,
    disjoint_mean,
    elect_sign,
    get_method,
    keep_random,
    keep_top_magnitude,
    svd_of_dense,
    svd_of_factors,
)
from merging.recipe.codec import recipe_from_dict
from tests.conftest import TWO_LAYERS, random_adapter


def recipe_for(adapters: list[Adapter], weights=None, **fields):
    weights = weights or [1.0] * len(adapters)
    entries = [{"path": a.name, "weight": w} for a, w in zip(adapters, weights)]
    # the CPU: DARE's expected masks below come from a CPU generator (tests/test_device.py covers CUDA)
    return recipe_from_dict({"adapters": entries, "device": "cpu", **fields})


def merged_delta(merged, module: str) -> torch.Tensor:
    return merged.adapter.modules[module].delta()


def dense_sum(adapters, weights, module):
    return sum(w * a.modules[module].delta() for a, w in zip(adapters, weights))


# ----------------------------------------------------------------------------------------------
# Building blocks on hand-checkable tensors


def test_keep_top_magnitude_keeps_the_largest_entries():
    delta = torch.tensor([[1.0, -5.0], [3.0, -0.5]])
    assert torch.equal(keep_top_magnitude(delta, 0.5), torch.tensor([[0.0, -5.0], [3.0, 0.0]]))
    assert torch.equal(keep_top_magnitude(delta, 1.0), delta)
    assert torch.equal(keep_top_magnitude(delta, 0.1), torch.zeros(2, 2))


def test_elect_sign_total_and_frequency_disagree_where_mass_and_count_differ():
    # one large negative against two small positives
    stacked = torch.tensor([[-10.0], [1.0], [1.0]])
    assert elect_sign(stacked, "total").item() == -1.0
    assert elect_sign(stacked, "frequency").item() == 1.0


def test_disjoint_mean_averages_only_agreeing_nonzero_entries():
    stacked = torch.tensor([[2.0, 0.0, -1.0], [4.0, 3.0, 5.0], [-6.0, 0.0, 1.0]])
    sign = torch.tensor([1.0, 1.0, 1.0])
    # col 0: 2 and 4 agree -> 3; col 1: only 3 -> 3; col 2: 5 and 1 -> 3
    assert torch.allclose(disjoint_mean(stacked, sign), torch.tensor([3.0, 3.0, 3.0]))


def test_ties_hand_example():
    a = torch.tensor([[4.0, -1.0, 0.5, 2.0]])
    b = torch.tensor([[2.0, 3.0, -0.2, -1.0]])
    c = torch.tensor([[-1.0, 2.0, 0.1, -5.0]])
    spec = get_method("ties")
    # density 0.5 keeps 2 of 4 per update: a -> [4,0,0,2], b -> [2,3,0,0], c -> [0,2,0,-5]
    # total sign: [+6, +5, 0 -> +, -3 -> -]; agreeing mean: [3, 2.5, 0, -5]
    result = spec.merge_dense([a, b, c], [1.0, 1.0, 1.0], density=0.5, sign="total")
    assert torch.allclose(result, torch.tensor([[3.0, 2.5, 0.0, -5.0]]))
    # frequency on column 3: votes +1 (a) and -1 (c) -> 0 -> ties go to + -> keeps a's 2
    result = spec.merge_dense([a, b, c], [1.0, 1.0, 1.0], density=0.5, sign="frequency")
    assert torch.allclose(result, torch.tensor([[3.0, 2.5, 0.0, 2.0]]))


def test_ties_weights_enter_before_election_and_scale_the_mean():
    a = torch.tensor([[2.0, -2.0]])
    b = torch.tensor([[2.0, 4.0]])
    spec = get_method("ties")
    result = spec.merge_dense([a, b], [0.5, 0.5], density=1.0)
    assert torch.allclose(result, torch.tensor([[1.0, 2.0]]))  # λ·mean, the paper's θ = λ·τ_m


def test_a_zero_weight_adapter_does_not_vote_in_ties():
    a = torch.tensor([[1.0]])
    b = torch.tensor([[-5.0]])
    result = get_method("ties").merge_dense([a, b], [1.0, 0.0], density=1.0)
    assert torch.allclose(result, torch.tensor([[1.0]]))  # with PEFT's unweighted vote it would be 0


def test_dare_density_one_equals_task_arithmetic(three_adapters):
    weights = [1.0, 0.5, 0.25]
    for method in ("dare_linear", "magnitude_prune"):
        merged = merge_adapters(three_adapters, recipe_for(three_adapters, weights, method=method, density=1.0))
        for module in TWO_LAYERS:
            assert torch.allclose(merged_delta(merged, module), dense_sum(three_adapters, weights, module), atol=1e-5)


def test_dare_keeps_about_density_and_is_unbiased():
    generator = torch.Generator().manual_seed(0)
    delta = torch.ones(200, 200)
    kept = keep_random(delta, 0.3, generator)
    fraction = float((kept != 0).float().mean())
    assert abs(fraction - 0.3) < 0.01
    assert abs(float(kept.mean()) - 1.0) < 0.03  # rescaled by 1/density


def test_dare_is_seeded(three_adapters):
    recipe = recipe_for(three_adapters, method="dare_ties", density=0.5, seed=7)
    first = merge_adapters(three_adapters, recipe)
    second = merge_adapters(three_adapters, recipe)
    other = merge_adapters(three_adapters, recipe_for(three_adapters, method="dare_ties", density=0.5, seed=8))
    module = next(iter(TWO_LAYERS))
    assert torch.equal(merged_delta(first, module), merged_delta(second, module))
    assert not torch.allclose(merged_delta(first, module), merged_delta(other, module))


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(MethodError, match="did you mean 'ties'"):
        get_method("tie")


# ----------------------------------------------------------------------------------------------
# Invariants over whole adapters


@pytest.mark.parametrize("method", [m for m in REGISTRY if m != "peft_naive"])
@pytest.mark.parametrize("rank", [None, 64])
def test_one_adapter_with_weight_one_returns_it(method, rank):
    adapter = random_adapter("only", TWO_LAYERS, rank=3, seed=1)
    merged = merge_adapters([adapter], recipe_for([adapter], method=method, density=1.0, rank=rank))
    for module in TWO_LAYERS:
        assert torch.allclose(merged_delta(merged, module), adapter.modules[module].delta(), atol=1e-5)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "knots"])
def test_ties_of_identical_adapters_returns_the_adapter(method):
    adapter = random_adapter("same", TWO_LAYERS, rank=3, seed=2)
    twins = [adapter, Adapter("twin", adapter.modules), Adapter("triplet", adapter.modules)]
    extra = {"knots_inner": "ties"} if method == "knots" else {}
    merged = merge_adapters(twins, recipe_for(twins, method=method, density=1.0, **extra))
    for module in TWO_LAYERS:
        assert torch.allclose(merged_delta(merged, module), adapter.modules[module].delta(), atol=1e-5)


def test_exact_task_arithmetic_is_the_concatenation_and_equals_the_dense_sum(three_adapters):
    weights = [1.0, -0.5, 2.0]
    merged = merge_adapters(three_adapters, recipe_for(three_adapters, weights))
    for module in TWO_LAYERS:
        out = merged.adapter.modules[module]
        assert out.rank == 10  # 4 + 2 + 4: the exact concatenation
        assert torch.allclose(out.delta(), dense_sum(three_adapters, weights, module), atol=1e-5)
        assert merged.reports[module].path == "factored"
        assert merged.reports[module].energy_kept == 1.0


@pytest.mark.parametrize("method", ["ties", "dare_ties", "magnitude_prune", "dare_linear"])
def test_exact_rank_reproduces_the_dense_merge(method, three_adapters):
    """rank null on a nonlinear method: s·B·A of the output equals the merged dense ΔW."""
    recipe = recipe_for(three_adapters, [1.0, 0.7, 0.3], method=method, density=0.4, seed=3)
    merged = merge_adapters(three_adapters, recipe)
    generator = torch.Generator().manual_seed(3)
    spec = get_method(method)
    for module in TWO_LAYERS:  # modules are merged in this (natural) order, one generator
        deltas = [a.modules[module].delta() for a in three_adapters]
        expected = spec.merge_dense(deltas, [1.0, 0.7, 0.3], generator, density=0.4)
        assert torch.allclose(merged_delta(merged, module), expected, atol=1e-5)


def test_module_missing_from_one_adapter_contributes_zero():
    a = random_adapter("a", TWO_LAYERS, seed=1)
    b = random_adapter("b", {k: v for k, v in TWO_LAYERS.items() if "layer.1" not in k}, seed=2)
    merged = merge_adapters([a, b], recipe_for([a, b], method="ties", density=1.0))
    only_a = "encoder.layer.1.attention.self.query"
    # TIES: b has zeros there, which neither vote nor count in the mean
    assert torch.allclose(merged_delta(merged, only_a), a.modules[only_a].delta(), atol=1e-5)
    assert any("absent from b" in note for note in merged.compatibility.notes)


def test_per_layer_override_changes_only_matching_modules(three_adapters):
    recipe = recipe_from_dict(
        {
            "adapters": [{"path": a.name} for a in three_adapters],
            "overrides": [{"layers": [1], "weights": [0.0, 0.0, 1.0]}],
        }
    )
    merged = merge_adapters(three_adapters, recipe)
    layer0 = "encoder.layer.0.attention.self.query"
    layer1 = "encoder.layer.1.attention.self.query"
    assert torch.allclose(merged_delta(merged, layer0), dense_sum(three_adapters, [1, 1, 1], layer0), atol=1e-5)
    assert torch.allclose(merged_delta(merged, layer1), three_adapters[2].modules[layer1].delta(), atol=1e-5)


def test_regex_override():
    adapters = [random_adapter(n, TWO_LAYERS, seed=i) for i, n in enumerate("ab")]
    recipe = recipe_from_dict(
        {"adapters": [{"path": "a"}, {"path": "b"}], "overrides": [{"match": r"\.value$", "weights": [2.0, 0.0]}]}
    )
    merged = merge_adapters(adapters, recipe)
    value = "encoder.layer.0.attention.self.value"
    assert torch.allclose(merged_delta(merged, value), 2 * adapters[0].modules[value].delta(), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Factored SVD, KnOTS and PEFT's naive combination


@settings(max_examples=25, deadline=None)
@given(
    d_out=st.integers(3, 24),
    d_in=st.integers(3, 24),
    ranks=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    keep=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_factored_svd_equals_dense_svd(d_out, d_in, ranks, keep, seed):
    generator = torch.Generator().manual_seed(seed)
    modules = [
        LoraModule(torch.randn(r, d_in, generator=generator), torch.randn(d_out, r, generator=generator), 0.7)
        for r in ranks
    ]
    weights = [float(w) for w in torch.randn(len(ranks), generator=generator)]
    cat = concatenate(modules, weights, "cpu")
    dense = cat.B @ cat.A
    assert torch.allclose(dense, sum(w * m.delta() for m, w in zip(modules, weights)), atol=1e-4)
    from_factors = svd_of_factors(cat.B, cat.A, keep)
    from_dense = svd_of_dense(dense, keep)
    scale = max(float(dense.abs().max()), 1.0)
    assert torch.allclose(from_factors.B @ from_factors.A, from_dense.B @ from_dense.A, atol=2e-4 * scale)
    assert abs(from_factors.energy_kept - from_dense.energy_kept) < 1e-4
    # Eckart–Young: the kept energy is the share of the top singular values
    S = torch.linalg.svdvals(dense)
    kept = min(keep, S.numel())
    assert abs(from_dense.energy_kept - float((S[:kept] ** 2).sum() / (S**2).sum())) < 1e-4


def test_truncation_reports_energy_kept(three_adapters):
    merged = merge_adapters(three_adapters, recipe_for(three_adapters, rank=2))
    for module in TWO_LAYERS:
        report = merged.reports[module]
        assert report.rank == 2
        assert 0.0 < report.energy_kept < 1.0
        S = torch.linalg.svdvals(dense_sum(three_adapters, [1, 1, 1], module))
        assert report.energy_kept == pytest.approx(float((S[:2] ** 2).sum() / (S**2).sum()), abs=1e-5)


def test_knots_with_task_arithmetic_is_exact(three_adapters):
    weights = [1.0, 0.5, -0.5]
    modules = [a.modules["encoder.layer.0.attention.self.query"] for a in three_adapters]
    result = get_method("knots").merge_factored(modules, weights, inner="task_arithmetic")
    expected = sum(w * m.delta() for m, w in zip(modules, weights))
    assert torch.allclose(result.B @ result.A, expected, atol=1e-5)


def test_knots_factored_equals_knots_dense_with_ties(three_adapters):
    modules = [a.modules["encoder.layer.0.attention.self.value"] for a in three_adapters]
    weights = [1.0, 1.0, 1.0]
    knots = get_method("knots")
    factored = knots.merge_factored(modules, weights, inner="ties", density=0.5, sign="total")
    dense = knots.merge_dense([m.delta() for m in modules], weights, inner="ties", density=0.5, sign="total")
    # singular vectors are defined up to sign, and TIES is equivariant to flipping a row of all blocks
    assert torch.allclose(factored.B @ factored.A, dense, atol=1e-4)


def test_peft_naive_has_cross_terms():
    a = LoraModule(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [0.0]]), 1.0)
    b = LoraModule(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0], [1.0]]), 1.0)
    naive = get_method("peft_naive").merge_factored([a, b], [1.0, 1.0])
    product = naive.B @ naive.A
    assert torch.allclose(product, torch.ones(2, 2))  # the true sum is the identity
    assert not torch.allclose(product, a.delta() + b.delta())


# ----------------------------------------------------------------------------------------------
# PEFT as an independent oracle


class _TwoLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(10, 12)
        self.second = torch.nn.Linear(12, 12)

    def forward(self, x):
        return self.second(self.first(x))


def _peft_model_with_adapters(count: int, rank: int, alpha: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = _TwoLinear()
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["first", "second"], init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(base), config, adapter_name="a0")
    for index in range(1, count):
        model.add_adapter(f"a{index}", config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param))
    return model


def _ours_from_peft(model, names):
    adapters = []
    for name in names:
        modules = {}
        for module_name, module in model.base_model.model.named_modules():
            if hasattr(module, "lora_A") and name in module.lora_A:
                modules[module_name] = LoraModule(
                    module.lora_A[name].weight.detach().clone(),
                    module.lora_B[name].weight.detach().clone(),
                    float(module.scaling[name]),
                )
        adapters.append(Adapter(name, modules))
    return adapters


@pytest.mark.parametrize(
    "ours, theirs, extra, weights",
    [
        ("task_arithmetic", "svd", {}, [1.0, 0.6, 0.3]),
        ("magnitude_prune", "magnitude_prune_svd", {"density": 0.5}, [1.0, 0.6, 0.3]),
        # PEFT elects TIES' sign before weighting, we after (as mergekit): equal on equal weights
        ("ties", "ties_svd", {"density": 0.5}, [0.6, 0.6, 0.6]),
        ("ties", "ties_svd", {"density": 0.5, "sign": "frequency"}, [1.0, 1.0, 1.0]),
    ],
)
def test_matches_peft_add_weighted_adapter(ours, theirs, extra, weights):
    names = ["a0", "a1", "a2"]
    model = _peft_model_with_adapters(3, rank=4, alpha=8)
    peft_extra = {"density": extra["density"]} if "density" in extra else {}
    if "sign" in extra:
        peft_extra["majority_sign_method"] = extra["sign"]
    model.add_weighted_adapter(names, weights, "peft_merged", combination_type=theirs, svd_rank=5, **peft_extra)
    adapters = _ours_from_peft(model, names)
    merged = merge_adapters(adapters, recipe_for(adapters, weights, method=ours, rank=5, **extra))
    for module_name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "peft_merged" in module.lora_A:
            theirs_delta = module.get_delta_weight("peft_merged")
            ours_delta = merged.adapter.modules[module_name].delta()
            assert torch.allclose(ours_delta, theirs_delta, atol=1e-4), module_name


def test_peft_naive_matches_peft_linear():
    names = ["a0", "a1"]
    weights = [0.8, -0.4]
    model = _peft_model_with_adapters(2, rank=4, alpha=8)
    model.add_weighted_adapter(names, weights, "peft_linear", combination_type="linear")
    adapters = _ours_from_peft(model, names)
    merged = merge_adapters(adapters, recipe_for(adapters, weights, method="peft_naive"))
    for module_name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "peft_linear" in module.lora_A:
            assert torch.allclose(
                merged.adapter.modules[module_name].delta(), module.get_delta_weight("peft_linear"), atol=1e-5
            )


def test_concatenation_matches_peft_cat():
    names = ["a0", "a1", "a2"]
    weights = [1.0, 0.5, 2.0]
    model = _peft_model_with_adapters(3, rank=3, alpha=6)
    model.add_weighted_adapter(names, weights, "peft_cat", combination_type="cat")
    adapters = _ours_from_peft(model, names)
    merged = merge_adapters(adapters, recipe_for(adapters, weights))
    for module_name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "peft_cat" in module.lora_A:
            assert torch.allclose(
                merged.adapter.modules[module_name].delta(), module.get_delta_weight("peft_cat"), atol=1e-5
            )


# ----------------------------------------------------------------------------------------------
# The fast paths (used above ~262k entries or from 384 columns) equal the plain reference


def _reference_top_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    k = int(density * delta.numel())
    flat = delta.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat.abs(), k).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(delta.shape)


@pytest.mark.parametrize("density", [0.001, 0.2, 0.5, 0.9])
def test_magnitude_cut_at_scale_equals_topk(density):
    delta = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(1))
    assert torch.equal(keep_top_magnitude(delta, density), _reference_top_magnitude(delta, density))


def test_magnitude_cut_with_ties_keeps_exactly_k():
    delta = torch.randint(-3, 4, (1024, 1024), generator=torch.Generator().manual_seed(2)).float()
    for density in (0.2, 0.5):
        assert int((keep_top_magnitude(delta, density) != 0).sum()) == int(density * delta.numel())


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "magnitude_prune"])
@pytest.mark.parametrize("rule", ["total", "frequency"])
def test_streamed_merge_from_factors_equals_the_dense_merge(method, rule):
    generator = torch.Generator().manual_seed(3)
    modules = [
        LoraModule(torch.randn(16, 640, generator=generator), torch.randn(768, 16, generator=generator), 0.5)
        for _ in range(4)
    ]
    modules.append(None)  # an adapter lacking the module contributes zero
    weights = [0.3, 0.5, 1.0, 0.7, 0.9]
    spec = get_method(method)
    sign = {"sign": rule} if spec.has_param("sign") else {}  # the rule matters only where there is consensus
    dense = [m.delta() if m is not None else torch.zeros(768, 640) for m in modules]
    expected = spec.merge_dense(dense, weights, torch.Generator().manual_seed(5), density=0.4, **sign)
    streamed = spec.merge_streamed(modules, weights, "cpu", torch.Generator().manual_seed(5), density=0.4, **sign)
    assert torch.allclose(streamed, expected, atol=1e-5, rtol=1e-5)


def test_truncated_svd_at_scale_matches_the_full_svd():
    generator = torch.Generator().manual_seed(4)
    modules = [LoraModule(torch.randn(16, 1024, generator=generator), torch.randn(1024, 16, generator=generator), 1.0)
               for _ in range(6)]
    merged = get_method("ties").merge_dense([m.delta() for m in modules], [0.5] * 6, density=0.5)
    fast = svd_of_dense(merged, 16)
    U, S, Vh = torch.linalg.svd(merged, full_matrices=False)
    reference = (U[:, :16] * S[:16]) @ Vh[:16]
    assert float(torch.linalg.matrix_norm(fast.B @ fast.A - reference) / torch.linalg.matrix_norm(reference)) < 1e-3
    assert fast.energy_kept == pytest.approx(float((S[:16] ** 2).sum() / (S**2).sum()), abs=1e-4)
