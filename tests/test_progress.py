"""merging.core.progress: one bar over several phases, by hand-computed thousandths."""

from __future__ import annotations

import pytest

from merging.core.progress import Cancelled, phase_share, step_of, weighted_phases


def _recorder():
    calls = []
    return calls, lambda done, total, what: calls.append((done, total, what))


def test_phase_share_maps_each_of_equal_phases_onto_its_half():
    calls, progress = _recorder()
    phase_share(progress, 0, 2)(1, 4, "merging")  # a quarter of the first half = 1/8
    phase_share(progress, 1, 2)(3, 4, "scoring")  # half + 3/4 of the second half = 7/8
    phase_share(progress, 1, 2)(0, 0, "nothing to do")  # an empty phase counts as finished
    assert calls == [(125, 1000, "merging"), (875, 1000, "scoring"), (1000, 1000, "nothing to do")]


def test_phase_share_without_a_bar_passes_nothing_down():
    assert phase_share(None, 0, 2) is None


def test_weighted_phases_give_each_phase_its_weight_and_skip_weightless_ones():
    calls, progress = _recorder()
    phase = weighted_phases(progress, {"load": 1, "features": 0, "train": 2, "score": 1})
    phase("load")(1, 1, "loaded")  # 1/4
    phase("features")(5, 10, "skipped")  # weight 0: the bar stays at 1/4
    phase("train")(1, 2, "training")  # (1 + 2·½)/4 = 1/2
    phase("score")(1, 1, "done")
    assert calls == [(250, 1000, "loaded"), (250, 1000, "skipped"), (500, 1000, "training"), (1000, 1000, "done")]
    weighted_phases(None, {"a": 1})("a")(1, 1, "no bar: no call, no error")


def test_step_of_counts_in_the_steps_own_units_with_the_steps_label():
    calls, progress = _recorder()
    step_of(progress, 2, 4, "sms_spam (osrm)")(3, 10, "epoch 1")
    assert calls == [(23, 40, "sms_spam (osrm)")]
    step_of(None, 0, 1, "x")(1, 1, "no bar")


def test_a_callback_stops_the_work_by_raising_cancelled():
    def cancel(done, total, what):
        raise Cancelled()

    with pytest.raises(Cancelled):
        phase_share(cancel, 0, 2)(1, 2, "stop")
