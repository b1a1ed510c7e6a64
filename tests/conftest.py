"""Shared builders: random adapters in memory and tiny real PEFT adapters on disk."""

from __future__ import annotations

import torch
import pytest

from merging.lora import Adapter, LoraModule


def random_adapter(
    name: str,
    modules: dict[str, tuple[int, int]],
    rank: int = 4,
    scale: float = 0.5,
    seed: int = 0,
) -> Adapter:
    """An adapter with random factors; `modules` maps module name -> (d_out, d_in)."""
    generator = torch.Generator().manual_seed(seed)
    built = {
        module: LoraModule(
            torch.randn(rank, d_in, generator=generator),
            torch.randn(d_out, rank, generator=generator),
            scale,
        )
        for module, (d_out, d_in) in modules.items()
    }
    return Adapter(name=name, modules=built)


TWO_LAYERS = {
    "encoder.layer.0.attention.self.query": (12, 10),
    "encoder.layer.0.attention.self.value": (12, 10),
    "encoder.layer.1.attention.self.query": (12, 10),
}


@pytest.fixture
def three_adapters() -> list[Adapter]:
    return [random_adapter(f"task{i}", TWO_LAYERS, rank=r, seed=i) for i, r in enumerate([4, 2, 4])]
