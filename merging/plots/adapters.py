"""Figures of the Adapters page: where one adapter's fine-tuning changed the model, layer by layer."""

from __future__ import annotations

import re
from collections.abc import Mapping

import plotly.graph_objects as go

from merging.adapters.lora import layer_of
from merging.plots.style import (
    _PATTERNS,
    PALETTE,
    _no_data,
    _style,
    explained,
)
from merging.plots.values import (
    _finite,
    _layer_label,
    _layer_order,
)


def _module_kind(name: str, layer: int | None) -> str:
    """What a module is inside its block (``attention.self.query``), so blocks can be compared."""
    if layer is not None:
        match = re.search(rf"\.(?:layer|layers|h|blocks)\.{layer}\.(.+)$", f".{name}")
        if match:
            return match.group(1)
    return name


@explained(
    "Size ‖ΔW‖_F of one adapter's update per layer, one bar per module type: "
    "tall bars show where fine-tuning changed the model most."
)
def layer_norms(
    adapter_summary: Mapping,
    title: str | None = None,
    presentation: bool = False,
) -> go.Figure:
    """‖ΔW‖_F of one adapter per transformer block, one bar series per module kind (query, value, ...).

    Input: ``Adapter.summary()`` (``modules[name]["delta_fro_norm"]``, plus rank/shape for the hover).
    Modules outside any block (``layer_of`` is None) go to an ``other`` group under their own name.
    Grouped, not stacked: Frobenius norms of different modules do not add up.
    """
    modules = dict(adapter_summary.get("modules") or {})
    name = adapter_summary.get("name") or "adapter"
    title = title or f"Update size per layer — {name}"
    fig = go.Figure()
    if not modules:
        return _style(_no_data(fig, "the adapter has no LoRA modules"), title, presentation)
    by_kind: dict[str, dict[str, tuple[float | None, list]]] = {}
    for module, info in modules.items():
        layer = layer_of(module)
        kind = _module_kind(module, layer)
        shape = "×".join(map(str, info.get("shape") or []))
        by_kind.setdefault(kind, {})[_layer_label(layer)] = (
            _finite(info.get("delta_fro_norm")), [module, info.get("rank"), shape],
        )
    layers = sorted({label for entries in by_kind.values() for label in entries}, key=_layer_order)
    for i, (kind, entries) in enumerate(by_kind.items()):
        present = [label for label in layers if label in entries]
        fig.add_trace(
            go.Bar(
                name=kind, x=present, y=[entries[label][0] for label in present],
                marker={"color": PALETTE[i % len(PALETTE)], "pattern": {"shape": _PATTERNS[i % len(_PATTERNS)]}},
                customdata=[entries[label][1] for label in present],
                hovertemplate="%{customdata[0]}<br>‖ΔW‖_F: %{y:.6g}<br>rank: %{customdata[1]}"
                "<br>shape: %{customdata[2]}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=layers)
    return _style(fig, title, presentation, x_title="Transformer block (layer index)",
                  y_title="‖ΔW‖_F (Frobenius norm, weight units)")
