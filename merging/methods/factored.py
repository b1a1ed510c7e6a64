"""Factored form: a merged module written as B·A (scale 1), and the one merge that is exact in it.

Task arithmetic Σ λᵢsᵢBᵢAᵢ is exactly the concatenation of the scaled factors, of rank Σ rᵢ;
truncating it (or factoring a dense merge) goes through svd.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from merging.adapters.lora import LoraModule


@dataclass(frozen=True)
class Factored:
    """A low-rank matrix B·A (scale 1) with the fraction of its energy a truncation kept."""

    B: torch.Tensor
    A: torch.Tensor
    energy_kept: float = 1.0

    def as_module(self) -> LoraModule:
        return LoraModule(self.A, self.B, 1.0)


def concatenate(modules: Sequence[LoraModule], weights: Sequence[float], device: str | torch.device) -> Factored:
    """Σ λᵢ sᵢ Bᵢ Aᵢ exactly, as [λ₁s₁B₁ … λₙsₙBₙ]·[A₁; …; Aₙ] (rank Σ rᵢ)."""
    Bs = [m.B.to(device, torch.float32) * (m.scale * float(w)) for m, w in zip(modules, weights)]
    As = [m.A.to(device, torch.float32) for m in modules]
    return Factored(torch.cat(Bs, dim=1), torch.cat(As, dim=0))
