"""Progress reporting for long work (training, merging, scoring, sweeps): one callback type,
one way to stop, and the arithmetic that maps a phase's own progress onto one shared bar.

A progress callback is ``progress(done, total, what)``. Library functions call it as they go and
never draw anything: the CLI turns it into a text bar, the dashboard into ``st.progress``. Work
that runs in phases (load → collect features → train → score) gives each phase a share of one bar
so the bar only moves forward. A callback may raise :class:`Cancelled` to stop the work; every
function that takes a callback is written so that a cancel leaves nothing half-done behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

Progress = Callable[[int, int, str], None]  # (done, total, what) -> None

# Phase shares are reported in thousandths of the whole bar: fine enough for any progress bar.
_RESOLUTION = 1000


class Cancelled(Exception):
    """Raised from a progress callback to stop long work; nothing half-done is kept."""


def phase_share(progress: Progress | None, phase: int, phases: int) -> Progress | None:
    """Map one of `phases` equal phases' progress (done/total) onto its share of the whole bar.

    None stays None, so a caller without a bar passes nothing further down.
    """
    if progress is None:
        return None

    def report(done: int, total: int, what: str) -> None:
        fraction = (phase + (done / total if total else 1.0)) / phases
        progress(int(fraction * _RESOLUTION), _RESOLUTION, what)

    return report


def weighted_phases(progress: Progress | None, weights: Mapping[str, float]) -> Callable[[str], Progress]:
    """One progress bar over named phases of unequal length: ``phase(name)`` gives the callback for
    that phase's share (its weight over the sum of weights; a weight of 0 skips the phase)."""
    total = sum(weights.values()) or 1.0
    starts, running = {}, 0.0
    for key, weight in weights.items():
        starts[key] = running
        running += weight

    def phase(key: str) -> Progress:
        def report(done: int, steps: int, what: str) -> None:
            if progress is not None:
                fraction = (starts[key] + weights[key] * (done / steps if steps else 1.0)) / total
                progress(min(int(fraction * _RESOLUTION), _RESOLUTION), _RESOLUTION, what)

        return report

    return phase


def step_of(progress: Progress | None, step: int, steps: int, what: str) -> Progress:
    """Step `step` of `steps` equal steps (one adapter of a zoo, say), in the step's own units:
    the step's (done, total) becomes (step·total + done, steps·total), labelled `what`."""

    def report(done: int, total: int, _what: str) -> None:
        if progress is not None:
            progress(step * total + done, steps * total, what)

    return report
