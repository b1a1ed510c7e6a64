"""The Tour as one offline HTML deck: a talk that survives a laptop without Python.

`mergescope tour --export deck.html` (merging/cli.py) measures the tour (or reads what the dashboard
already measured from the workspace's measure cache) and writes one self-contained file:

- plotly.js inlined once (no CDN, no MathJax, no fonts fetched: it opens with the network off);
- one slide per Tour step: its "Step n of N · title", its headline (merging.analysis.headlines, ≤ 15 words),
  its chart (the presentation-mode figure of merging.analysis.tour.figure) and its speaker notes (the full
  sentence of merging.analysis.narrative, with the intervals), hidden until `N` shows them;
- keyboard navigation as on the dashboard: ArrowRight / PageDown / Space next, ArrowLeft / PageUp back,
  Home / End the first / last slide, N the notes; the slide number is kept in the address (#3), so
  a reload stays on the slide. Each chart is drawn when its slide is first shown, at the window's size.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping

from merging.analysis import tour as story

CHART_HEIGHT = 560  # the charts' height in px when the window is not known (it is resized on show)

_STYLE = """
html, body { margin: 0; height: 100%; font-family: "Source Sans Pro", "Helvetica Neue", Arial, sans-serif;
  background: #ffffff; color: #262730; }
.slide { display: none; box-sizing: border-box; height: 100vh; overflow-y: auto; padding: 20px 36px; flex-direction: column; }
.slide.current { display: flex; }
.where { font-size: 20px; color: #555; margin: 0 0 6px 0; }
.headline { font-size: 34px; font-weight: 700; line-height: 1.2; margin: 0 0 10px 0; }
.chart { flex: 1 1 auto; min-height: 300px; }
.notes { display: none; font-size: 20px; line-height: 1.35; border-top: 2px solid #ccc; padding-top: 8px;
  max-height: 30vh; overflow: auto; }
body.notes-on .notes { display: block; }
.foot { font-size: 18px; color: #666; margin-top: 6px; }
"""

_SCRIPT = """
(function () {
  const slides = Array.from(document.querySelectorAll('.slide'));
  const figures = JSON.parse(document.getElementById('figures').textContent);
  const drawn = new Set();
  let current = 0;
  function draw(index) {
    const div = slides[index].querySelector('.chart');
    const figure = figures[index];
    if (!drawn.has(index)) {
      drawn.add(index);
      const layout = Object.assign({}, figure.layout, {autosize: true});
      delete layout.height; delete layout.width;
      Plotly.newPlot(div, figure.data, layout, {displaylogo: false, responsive: true});
    } else {
      Plotly.Plots.resize(div);
    }
  }
  function show(index) {
    current = Math.max(0, Math.min(slides.length - 1, index));
    slides.forEach((s, i) => s.classList.toggle('current', i === current));
    draw(current);
    document.body.setAttribute('data-slide', String(current + 1));
    if (location.hash !== '#' + (current + 1)) history.replaceState(null, '', '#' + (current + 1));
  }
  document.addEventListener('keydown', function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const key = event.key;
    if (key === 'ArrowRight' || key === 'PageDown' || key === ' ') { show(current + 1); }
    else if (key === 'ArrowLeft' || key === 'PageUp') { show(current - 1); }
    else if (key === 'Home') { show(0); }
    else if (key === 'End') { show(slides.length - 1); }
    else if (key === 'n' || key === 'N') { document.body.classList.toggle('notes-on'); draw(current); }
    else { return; }
    event.preventDefault();
  });
  window.addEventListener('resize', function () { draw(current); });
  const start = parseInt((location.hash || '#1').slice(1), 10);
  show(Number.isFinite(start) ? start - 1 : 0);
})();
"""


def slides(tour: story.Tour, measured_by_key: Mapping[str, dict]) -> list[dict]:
    """Each step as {where, headline, notes, figure}: `measured_by_key` maps measurement keys
    (merging.analysis.tour.Measurement.key) to their values."""
    out = []
    count = len(tour.steps)
    for index, step in enumerate(tour.steps):
        measured = {key: measured_by_key[key] for key in step.needs}
        figure, _name = story.figure(step, measured, tour, presentation=True)
        least = int(figure.layout.height or 0) if step.chart == "summary" else 300  # one line per merge
        figure.update_layout(height=max(CHART_HEIGHT, least))
        out.append({
            "where": f"Step {index + 1} of {count} · {step.title.split(' · ', 1)[-1]}",
            "headline": story.headline(step, measured, tour),
            "notes": story.takeaway(step, measured, tour),
            "figure": json.loads(figure.to_json()),
            "least": least,
        })
    return out


def deck_html(tour: story.Tour, measured_by_key: Mapping[str, dict], title: str = "Merging LoRA adapters: the tour",
              eval_limit: int | None = None) -> str:
    """The whole deck as one HTML page (plotly.js inlined)."""
    from plotly.offline import get_plotlyjs

    parts = []
    shown = slides(tour, measured_by_key)
    foot = ("← → / PageUp PageDown / Space: move · N: speaker notes"
            + (f" · quick walk: {eval_limit} evaluation examples per task" if eval_limit else ""))
    for index, slide in enumerate(shown):
        parts.append(
            f'<section class="slide" id="slide-{index + 1}" data-step="{index + 1}">'
            f'<p class="where">{html.escape(slide["where"])}</p>'
            f'<h1 class="headline">{html.escape(slide["headline"])}</h1>'
            f'<div class="chart" id="chart-{index + 1}" style="min-height: {slide["least"]}px"></div>'
            f'<aside class="notes">{html.escape(slide["notes"])}</aside>'
            f'<p class="foot">{html.escape(foot)}</p>'
            "</section>"
        )
    figures = json.dumps([slide["figure"] for slide in shown]).replace("</", "<\\/")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        + "".join(parts)
        + f'<script type="application/json" id="figures">{figures}</script>'
        + f"<script>{_SCRIPT}</script></body></html>"
    )


def write_deck(path, text: str) -> None:
    """Write the deck atomically (a temporary file beside it, renamed over it)."""
    import os
    import tempfile
    from pathlib import Path

    target = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
