"""The compiled loops of the streamed merge (merging/methods/kernels.py) against their torch forms.

Each loop must give the bits its torch form gives: the bracket split against the five-mask torch
split (cut._split), the consensus against consensus.combine_weighted (the per-update form, the
oracle the rest of the suite holds against float64), and a whole streamed merge with the loops
against the same merge with them switched off.
"""

from __future__ import annotations

import pytest
import torch

from merging.adapters.lora import LoraModule
from merging.methods import MethodArgs, get_method, kernels
from merging.methods import cut as cut_module
from merging.methods.consensus import combine_stacked_, combine_weighted


def test_the_loops_are_there():
    """numba is pinned in requirements.txt: a merge without it is right but several times slower."""
    assert kernels.AVAILABLE
    assert kernels.usable(torch.zeros(3)) and not kernels.usable(torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("lo, hi", [(0.5, 1.0), (None, 1.0), (0.5, None), (None, None)])
def test_bracket_split_counts_and_keeps_what_the_torch_split_does(lo, hi):
    generator = torch.Generator().manual_seed(3)
    block = torch.randn(37, 129, generator=generator)
    block[0, :4] = torch.tensor([0.5, -0.5, 1.0, -1.0])  # on both bounds: (lo, hi] takes hi, not lo
    above, inside = kernels.bracket_split(block, lo, hi, torch.empty(block.numel()))
    lo_t = None if lo is None else torch.tensor(lo)
    hi_t = None if hi is None else torch.tensor(hi)
    above_torch, inside_torch = cut_module._split(block.abs(), lo_t, hi_t)
    assert above == above_torch
    assert torch.equal(inside, inside_torch)  # the same values in the same (row-major) order
    if lo is not None and hi is not None:
        assert above == int((block.abs() > hi).sum()) and 1.0 in inside.tolist() and 0.5 not in inside.tolist()


def _stack(n: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    stacked = torch.randn(n, 5, width, generator=generator)
    stacked[stacked.abs() < 0.4] = 0.0  # trimmed entries, as TIES' cut leaves them
    stacked[:, 0, :3] = 0.0  # nobody keeps these entries: they stay 0
    if n > 1:  # a zero vote: the sign goes to +1
        stacked[:, 1, 0] = 0.0
        stacked[0, 1, 0], stacked[1, 1, 0] = 1.25, -1.25
    return stacked


@pytest.mark.parametrize("sign_rule", ["total", "frequency"])
@pytest.mark.parametrize("divide_by", ["count", "weights", "none"])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_the_compiled_consensus_gives_the_per_update_forms_bits(sign_rule, divide_by, n):
    stacked = _stack(n, 211, seed=n)
    weights = [1.0, -0.4, 0.7, 0.0, 2.5, 1.0, 0.3, 1.0][:n]
    weighted = stacked * torch.tensor(weights).view(-1, 1, 1)
    oracle = combine_weighted(list(weighted), True, sign_rule, divide_by, weights)
    out = torch.full(stacked.shape[1:], float("nan"))
    compiled = combine_stacked_(weighted.clone(), True, sign_rule, divide_by, weights, out=out)
    assert compiled is out
    assert torch.equal(compiled, oracle)


def test_the_torch_stacked_form_gives_the_same_bits_where_the_loops_are_not_used(monkeypatch):
    monkeypatch.setattr(kernels, "usable", lambda *tensors: False)
    for sign_rule in ("total", "frequency"):
        for divide_by in ("count", "weights", "none"):
            weights = [1.0, -0.4, 0.7, 2.5]
            weighted = _stack(4, 97, seed=11) * torch.tensor(weights).view(-1, 1, 1)
            oracle = combine_weighted(list(weighted), True, sign_rule, divide_by, weights)
            assert torch.equal(combine_stacked_(weighted.clone(), True, sign_rule, divide_by, weights), oracle)


@pytest.mark.parametrize("name, parameters", [
    ("ties", {"density": 0.5}),
    ("ties", {"density": 0.3, "sign": "frequency", "divide_by": "weights"}),
    ("dare_ties", {"density": 0.6}),
])
def test_a_streamed_merge_with_the_loops_equals_the_merge_without_them(monkeypatch, name, parameters):
    """Large enough (600 × 520) that the cut is bracketed from a sample and split block by block."""
    generator = torch.Generator().manual_seed(5)
    modules = [LoraModule(torch.randn(8, 520, generator=generator), torch.randn(600, 8, generator=generator) * 0.1, 2.0)
               for _ in range(4)]
    modules[1] = None
    weights = [1.0, 0.5, 0.8, -0.3]
    method = get_method(name)

    def merged() -> torch.Tensor:
        args = MethodArgs(method.validate(parameters), (), torch.Generator().manual_seed(9), "cpu")
        return method.streamed(modules, weights, args)

    with_loops = merged()
    monkeypatch.setattr(kernels, "usable", lambda *tensors: False)
    assert torch.equal(with_loops, merged())
