"""mergekit's `dare_linear` and `dare_ties`, merged from a mergekit config, against mergekit's formulas.

The oracle is written here in float64 from mergekit's generalized_task_arithmetic.py and
sparsify.py (rescaled random: Sᵢ = mᵢ ⊙ ΔWᵢ / pᵢ; then Δ = λ·Σ wᵢSᵢ / D, with the sum-consensus mask
and D = Σ wᵢ·[agrees] for dare_ties, D = Σ wᵢ for dare_linear with normalize). The two tools draw
DARE's masks from different generators, so the oracle draws the masks the way mergescope documents
it draws them (one torch generator seeded with the recipe's seed, then, module after module and
adapter after adapter, a uniform draw of the update's shape for each adapter whose density is < 1;
an entry is kept where the draw is < density). The rest — rescale, weights, sign election,
divisor — is mergekit's arithmetic, computed independently of the library; density 1 checks the
deterministic part with no mask at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from merging.adapters.lora import load_adapter
from merging.engine.merge import run_recipe
from merging.recipe.mergekit_config import load_recipe_file
from tests.peft_fixtures import save_lora


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mergekit-dare")
    for seed, name in [(11, "a"), (12, "b"), (13, "c")]:
        save_lora(folder / name, seed=seed)
    return folder


def sources64(folder: Path, names: list[str]) -> list[dict[str, torch.Tensor]]:
    """Each LoRA's ΔW = scale·B·A in float64, from the factors on disk."""
    out = []
    for name in names:
        modules = load_adapter(folder / name).modules
        out.append({k: m.scale * (m.B.double() @ m.A.double()) for k, m in modules.items()})
    return out


def masks_like_mergescope(order: list[str], shapes: dict[str, tuple[int, int]], densities: list[float], seed: int):
    """{module: [keep mask or None per model]} drawn in the order mergescope documents."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name in order:
        masks[name] = [
            None if p >= 1.0 else torch.rand(shapes[name], generator=generator) < p for p in densities
        ]
    return masks


def mergekit_dare(
    deltas: list[torch.Tensor],
    masks: list[torch.Tensor | None],
    weights: list[float],
    densities: list[float],
    *,
    consensus: bool,
    normalize: bool,
    lam: float = 1.0,
) -> torch.Tensor:
    """mergekit's generalized task arithmetic with sparsification 'rescaled_random', in float64."""
    sparse = [d if m is None else d * m.double() / p for d, m, p in zip(deltas, masks, densities)]
    w = torch.tensor(weights, dtype=torch.float64).reshape(-1, 1, 1)
    weighted = torch.stack(sparse) * w
    if consensus:  # get_mask(method="sum"): the sign of the summed mass, ties to +
        majority = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).double()
        agree = weighted.sign() == majority
    else:
        agree = torch.ones_like(weighted, dtype=torch.bool)
    mixed = (weighted * agree).sum(0)
    if normalize:
        divisor = (w * agree).sum(0)
        divisor[divisor.abs() < 1e-8] = 1.0
        mixed = mixed / divisor
    return lam * mixed


def merge_config(folder: Path, name: str, text: str) -> tuple[dict[str, torch.Tensor], int]:
    path = folder / name
    path.write_text(text)
    recipe = load_recipe_file(path)
    merged = run_recipe(recipe)
    return {k: m.delta("cpu").double() for k, m in merged.adapter.modules.items()}, recipe.seed


def assert_matches(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected) and got
    for name, reference in expected.items():
        error = float(torch.linalg.matrix_norm(got[name] - reference) / torch.linalg.matrix_norm(reference))
        assert error < 1e-5, (name, error)


@pytest.mark.parametrize("density_a, density_c", [(0.5, 0.7), (1.0, 1.0)])
def test_a_dare_linear_config_equals_mergekits_formula_with_the_same_masks(loras, density_a, density_c):
    got, seed = merge_config(loras, f"dare-linear-{density_a}.yaml", f"""
merge_method: dare_linear
base_model: tiny-bert
parameters: {{density: {density_a}, normalize: true, lambda: 1.5}}
models:
  - {{model: tiny-bert+a, parameters: {{weight: 1.0}}}}
  - {{model: tiny-bert+c, parameters: {{weight: 3.0, density: {density_c}}}}}
""")
    deltas = sources64(loras, ["a", "c"])
    densities = [density_a, density_c]
    masks = masks_like_mergescope(list(got), {k: tuple(v.shape) for k, v in got.items()}, densities, seed)
    expected = {
        name: mergekit_dare([d[name] for d in deltas], masks[name], [1.0, 3.0], densities,
                            consensus=False, normalize=True, lam=1.5)
        for name in got
    }
    assert_matches(got, expected)
    if density_a < 1.0:  # the masks matter: the unsparsified formula is far away
        plain = {n: mergekit_dare([d[n] for d in deltas], [None, None], [1.0, 3.0], [1.0, 1.0],
                                  consensus=False, normalize=True, lam=1.5) for n in got}
        name = next(iter(got))
        assert float(torch.linalg.matrix_norm(got[name] - plain[name]) / torch.linalg.matrix_norm(plain[name])) > 0.1


@pytest.mark.parametrize("densities", [(0.6, 0.3, 0.9), (1.0, 1.0, 1.0)])
def test_a_dare_ties_config_equals_mergekits_formula_with_the_same_masks(loras, densities):
    global_density = densities[0]
    got, seed = merge_config(loras, f"dare-ties-{densities[1]}.yaml", f"""
merge_method: dare_ties
base_model: tiny-bert
parameters: {{density: {global_density}, normalize: true, lambda: 0.8}}
models:
  - {{model: tiny-bert+a, parameters: {{weight: 0.5}}}}
  - {{model: tiny-bert+b, parameters: {{weight: 0.5, density: {densities[1]}}}}}
  - {{model: tiny-bert+c, parameters: {{weight: 0.5, density: {densities[2]}}}}}
""")
    deltas = sources64(loras, ["a", "b", "c"])
    masks = masks_like_mergescope(list(got), {k: tuple(v.shape) for k, v in got.items()}, list(densities), seed)
    expected = {
        name: mergekit_dare([d[name] for d in deltas], masks[name], [0.5, 0.5, 0.5], list(densities),
                            consensus=True, normalize=True, lam=0.8)
        for name in got
    }
    assert_matches(got, expected)
    # the sign election matters here: the plain weighted sum of the same sparse updates is another matrix
    name = next(iter(got))
    summed = mergekit_dare([d[name] for d in deltas], masks[name], [0.5, 0.5, 0.5], list(densities),
                           consensus=False, normalize=True, lam=0.8)
    assert float(torch.linalg.matrix_norm(got[name] - summed) / torch.linalg.matrix_norm(summed)) > 0.05


def test_the_oracle_is_right_on_a_hand_checked_example():
    x = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([[-1.0, -3.0]], dtype=torch.float64)
    keep_x = torch.tensor([[True, False]])
    # x kept at entry 0 only (÷0.5 → 4), y whole; weights 1, 1; entry 0: 4 vs -1 → + wins → 4/1;
    # entry 1: 0 vs -3 → − wins, only y agrees → -3/1
    ties = mergekit_dare([x, y], [keep_x, None], [1.0, 1.0], [0.5, 1.0], consensus=True, normalize=True)
    assert torch.equal(ties, torch.tensor([[4.0, -3.0]], dtype=torch.float64))
    linear = mergekit_dare([x, y], [keep_x, None], [1.0, 1.0], [0.5, 1.0], consensus=False, normalize=True)
    assert torch.equal(linear, torch.tensor([[1.5, -1.5]], dtype=torch.float64))
