"""AppTest: pinning the third run as baseline names it after the third run, not after the name field's
value of an earlier run (issue 18: "'run 1' (run 3)")."""

from __future__ import annotations

from merging.store.runs import RunStore
from tests.conftest import wait_for_job


def _click_run(at):
    next(b for b in at.button if b.label == "Run merge").click()
    return at.run()


def test_pinning_run_3_names_it_run_3_and_a_typed_name_belongs_to_its_run(app_test, tmp_path):
    at = wait_for_job(_click_run(app_test.run()), "merge")
    assert at.text_input(key="merge_baseline_name").value == "run 1"
    at.text_input(key="merge_baseline_name").set_value("typed for run 1").run()
    at = wait_for_job(_click_run(at), "merge")
    at = wait_for_job(_click_run(at), "merge")
    ids = sorted(r.id for r in RunStore(tmp_path / "workspace" / "runs.sqlite").list())
    assert len(ids) == 3
    third = ids[-1]
    assert at.text_input(key="merge_baseline_name").value == f"run {third}"
    at.button(key="merge_pin").click().run()
    assert not at.exception and not at.error
    assert at.query_params["baseline"] in (str(third), [str(third)])
    assert "baseline_name" not in at.query_params  # no name typed: none kept in the link
    captions = [c.value for c in at.caption if c.value.startswith("Baseline: ")]
    assert captions and captions[0].startswith(f"Baseline: run {third} — "), captions
    assert not any("'run " in c for c in captions)
