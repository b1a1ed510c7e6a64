"""The dashboard's recipes, end to end: a hostile share link never breaks the Merge or Sweep page,
and every run the dashboard stores re-merges from its stored recipe alone, with
`python -m merging merge`, to the same body (merging.evaluation.evaluate.modules_fingerprint)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merging.adapters.lora import load_adapter
from merging.cli import main as cli
from merging.evaluation.evaluate import modules_fingerprint
from merging.store.runs import RunStore
from tests.conftest import assert_page_ok, wait_for_job

PAGES = {"merge": "pages/merge.py", "sweep": "pages/sweep.py"}
# MERGESCOPE_LINK_EXAMPLES=1000 for a longer hunt than the suite's 30 links per page

# ----------------------------------------------------------------------------------------------
# Hostile links: random text, random JSON, and valid recipes with one field replaced by anything

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_FIELDS = [
    ("method",), ("parameters",), ("parameters", "density"), ("parameters", "sign"), ("parameters", "inner"),
    ("rank",), ("seed",), ("device",), ("osrm",), ("base_model",), ("dtype",), ("do_merging",),
    ("do_merging", "steps"), ("do_merging", "lr"), ("do_merging", "mu"), ("do_merging", "magnitude"),
    ("overrides",), ("adapters",), ("adapters", 0), ("adapters", 0, "weight"), ("adapters", 0, "name"),
    ("adapters", 0, "path"), ("adapters", 0, "parameters"), ("density",), ("sign",), ("knots_inner",),
    ("osrm_posthoc",),
]


def _valid(method: str) -> dict:
    return {
        "adapters": [{"name": "sms_spam-standard", "weight": 0.5, "parameters": {}},
                     {"name": "question_type-standard", "weight": 1.5}],
        "method": method, "parameters": {}, "rank": 4, "seed": 1, "osrm": "twins",
        "do_merging": {"decouple": True, "steps": 10, "lr": 0.1, "mu": 1.0, "magnitude": "sum"},
        "overrides": [{"layers": [0], "weights": [1.0, 1.0]}],
    }


def _holds(target, step) -> bool:
    if isinstance(step, int):
        return isinstance(target, list) and step < len(target)
    return isinstance(target, dict) and step in target


@st.composite
def _mutated(draw) -> str:
    data = _valid(draw(st.sampled_from(["ties", "knots", "dare_linear", "task_arithmetic", "peft_naive"])))
    for _ in range(draw(st.integers(1, 3))):
        *parents, last = draw(st.sampled_from(_FIELDS))
        target = data
        for step in parents:  # an earlier mutation may have replaced a parent: then skip this one
            target = target[step] if _holds(target, step) else None
        if _holds(target, last) or (isinstance(last, str) and isinstance(target, dict)):
            target[last] = draw(_json)
    return json.dumps(data)


_hostile = st.one_of(
    st.text(max_size=60),
    _json.map(json.dumps),
    _mutated(),
    st.sampled_from([
        '{"adapters":[{"name":"sms_spam-standard","weight":99}]}',
        '{"adapters":[{"name":"sms_spam-standard"}],"density":5}',
        '{"adapters":[{"name":"sms_spam-standard"}],"seed":"abc"}',
        '{"adapters":[{"name":"sms_spam-standard","weight":-1e308}],"rank":1e308}',
        '{"adapters":[{"name":"sms_spam-standard","parameters":{"density":1e-300}}],"method":"ties"}',
        "[" * 3000,
        '{"adapters":[{"name":"sms_spam-standard"}],"seed":' + "9" * 5000 + "}",
    ]),
)


@pytest.mark.parametrize("page", ["merge", "sweep"])
def test_no_query_string_raises_on_the_merge_or_sweep_page(app_test, page):
    at = app_test.switch_page(PAGES[page])

    @settings(max_examples=int(os.environ.get("MERGESCOPE_LINK_EXAMPLES", "30")), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(recipe=_hostile, extra=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20), max_size=2))
    def check(recipe: str, extra: dict) -> None:
        at.session_state[f"_{page}_from_url_done"] = False  # read the link again, as a new session would
        at.query_params.clear()
        for key, value in extra.items():
            at.query_params[key] = value
        at.query_params["recipe"] = recipe
        at.run()
        assert not at.exception, (recipe, [e.value for e in at.exception])

    check()


# ----------------------------------------------------------------------------------------------
# Every stored run re-merges from its recipe alone


def _rerun(record, folder: Path) -> str:
    recipe_file = folder / f"run{record.id}.json"
    recipe_file.write_text(json.dumps(record.recipe))
    out = folder / f"merged{record.id}"
    # the dashboard scores the exact merge; a PEFT output is rank-bounded unless --exact-rank (merging.engine.output_rank)
    assert cli(["merge", str(recipe_file), "--out", str(out), "--exact-rank"]) == 0
    return modules_fingerprint(load_adapter(out).modules)


def test_every_stored_dashboard_run_re_merges_from_its_recipe_to_the_same_body(app_test, tmp_path, capsys):
    # Merges: plain, OSRM twins, OSRM post-hoc (with a stochastic method, DO-Merging and a rank cut)
    at = app_test.run()
    settings_per_run = [
        {"merge_method": "ties", "merge_osrm": "off"},
        {"merge_method": "dare_ties", "merge_osrm": "twins", "merge_seed": 3},
        {"merge_method": "task_arithmetic", "merge_osrm": "posthoc", "do_decouple": True},
        {"merge_method": "knots", "merge_osrm": "off", "merge_exact": False, "merge_rank": 3},
    ]
    for changes in settings_per_run:
        for key, value in changes.items():
            at.session_state[key] = value
        at.run()
        next(b for b in at.button if b.label == "Run merge").click()
        at = wait_for_job(at.run(), "merge")
        assert_page_ok(at)
    # A sweep with the OSRM overlay (twins): two stored runs, each its best point
    at.query_params.clear()  # the Merge page's link would set the Sweep page's method too
    at.switch_page(PAGES["sweep"]).run()
    at.radio(key="sweep_osrm").set_value("twins")
    at.selectbox(key="sweep_method").set_value("dare_linear").run()
    at.number_input(key="sweep_points").set_value(2)
    at.button(key="sweep_run").click().run()
    at = wait_for_job(at, "sweep")
    assert_page_ok(at)

    records = RunStore(tmp_path / "workspace" / "runs.sqlite").list()
    assert sorted(r.kind for r in records) == ["merge"] * 4 + ["sweep"] * 2, [(r.kind, r.recipe["osrm"], r.summary) for r in records]
    assert {r.recipe["osrm"] for r in records} == {"off", "twins", "posthoc"}
    for record in records:
        assert _rerun(record, tmp_path) == record.results["fingerprint"], (record.kind, record.recipe["method"])
    capsys.readouterr()  # the CLI's JSON summaries
