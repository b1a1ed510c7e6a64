"""Where a model runs: the one place that turns a device choice ("auto", "cpu", "cuda") into a torch device."""

from __future__ import annotations

import torch

from merging.adapters.lora import AdapterError


def resolve_device(choice: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise AdapterError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(choice)
