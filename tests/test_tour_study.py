"""The Tour's seed-study steps (why, seeds, mechanism): present only with a study, written from its
numbers, refusing a stale one in words, each with a chart."""

from __future__ import annotations

import pytest

from merging.analysis import tour as story
from merging.analysis.headlines import MAX_WORDS, words
from merging.training.zoo import load_zoo
from tests.study_fixtures import zoo_with_synthetic_study


@pytest.fixture
def zoo_with_study(tiny_zoo, tmp_path):
    return zoo_with_synthetic_study(tiny_zoo, tmp_path / "zoo")


def test_study_steps_appear_only_with_a_study(tiny_zoo, zoo_with_study):
    plain = [s.key for s in story.tour_steps(load_zoo(tiny_zoo)).steps]
    assert not {"why", "seeds", "mechanism"} & set(plain)
    keys = [s.key for s in story.tour_steps(load_zoo(zoo_with_study)).steps]
    assert keys.index("signs") < keys.index("why") < keys.index("seeds") < keys.index("mechanism") < keys.index("summary")
    titles = [s.title for s in story.tour_steps(load_zoo(zoo_with_study)).steps]
    assert [int(t.split(" · ")[0]) for t in titles] == list(range(1, len(titles) + 1))


def test_study_steps_say_what_the_study_measured(zoo_with_study):
    tour = story.tour_steps(load_zoo(zoo_with_study))
    value = story.measure(tour.measurements[story.STUDY], lab=None)
    measured = {story.STUDY: value}
    steps = {s.key: s for s in tour.steps}
    seeds_text = story.takeaway(steps["seeds"], measured, tour)
    assert "paired over 5 seeds" in seeds_text and "task arithmetic λ = 1 +10.0 pp" in seeds_text
    assert "OSRM better" in seeds_text and "unclear" in seeds_text  # λ = 1 survives; λ = 0.5 (no difference) does not
    head = story.headline(steps["seeds"], measured, tour)
    assert head == "Over 5 seeds, OSRM's merges: 2 better, 0 worse, 4 unclear"  # ta_1 vs both baselines
    why = story.headline(steps["why"], measured, tour)
    assert why.startswith("More input disturbance, more loss: r = ")
    mechanism = story.takeaway(steps["mechanism"], measured, tour)
    assert "0.0 %" in mechanism and "share one subspace" in mechanism  # overlap 0.98 ≫ 8/384
    for key in ("why", "seeds", "mechanism"):
        assert words(story.headline(steps[key], measured, tour)) <= MAX_WORDS
        figure, name = story.figure(steps[key], measured, tour, presentation=True)
        assert len(figure.data) >= 1 and name in ("why_scatter", "seed_differences", "osrm_mechanism")


def test_a_stale_study_is_named_not_shown(zoo_with_study):
    manifest = zoo_with_study / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"created"', '"created_again"', 1))
    tour = story.tour_steps(load_zoo(zoo_with_study))
    value = story.measure(tour.measurements[story.STUDY], lab=None)
    steps = {s.key: s for s in tour.steps}
    assert "stale" in story.takeaway(steps["seeds"], {story.STUDY: value}, tour)
    assert story.headline(steps["why"], {story.STUDY: value}, tour) == "The seed study is not available"
