"""The CPU merge's thread plan (merging/methods/blocks.py): row blocks on workers, one thread per op.

The streamed merge must give the same result whatever runs it: the block workers (2, 3) against the
plain loop with torch's own threads, bit for bit, on shapes cut into many blocks; and TIES against a
float64 oracle written here (trim, elect the sign of the sum, disjoint mean). A cut with a tie budget
carried from block to block keeps the ordered loop.
"""

from __future__ import annotations

import pytest
import torch

from merging.adapters.lora import LoraModule
from merging.engine.merge import merge_adapters
from merging.methods import MethodArgs, get_method
from merging.methods import task_arithmetic as ta
from merging.methods.blocks import BIG_STEP, block_map, cpu_merge_threads, threads_for
from merging.methods.cut import cut_of_factors


def _modules(n: int, d_out: int, d_in: int, rank: int = 4, seed: int = 0) -> list[LoraModule]:
    g = torch.Generator().manual_seed(seed)
    return [LoraModule(torch.randn(rank, d_in, generator=g), torch.randn(d_out, rank, generator=g) * 0.1, 1.5)
            for _ in range(n)]


def _streamed(name: str, modules, weights, seed: int = 7, **parameters) -> torch.Tensor:
    method = get_method(name)
    args = MethodArgs(method.validate(parameters), (), torch.Generator().manual_seed(seed), "cpu")
    return method.streamed(modules, weights, args)


@pytest.fixture
def many_blocks(monkeypatch):
    monkeypatch.setitem(ta._BLOCK_BYTES, "cpu", 16 << 10)  # a few rows per block: dozens of blocks


@pytest.mark.parametrize("name, parameters", [
    ("ties", {"density": 0.5}),
    ("ties", {"density": 0.3, "sign": "frequency"}),
    ("dare_ties", {"density": 0.6}),
    ("magnitude_prune", {"density": 0.4}),
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.1}),
])
@pytest.mark.parametrize("workers", [2, 3])
def test_block_workers_give_the_one_thread_loop_bit_for_bit(many_blocks, name, parameters, workers):
    modules = _modules(4, 96, 80)
    modules[2] = None  # an adapter without the module contributes zero (and still draws DARE's mask)
    weights = [1.0, 0.7, 1.0, -0.4]
    plain = _streamed(name, modules, weights, **parameters)
    threads = torch.get_num_threads()
    with cpu_merge_threads("cpu", workers=workers):
        assert torch.get_num_threads() == 1
        pooled = _streamed(name, modules, weights, **parameters)
    assert torch.get_num_threads() == threads
    assert torch.equal(pooled, plain)


def test_ties_on_block_workers_matches_a_float64_oracle(many_blocks):
    modules = _modules(5, 64, 72, seed=3)
    with cpu_merge_threads("cpu", workers=2):
        merged = _streamed("ties", modules, [1.0] * 5, density=0.5)
    deltas = [m.scale * (m.B.double() @ m.A.double()) for m in modules]
    trimmed = []
    for delta in deltas:
        flat = delta.reshape(-1)
        keep = torch.zeros(flat.shape, dtype=torch.bool)
        keep[torch.topk(flat.abs(), int(0.5 * flat.numel())).indices] = True
        trimmed.append(torch.where(keep, flat, 0.0).reshape(delta.shape))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
    agree = stacked * sign > 0
    oracle = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
    # float32 products of rank-4 factors: a few roundings of each entry (no entry sits at the cut here)
    assert torch.allclose(merged.double(), oracle, rtol=1e-5, atol=1e-6 * float(oracle.abs().max()))


def test_a_tie_budget_carried_across_blocks_keeps_the_ordered_loop(many_blocks):
    """Equal magnitudes at the cut: only the first `ties` of them (row-major) are kept, which needs
    the blocks in order; the workers must not run such a merge out of order."""
    A = torch.ones(1, 40)
    B = torch.ones(60, 1)
    modules = [LoraModule(A, B, 1.0), LoraModule(A, -B * 0.5, 1.0)]
    cut = cut_of_factors(B, A, 1000, [(i, min(i + 7, 60)) for i in range(0, 60, 7)])
    assert not cut.all_ties
    plain = _streamed("ties", modules, [1.0, 1.0], density=1000 / 2400)
    with cpu_merge_threads("cpu", workers=2):
        pooled = _streamed("ties", modules, [1.0, 1.0], density=1000 / 2400)
    assert torch.equal(pooled, plain)
    assert int((plain != 0).sum()) == 1000  # exactly k kept, ties broken by position


def test_merge_adapters_restores_the_callers_threads_and_gives_the_same_merge(many_blocks, tmp_path):
    from merging.adapters.lora import Adapter
    from merging.recipe.codec import recipe_from_dict

    adapters = [Adapter(name=f"a{i}", modules={"m": m}, saved_modules={}, base_model=None, config={}, meta={})
                for i, m in enumerate(_modules(3, 96, 80, seed=11))]
    recipe = recipe_from_dict({"adapters": [{"path": str(tmp_path / f"a{i}"), "name": f"a{i}"} for i in range(3)],
                               "method": "ties", "density": 0.5})
    threads = torch.get_num_threads()
    merged = merge_adapters(adapters, recipe)
    assert torch.get_num_threads() == threads
    expected = _streamed("ties", [a.modules["m"] for a in adapters], [1.0] * 3, density=0.5)
    # the PEFT output is the SVD at numerical rank of the same dense merge
    assert torch.allclose(merged.adapter.modules["m"].delta(), expected, atol=1e-5 * float(expected.abs().max()))


def test_block_map_keeps_order_and_threads_for_raises_threads_only_for_big_steps():
    blocks = [(i, i + 1) for i in range(20)]
    caller = torch.get_num_threads()
    with cpu_merge_threads("cpu", workers=2):
        assert block_map(lambda b: b[0] * 2, blocks) == [i * 2 for i in range(20)]
        with threads_for(BIG_STEP - 1):
            assert torch.get_num_threads() == 1
        with threads_for(BIG_STEP):
            assert torch.get_num_threads() == caller
    outside = torch.get_num_threads()
    with threads_for(BIG_STEP):
        assert torch.get_num_threads() == outside
    with cpu_merge_threads("cpu", workers=2), cpu_merge_threads("cpu"):  # nested: the outer's workers
        assert block_map(lambda b: __import__("threading").current_thread().name, blocks[:4])[0].startswith("merge-block")
    assert torch.get_num_threads() == outside


def test_ties_at_the_cut_spread_over_blocks_run_on_workers_and_keep_the_dense_merges_entries(many_blocks):
    """Ties at a cut found from the factors (a sample brackets it): each block is told its share of
    the tie budget, so the blocks need no order, and the merge keeps exactly what the dense one does."""
    d_out, d_in = 600, 500  # 300 000 entries: the cut is bracketed from a sample
    B = (torch.arange(d_out) % 300 + 1).float().unsqueeze(1)  # 300 levels, each in two rows 300 apart
    A = torch.ones(1, d_in)
    k = 150_000 - 700  # the cut falls inside a level: 300 of its 1000 equal entries are kept
    blocks = [(start, min(start + 7, d_out)) for start in range(0, d_out, 7)]
    cut = cut_of_factors(B, A, k, blocks)
    assert not cut.all_ties and cut.block_ties is not None
    assert sum(kept for _, kept in cut.block_ties) == cut.ties and sum(equal for equal, _ in cut.block_ties) == cut.ties_total
    assert len([1 for equal, _ in cut.block_ties if equal]) == 2  # the tied rows lie in two blocks
    modules = [LoraModule(A, B, 1.0), LoraModule(A.flip(1) * 0.5, -B.flip(0), 1.0)]
    density = k / (d_out * d_in)
    plain = _streamed("ties", modules, [1.0, 0.8], density=density)
    with cpu_merge_threads("cpu", workers=2):
        pooled = _streamed("ties", modules, [1.0, 0.8], density=density)
    assert torch.equal(pooled, plain)
    method = get_method("ties")
    args = MethodArgs(method.validate({"density": density}), (), torch.Generator().manual_seed(7), "cpu")
    dense = method.dense([m.B @ m.A * m.scale for m in modules], [1.0, 0.8], args)
    assert torch.equal(plain, dense)  # the same k entries kept, ties broken by position


def _adapters_with_modules(count: int, names: list[str], seed: int):
    from merging.adapters.lora import Adapter

    g = torch.Generator().manual_seed(seed)
    return [Adapter(name=f"a{i}", modules={n: LoraModule(torch.randn(4, 80, generator=g), torch.randn(96, 4, generator=g) * 0.1, 1.5)
                                           for n in names}, saved_modules={}, base_model=None, config={}, meta={})
            for i in range(count)]  # fmt: skip


@pytest.mark.parametrize("method, extra", [("ties", {"density": 0.5, "rank": 6}), ("dare_ties", {"density": 0.6}),
                                           ("task_arithmetic", {"rank": 3})])  # fmt: skip
def test_the_pipelined_merge_gives_the_one_step_merge_module_by_module(monkeypatch, tmp_path, method, extra):
    """merge_adapters factors a module on its own thread while it merges the next: the same modules,
    in the same order, with DARE's draws in module order, as merging each module whole."""
    import merging.engine.merge as engine
    from merging.recipe.codec import recipe_from_dict

    names = [f"layers.{i}.q_proj" for i in range(5)]
    adapters = _adapters_with_modules(3, names, seed=4)
    recipe = recipe_from_dict({"adapters": [{"path": str(tmp_path / f"a{i}"), "name": f"a{i}"} for i in range(3)],
                               "method": method, "seed": 3, **extra})  # fmt: skip
    monkeypatch.setattr(engine, "usable_cores", lambda: 2)
    seen = []
    pipelined = merge_adapters(adapters, recipe, progress=lambda i, total, what: seen.append(what))
    assert seen == names + ["done"]
    assert list(pipelined.adapter.modules) == names
    monkeypatch.setattr(engine, "usable_cores", lambda: 1)  # the one-step loop
    plain = merge_adapters(adapters, recipe)
    for name in names:
        got, expected = pipelined.adapter.modules[name].delta(), plain.adapter.modules[name].delta()
        assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max())), name
        assert pipelined.reports[name] == plain.reports[name]


def test_every_factorisation_of_the_pipeline_runs_on_one_torch_thread(monkeypatch, tmp_path):
    """A fresh thread starts at the process's default thread count, not the caller's one: without a
    setting of its own the pipeline's first SVD ran on every core and the rest on one, so the first
    module's bits depended on the machine. Pipelined, every module is bit for bit the one-thread
    loop's (on a one-core machine both are one thread anyway)."""
    import merging.engine.merge as engine
    from merging.adapters.lora import Adapter
    from merging.recipe.codec import recipe_from_dict

    g = torch.Generator().manual_seed(11)
    names = [f"layers.{i}.q_proj" for i in range(3)]
    adapters = [Adapter(name=f"a{i}", modules={n: LoraModule(torch.randn(8, 384, generator=g) * 0.05,
                                                             torch.randn(384, 8, generator=g) * 0.05, 2.0)
                                               for n in names}, saved_modules={}, base_model=None, config={}, meta={})
                for i in range(5)]  # fmt: skip
    recipe = recipe_from_dict({"adapters": [{"path": str(tmp_path / f"a{i}"), "name": f"a{i}"} for i in range(5)],
                               "method": "ties", "density": 0.5})  # fmt: skip
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(engine, "usable_cores", lambda: 1)
        one_thread = merge_adapters(adapters, recipe)
        torch.set_num_threads(2)  # the caller's count; the pipeline gives each side one
        monkeypatch.setattr(engine, "usable_cores", lambda: 2)
        pipelined = merge_adapters(adapters, recipe)
    finally:
        torch.set_num_threads(before)
    for name in names:
        assert torch.equal(pipelined.adapter.modules[name].A, one_thread.adapter.modules[name].A), name
        assert torch.equal(pipelined.adapter.modules[name].B, one_thread.adapter.modules[name].B), name


def test_a_cancel_while_a_module_is_factored_stops_the_merge_and_leaves_no_thread(monkeypatch, tmp_path):
    import threading

    import merging.engine.merge as engine
    from merging.core.progress import Cancelled
    from merging.recipe.codec import recipe_from_dict

    names = [f"layers.{i}.q_proj" for i in range(4)]
    adapters = _adapters_with_modules(2, names, seed=5)
    recipe = recipe_from_dict({"adapters": [{"path": str(tmp_path / f"a{i}"), "name": f"a{i}"} for i in range(2)],
                               "method": "ties", "density": 0.5})  # fmt: skip
    monkeypatch.setattr(engine, "usable_cores", lambda: 2)

    def progress(index, total, what):
        if index == 2:  # module 1 is being factored on its thread
            raise Cancelled()

    threads = torch.get_num_threads()
    with pytest.raises(Cancelled):
        merge_adapters(adapters, recipe, progress=progress)
    assert torch.get_num_threads() == threads
    assert not [t for t in threading.enumerate() if t.name.startswith("merge-factor")]
