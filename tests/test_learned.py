"""An adapter that did not learn is flagged wherever it is offered: the rule (merging.lab.learned, the
zoo build's chance_verdict), the catalogue entry that carries it, and the sweep's chance line.

Every manifest and mergescope.json here is written by the test, with hand-picked numbers, so the
verdicts do not depend on which zoo is shipped."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from merging.adapters.lora import save_adapter
from merging.lab import catalog, learned
from merging.lab import chance_badges as badges
from merging.plots import accuracy_bars, sweep_curves, sweep_points
from merging.recipe.codec import AdapterRef, Recipe
from merging.training.zoo import load_zoo
from tests.conftest import TWO_LAYERS, random_adapter

LN2 = math.log(2)


# ----------------------------------------------------------------------------------------------
# The rule


def test_accuracy_within_10_pp_of_the_majority_class_is_at_chance():
    assert "within 10 pp" in learned.verdict(0.55, 0.5, None, 2)
    assert "50.0 %" in learned.verdict(0.5, 0.5, None, 2)  # the tooltip names the accuracy and the majority
    assert learned.verdict(0.61, 0.5, 0.3, 2) is None  # 11 pp above: it learned
    assert learned.verdict(0.30, 1 / 6, 0.9, 6) is None  # 13.3 pp above a six-class majority


def test_a_loss_within_2_percent_of_ln_c_is_at_chance_even_with_no_accuracy():
    assert "ln 2" in learned.verdict(0.9, 0.5, 0.99 * LN2, 2)
    assert learned.verdict(0.9, 0.5, 0.97 * LN2, 2) is None
    assert "ln 6" in learned.verdict(None, None, math.log(6), 6)  # the loss alone can tell
    assert learned.verdict(None, None, 0.1, 2) is None


def test_records_that_cannot_tell_give_no_verdict():
    assert learned.verdict(0.5, None, None, 2) is None  # accuracy without its majority class: unknown
    assert learned.verdict(None, None, LN2, None) is None  # a loss without the number of classes
    assert learned.verdict(None, None, LN2, 1) is None
    assert learned.verdict(True, 0.5, None, 2) is None  # not numbers
    assert learned.verdict(float("nan"), 0.5, float("inf"), 2) is None


def test_a_record_prefers_the_last_epochs_mean_loss_and_keeps_the_builds_own_verdict():
    # the last step's loss (0.7) is noise; the last epoch's mean (0.2) is what the build judges
    assert learned.record_verdict({"single_task_accuracy": 0.9, "final_loss": 0.7, "epoch_losses": [0.5, 0.2]},
                                  0.5, 2) is None
    assert "ln 2" in learned.record_verdict({"single_task_accuracy": 0.9, "final_loss": 0.7}, 0.5, 2)
    built = {"single_task_accuracy": 0.9, "did_not_learn": "on the dev split: accuracy 52.0 % is within 10 pp"}
    assert learned.record_verdict(built, 0.5, 2) == built["did_not_learn"]
    both = learned.record_verdict({**built, "single_task_accuracy": 0.5}, 0.5, 2)
    assert both.startswith("accuracy 50.0 %") and "at build time: on the dev split" in both
    # a mergescope.json names its own majority class and labels
    meta = {"single_task_accuracy": 0.25, "majority_baseline": 0.2, "labels": list("abcde"), "final_loss": 1.0}
    assert "within 10 pp of the majority class (20.0 %)" in learned.record_verdict(meta)


# ----------------------------------------------------------------------------------------------
# The catalogue carries the verdict


def _write(folder: Path, name: str, task: str, init: str = "standard", seed: int = 0, **meta) -> Path:
    adapter = random_adapter(name, TWO_LAYERS, seed=seed)
    return save_adapter(replace(adapter, meta={"task": task, "init": init, **meta}), folder / name)


def _zoo(tmp_path: Path, new_manifest: bool) -> Path:
    """A zoo of one two-class task: a standard adapter that learned and its OSRM twin at chance;
    `new_manifest`: written as the newer build writes it (epoch losses, the build's own verdict)."""
    zoo = tmp_path / "zoo"
    _write(zoo, "movie-standard", "movie", seed=1)
    _write(zoo, "movie-osrm", "movie", "osrm", seed=2)
    learned_entry = {"name": "movie-standard", "task": "movie", "init": "standard", "path": "movie-standard",
                     "single_task_accuracy": 0.715, "final_loss": 0.342}
    chance_entry = {"name": "movie-osrm", "task": "movie", "init": "osrm", "path": "movie-osrm",
                    "single_task_accuracy": 0.5, "final_loss": 0.6957}
    if new_manifest:
        learned_entry.update(epoch_losses=[0.6, 0.34], dev_accuracy=[0.6, 0.7], best_epoch=2)
        chance_entry.update(epoch_losses=[0.694, 0.6931], dev_accuracy=[0.5, 0.5], best_epoch=1,
                            did_not_learn="on the dev split: accuracy 50.0 % is within 10 pp of the majority class")
    manifest = {
        "base_model": "tiny",
        "tasks": [{"name": "movie", "labels": ["neg", "pos"], "majority_baseline": 0.5}],
        "adapters": [learned_entry, chance_entry],
        **({"not_shipped": []} if new_manifest else {}),
    }
    (zoo / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return zoo


@pytest.mark.parametrize("new_manifest", [False, True])
def test_zoo_entries_flag_the_adapter_at_chance_and_only_it(tmp_path, new_manifest):
    entries = {e.name: e for e in catalog.zoo_entries(load_zoo(_zoo(tmp_path, new_manifest)))}
    flagged, fine = entries["movie-osrm"], entries["movie-standard"]
    assert "accuracy 50.0 % is within 10 pp of the majority class (50.0 %)" in flagged.did_not_learn
    assert flagged.majority_baseline == 0.5
    assert fine.did_not_learn is None
    assert badges.labelled(flagged) == f"movie-osrm  {learned.BADGE}" and badges.labelled(fine) == "movie-standard"
    assert badges.learned_text(flagged) == learned.BADGE and badges.learned_text(fine) == "yes"


def test_workspace_adapters_are_judged_by_their_mergescope_json(tmp_path):
    adapters = tmp_path / "adapters"
    _write(adapters, "trained-flat", "spam", labels=["ham", "spam"], single_task_accuracy=0.87,
           majority_baseline=0.86, final_loss=0.4)
    _write(adapters, "trained-good", "spam", labels=["ham", "spam"], single_task_accuracy=0.97,
           majority_baseline=0.86, final_loss=0.05, seed=1)
    _write(adapters, "imported", "spam", seed=2)  # no accuracy recorded: unknown, no badge
    entries = {e.name: e for e in catalog.catalog(tmp_path, None)}
    assert "87.0 %" in entries["trained-flat"].did_not_learn and "86.0 %" in entries["trained-flat"].did_not_learn
    assert entries["trained-good"].did_not_learn is None and badges.learned_text(entries["trained-good"]) == "yes"
    assert entries["imported"].did_not_learn is None and badges.learned_text(entries["imported"]) == "unknown"


def test_a_broken_manifest_field_gives_no_verdict_rather_than_an_error(tmp_path):
    zoo = _zoo(tmp_path, False)
    data = json.loads((zoo / "manifest.json").read_text())
    data["adapters"][1]["final_loss"] = "high"
    data["tasks"][0]["labels"] = "neg,pos"  # not a list: the loss cannot be judged, the accuracy still is
    (zoo / "manifest.json").write_text(json.dumps(data))
    verdicts = learned.manifest_verdicts(zoo)
    assert "ln" not in verdicts["movie-osrm"] and "within 10 pp" in verdicts["movie-osrm"]
    assert learned.manifest_verdicts(tmp_path / "nowhere") == {}


def test_what_a_recipe_merges_includes_the_osrm_twin_at_chance(tmp_path):
    entries = catalog.zoo_entries(load_zoo(_zoo(tmp_path, True)))
    assert badges.at_chance(badges.merged_entries(entries, ["movie-standard"])) == []
    twins = badges.merged_entries(entries, ["movie-standard"], "twins")
    assert [e.name for e in badges.at_chance(twins)] == ["movie-osrm"]
    recipe = Recipe(adapters=(AdapterRef(path=str(entries[0].path), name="movie-standard"),), osrm="twins")
    assert [e.name for e in badges.recipe_entries(entries, [recipe, replace(recipe, osrm="off")])] == [
        "movie-osrm", "movie-standard"
    ]
    assert [e.name for e in badges.run_entries(entries, ["movie-standard"], {"movie-standard": "movie-osrm"})] == [
        "movie-osrm"
    ]
    note = badges.flag_note(twins + twins, "merged here")
    assert note.count("movie-osrm") == 1 and note.startswith("At chance: this adapter merged here") and "50.0 %" in note
    assert badges.flag_note(badges.merged_entries(entries, ["movie-standard"])) is None
    label = badges.option_label(entries)
    assert label("movie-osrm").endswith(learned.BADGE) and label("movie-standard") == "movie-standard"
    assert label("gone") == "gone"
    assert badges.with_badges(["std", "osrm"], entries) == ["std", "osrm ⚠"]


# ----------------------------------------------------------------------------------------------
# The sweep's chance line and its flagged curve


def _results(merged: dict[str, float], majority: dict[str, float]) -> dict:
    return {"tasks": {t: {"merged": m, "single": 0.9, "majority": majority[t]} for t, m in merged.items()},
            "average": {"merged": sum(merged.values()) / len(merged)}}


def test_the_sweep_draws_one_chance_line_per_majority_level_over_the_lambda_range():
    majority = {"movie": 0.5, "spam": 0.5, "question": 1 / 6}
    sweep = [([lam] * 3, _results({"movie": 0.5 + lam / 10, "spam": 0.8, "question": 0.6}, majority))
             for lam in (0.25, 1.0, 1.75)]
    fig = sweep_curves(sweep_points(sweep))
    chance = [t for t in fig.data if t.legendgroup == "chance"]
    assert [t.name for t in chance] == ["chance 17% (majority class: question)",
                                        "chance 50% (majority class: movie, spam)"]
    assert list(chance[1].x) == [0.25, 1.75] and list(chance[1].y) == [0.5, 0.5]
    assert chance[0].y[0] == pytest.approx(1 / 6) and chance[0].line.dash == "dot"
    # a causal sweep's loss curves have no majority class: no chance line
    assert not [t for t in sweep_curves(sweep_points(sweep), metric="loss").data if t.legendgroup == "chance"]
    assert not [t for t in sweep_curves([{"lambda": 1.0, "task": "a", "merged": 0.5}]).data
                if t.legendgroup == "chance"]


def test_a_flagged_sweep_curve_carries_the_badge_and_the_reason():
    sweep = [([lam], _results({"movie": 0.5}, {"movie": 0.5})) for lam in (0.5, 1.0)]
    points = sweep_points(sweep, init="osrm") + sweep_points(sweep, init="standard")
    why = "accuracy 50.0 % is within 10 pp of the majority class (50.0 %)"
    fig = sweep_curves(points, flagged={("movie", "osrm"): why})
    names = [t.name for t in fig.data]
    assert f"movie · osrm {learned.BADGE}" in names and "movie · standard" in names
    flagged = next(t for t in fig.data if t.name == f"movie · osrm {learned.BADGE}")
    assert why in flagged.hovertemplate


def test_sweep_flags_key_the_merged_adapters_by_task_and_init(tmp_path):
    entries = catalog.zoo_entries(load_zoo(_zoo(tmp_path, False)))
    sets = {"standard": {"names": ["movie-standard"]}, "osrm": {"names": ["movie-osrm", "gone"]}}
    flags = badges.sweep_flags(entries, sets)
    assert list(flags) == [("movie", "osrm")] and "50.0 %" in flags[("movie", "osrm")]


def test_the_merge_chart_marks_the_task_whose_adapter_is_at_chance(tmp_path):
    entries = catalog.zoo_entries(load_zoo(_zoo(tmp_path, False)))
    flags = badges.task_flags(entries)
    assert list(flags) == ["movie"] and "50.0 %" in flags["movie"]
    results = _results({"movie": 0.5, "spam": 0.8}, {"movie": 0.5, "spam": 0.6})
    fig = accuracy_bars(results, flagged=flags)
    assert list(fig.layout.xaxis.ticktext) == ["movie ⚠", "spam", "average"]
    assert list(fig.layout.xaxis.tickvals) == list(fig.data[0].x) == ["movie", "spam", "average"]
    assert accuracy_bars(results).layout.xaxis.ticktext is None  # nothing flagged: Plotly's own ticks


def test_every_tour_step_finds_the_catalogue_entry_of_each_adapter_it_merges():
    """The Tour's warning (pages/tour.py) flags what recipe_entries finds: every adapter of every
    step's recipes must be found, or one at chance could go unflagged (structure only: which
    shipped adapters are at chance is not assumed)."""
    from merging.analysis import tour as story
    from merging.training.zoo import REPO_ZOO

    zoo = load_zoo(REPO_ZOO)
    entries = catalog.zoo_entries(zoo)
    tour = story.tour_steps(zoo)
    for index in range(len(tour.steps)):
        recipes = [m.recipe for m in tour.needs(index)]
        found = badges.recipe_entries(entries, recipes)
        assert len(found) == sum(len(r.adapters) for r in recipes), tour.steps[index].key
        twins = [r for r in recipes if r.osrm == "twins"]
        for recipe in twins:  # an OSRM step merges the twins, which are what must be judged
            assert all(e.init == "osrm" for e in badges.recipe_entries(entries, [recipe])), tour.steps[index].key
