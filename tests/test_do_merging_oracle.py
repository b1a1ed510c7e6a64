"""DO-Merging's orthogonalize step and its decoupled merge against an independent float64 oracle.

The oracle is written here from the objective stated in merging/methods/do_merging.py, with nothing taken
from the library: each direction scaled to unit Frobenius norm, perturbations δᵢ (held in units of
1/√numel) moved by Adam (β = 0.9, 0.999, ε = 1e-8, bias-corrected, from δ = 0) down the analytic
gradient of  Σ_{i<j} ⟨Xᵢ,Xⱼ⟩²/(‖Xᵢ‖²‖Xⱼ‖²) + μ Σᵢ‖δᵢ‖²,  Xᵢ = Dᵢ + δᵢ,  then scaled back. The gradient
is derived by hand (no autograd), the optimiser is written out (no torch.optim). On top, the
properties the step promises: the cosines fall, each direction's norm barely moves, and with
decouple every merged column has exactly the merged magnitude.
"""

from __future__ import annotations

import pytest
import torch

from merging.adapters.lora import Adapter, LoraModule
from merging.engine.merge import merge_adapters
from merging.methods.do_merging import orthogonalize
from merging.recipe.codec import recipe_from_dict


def interference_and_gradient(X: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Σ_{i<j} c_ij with c_ij = g_ij²/(s_i s_j), g = XXᵀ, s_i = g_ii; and ∂/∂X by hand:
    ∂c_ij/∂X_i = 2 g_ij/(s_i s_j) · (X_j − g_ij X_i / s_i), and the same with i, j swapped."""
    n = X.shape[0]
    gram = X @ X.T
    s = torch.diagonal(gram)
    loss = 0.0
    grad = torch.zeros_like(X)
    for i in range(n):
        for j in range(i + 1, n):
            g = gram[i, j]
            loss += float(g * g / (s[i] * s[j]))
            factor = 2 * g / (s[i] * s[j])
            grad[i] += factor * (X[j] - g * X[i] / s[i])
            grad[j] += factor * (X[i] - g * X[j] / s[j])
    return loss, grad


def orthogonalize_oracle(directions: list[torch.Tensor], steps: int, lr: float, mu: float):
    """(moved directions, loss per step) in float64."""
    shape = directions[0].shape
    flat = torch.stack([d.double().reshape(-1) for d in directions])
    norms = flat.norm(dim=1, keepdim=True)
    base = flat / norms
    unit = base.shape[1] ** -0.5
    step = torch.zeros_like(base)
    m = torch.zeros_like(base)
    v = torch.zeros_like(base)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    losses = []
    for t in range(1, steps + 1):
        delta = step * unit
        interference, grad_x = interference_and_gradient(base + delta)
        losses.append(interference + mu * float((delta * delta).sum()))
        grad = unit * (grad_x + 2 * mu * delta)  # chain rule through δ = step·unit
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        step = step - lr * m_hat / (v_hat.sqrt() + eps)
    moved = ((base + step * unit) * norms).reshape(len(directions), *shape)
    return list(moved.unbind(0)), losses


def cosines64(matrices) -> torch.Tensor:
    flat = torch.stack([m.double().reshape(-1) for m in matrices])
    flat = flat / flat.norm(dim=1, keepdim=True)
    return flat @ flat.T


def alike_directions(seed: int, shape=(8, 6), n: int = 3, spread: float = 0.4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(*shape, generator=generator)
    return [shared + spread * torch.randn(*shape, generator=generator) for _ in range(n)]


def test_the_hand_gradient_matches_finite_differences():
    X = torch.stack([d.reshape(-1) for d in alike_directions(0, (3, 2))]).double()
    _, grad = interference_and_gradient(X)
    h = 1e-6
    for index in [(0, 0), (1, 3), (2, 5)]:
        up, down = X.clone(), X.clone()
        up[index] += h
        down[index] -= h
        numeric = (interference_and_gradient(up)[0] - interference_and_gradient(down)[0]) / (2 * h)
        assert abs(numeric - float(grad[index])) < 1e-6


def test_two_orthogonal_directions_have_no_gradient_and_do_not_move():
    first = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    second = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    moved, losses = orthogonalize_oracle([first, second], steps=10, lr=0.05, mu=1.0)
    assert losses == [0.0] * 10
    assert torch.equal(moved[0], first.double()) and torch.equal(moved[1], second.double())
    library, report = orthogonalize([first, second], steps=10, lr=0.05, mu=1.0)
    assert torch.allclose(library[0], first) and torch.allclose(library[1], second)
    assert report.loss == pytest.approx([0.0] * 10, abs=1e-12)


@pytest.mark.parametrize("shape, n, steps, lr, mu", [((8, 6), 3, 50, 0.01, 1.0), ((12, 5), 4, 80, 0.02, 0.1)])
def test_orthogonalize_equals_the_float64_adam_oracle(shape, n, steps, lr, mu):
    directions = alike_directions(1, shape, n)
    expected, expected_loss = orthogonalize_oracle(directions, steps, lr, mu)
    moved, report = orthogonalize(directions, steps=steps, lr=lr, mu=mu)
    for got, want in zip(moved, expected):
        assert float((got.double() - want).norm() / want.norm()) < 1e-4
    assert report.loss == pytest.approx(expected_loss, rel=1e-4, abs=1e-6)
    # what the step promises, on the oracle's own numbers
    before, after = cosines64(directions), cosines64(expected)
    off = ~torch.eye(n, dtype=torch.bool)
    assert float(after[off].abs().max()) < float(before[off].abs().min())  # every pair interferes less
    for original, out in zip(directions, expected):  # and each direction keeps its size (μ's price)
        assert abs(float(out.norm() / original.double().norm()) - 1.0) < 0.1


def test_decoupled_orthogonalized_task_arithmetic_equals_the_oracle_and_keeps_the_merged_magnitudes():
    """decouple + orthogonalize over task arithmetic, one module, rebuilt by hand in float64:
    column magnitudes mᵢ, unit-column directions, the oracle's orthogonalize, unit columns again,
    Σλᵢ Dᵢ renormalised to unit columns, times Σλᵢmᵢ/n."""
    generator = torch.Generator().manual_seed(5)
    shared_B, shared_A = torch.randn(10, 2, generator=generator), torch.randn(2, 7, generator=generator)
    modules = [
        LoraModule(shared_A + 0.5 * torch.randn(2, 7, generator=generator),
                   shared_B + 0.5 * torch.randn(10, 2, generator=generator), scale)
        for scale in (0.5, 2.0, 1.0)
    ]
    adapters = [Adapter(name=f"t{i}", modules={"layer.0.q": m}) for i, m in enumerate(modules)]
    weights = [0.7, 1.0, 0.4]
    options = {"decouple": True, "orthogonalize": True, "steps": 40, "lr": 0.01, "mu": 1.0}
    recipe = recipe_from_dict({"adapters": [{"path": a.name, "weight": w} for a, w in zip(adapters, weights)],
                               "method": "task_arithmetic", "device": "cpu", "do_merging": options})
    got = merge_adapters(adapters, recipe).adapter.modules["layer.0.q"].delta().double()

    deltas = [m.scale * (m.B.double() @ m.A.double()) for m in modules]
    magnitudes = [d.norm(dim=0) for d in deltas]
    units = [d / mag for d, mag in zip(deltas, magnitudes)]
    moved, _ = orthogonalize_oracle(units, steps=40, lr=0.01, mu=1.0)
    moved = [d / d.norm(dim=0) for d in moved]
    direction = sum(w * d for w, d in zip(weights, moved))
    direction = direction / direction.norm(dim=0)
    magnitude = sum(w * mag for w, mag in zip(weights, magnitudes)) / len(weights)
    expected = direction * magnitude
    assert float((got - expected).norm() / expected.norm()) < 1e-4
    # magnitude preserved: every merged column is as long as the λ-weighted mean of the columns
    assert torch.allclose(got.norm(dim=0), magnitude, rtol=1e-4)
