"""PEFT's `linear` combination type, reproduced: A and B are averaged separately.

A = Σ sign(λᵢsᵢ)·√|λᵢsᵢ|·Aᵢ and B = Σ √|λᵢsᵢ|·Bᵢ, so B·A = Σᵢ λᵢsᵢBᵢAᵢ + Σ_{i≠j} (cross terms).
Only defined for equal ranks, as in PEFT, and only on factors: it has no dense form, so it cannot run
on DO-Merging's directions. Kept to make the cross terms visible, not to be used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.adapters.lora import LoraModule
from merging.methods.factored import Factored
from merging.methods.registry import Mergekit, Method, MethodArgs, MethodError


def peft_naive(modules: Sequence[LoraModule], weights: Sequence[float], args: MethodArgs) -> Factored:
    device = args.device
    ranks = {m.rank for m in modules}
    if len(ranks) != 1:
        raise MethodError(f"peft_naive needs adapters of one rank, got ranks {sorted(ranks)}")
    A = torch.zeros_like(modules[0].A, dtype=torch.float32, device=device)
    B = torch.zeros_like(modules[0].B, dtype=torch.float32, device=device)
    for module, weight in zip(modules, weights):
        weight_with_scale = float(weight) * module.scale
        root = abs(weight_with_scale) ** 0.5
        sign = 1.0 if weight_with_scale >= 0 else -1.0
        A = A + sign * root * module.A.to(device, torch.float32)
        B = B + root * module.B.to(device, torch.float32)
    return Factored(B, A)


PEFT_NAIVE = Method(
    name="peft_naive",
    label="PEFT naive (A and B separately)",
    description="PEFT's `linear` combination: A = Σ √λᵢsᵢ Aᵢ, B = Σ √λᵢsᵢ Bᵢ. Its product has cross terms "
    "Bᵢ·Aⱼ that no adapter trained: shown to make that visible, not to be used.",
    factored=peft_naive,
    dense_refusal="peft_naive combines A and B separately; it cannot run on DO-Merging directions",
    paper="https://huggingface.co/docs/peft/developer_guides/model_merging",
    mergekit=Mergekit(refusal="peft_naive combines the A and B factors separately; mergekit merges whole weights"),
)
