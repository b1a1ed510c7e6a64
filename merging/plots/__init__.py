"""Plotly figures for mergescope: plain data in, a ``plotly.graph_objects.Figure`` out.

Pure functions: no file I/O, no Streamlit, no torch maths. Each takes the JSON-ready structures the
library already produces (``EvaluationResult.to_dict()``, ``MergedAdapter.summary()``,
``Adapter.summary()``, ``metrics.adapter_metrics(...)``, ``OrthogonalizeReport`` fields, ...) so the
UI, the CLI and a stored run can all draw the same chart from the same numbers.

Conventions shared by every figure, so a viewer learns them once:

- Colours come from the Okabe–Ito palette, which stays distinguishable under the common colour-vision
  deficiencies: base = grey, single adapter = blue, merged = orange, majority-class baseline = black.
- Standard LoRA vs OSRM initialisation: solid vs dashed lines (and circle vs square markers), so the
  two can be told apart without colour; where init is the only thing plotted it also gets its own
  colour (standard = blue, OSRM = vermillion).
- Accuracies stay fractions in the data and are shown as percentages (axis tick format), so hover
  values are the stored numbers, not rounded copies.
- Heatmaps of bounded quantities have fixed colour ranges (overlap and accuracy 0..1, cosine −1..1) so
  two heatmaps side by side, or one layer after another on a slider, are comparable.
- ``presentation=True`` enlarges fonts, markers and lines for a talk (one helper, ``_style``).

One module per dashboard page, each figure's how-to-read line written right above its function
(:func:`merging.plots.style.explained`); ``HOW_TO_READ`` maps every figure function's name to that
line, which the UI shows under the chart:

- :mod:`~merging.plots.merge`: accuracy per task, its change, energy kept, DO-Merging's optimisation;
- :mod:`~merging.plots.interference`: magnitude variance, overlap, cosine, sign conflicts, interference,
  cross-task accuracy;
- :mod:`~merging.plots.sweep`: λ sweeps as curves or a heatmap;
- :mod:`~merging.plots.adapters`: one adapter's update per layer;
- :mod:`~merging.plots.runs`: stored runs side by side;
- :mod:`~merging.plots.search`: a λ search's history and parallel coordinates;
- :mod:`~merging.plots.tour`: a fix's gain and cost per task, every merge of the tour with its interval;
- :mod:`~merging.plots.style` (palette, sizes, presentation mode), :mod:`~merging.plots.values` (numbers
  in, plottable values out) and :mod:`~merging.plots.download` (a chart as an HTML file) are shared.

Everything is re-exported here: ``from merging import plots; plots.accuracy_bars(...)``.
"""


from merging.plots.adapters import layer_norms
from merging.plots.download import figure_to_html
from merging.plots.interference import (
    cosine_heatmap,
    cross_task_heatmap,
    interference_decades,
    interference_heatmap,
    magnitude_variance_by_layer,
    overlap_heatmap,
    sign_conflicts_by_layer,
)
from merging.plots.merge import (
    accuracy_bars,
    accuracy_delta,
    cosine_before_after,
    energy_kept,
    orthogonalize_loss,
    rank_truncated,
)
from merging.plots.runs import runs_comparison
from merging.plots.search import best_parameters, optimization_history, parallel_coordinates
from merging.plots.study import magnitude_variance_claims, osrm_mechanism, seed_differences, why_scatter
from merging.plots.style import (
    DIVERGING,
    FONT_SIZE,
    HOW_TO_READ,
    INIT_STYLES,
    OKABE_ITO,
    PALETTE,
    ROLE_COLOURS,
    SEQUENTIAL,
)
from merging.plots.sweep import lambda_heatmap, sweep_curves, sweep_points
from merging.plots.tour import gain_and_cost, merge_summary
from merging.plots.values import has_loss, metric_name, orthogonalize_rows, results_rows, shared_suffix_dropped

__all__ = [
    "ROLE_COLOURS",
    "INIT_STYLES",
    "PALETTE",
    "OKABE_ITO",
    "SEQUENTIAL",
    "DIVERGING",
    "FONT_SIZE",
    "HOW_TO_READ",
    "accuracy_bars",
    "accuracy_delta",
    "energy_kept",
    "rank_truncated",
    "orthogonalize_loss",
    "cosine_before_after",
    "magnitude_variance_by_layer",
    "overlap_heatmap",
    "cosine_heatmap",
    "sign_conflicts_by_layer",
    "interference_heatmap",
    "interference_decades",
    "cross_task_heatmap",
    "sweep_points",
    "sweep_curves",
    "lambda_heatmap",
    "layer_norms",
    "runs_comparison",
    "best_parameters",
    "optimization_history",
    "parallel_coordinates",
    "figure_to_html",
    "metric_name",
    "has_loss",
    "orthogonalize_rows",
    "results_rows",
    "shared_suffix_dropped",
    "gain_and_cost",
    "merge_summary",
    "why_scatter",
    "seed_differences",
    "osrm_mechanism",
    "magnitude_variance_claims",
]
