"""The λ search on causal tasks (issue 19, item 1): a tiny Llama with two LoRA adapters, each with
its evaluation file in the recipe (tests/causal_workspace.py).

Without a `dev` file the search carves a seeded sample of each evaluation file for its trials and
reports on the other rows; with one, it chooses λ on the dev file and reports on the whole
evaluation file, and a row in both is refused. The completion loss is an objective to minimise. The
dev loss of the first trial (uniform λ = 1) is checked against plain transformers on the dev rows.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from merging.cli import main
from merging.recipe.codec import RecipeError, recipe_from_dict
from merging.search.split import plan_splits
from merging.search.study import SearchError, run_search
from merging.tasks.split import carve_dev_rows
from tests.causal_fixtures import hand_loss_and_greedy, model_with_updates
from tests.causal_workspace import TASKS, build_causal_workspace
from tests.test_search import local_ray  # noqa: F401  (the Ray fixture of the search tests)

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_causal_workspace(tmp_path_factory.mktemp("causal-search"))


def recipe_data(workspace, dev: dict | None = None) -> dict:
    adapters = []
    for task in TASKS:
        entry = {"path": str(workspace["adapters"][task]), "name": f"{task}-lora", "eval": str(workspace["evals"][task])}
        if dev and task in dev:
            entry["dev"] = str(dev[task])
        adapters.append(entry)
    return {"adapters": adapters, "base_model": str(workspace["model"]), "device": "cpu"}


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_carved_dev_rows_are_seeded_at_most_half_and_disjoint_from_the_report_rows():
    dev, rest = carve_dev_rows(10, 64, seed=3)
    assert len(dev) == 5 and sorted(dev + rest) == list(range(10)) and not set(dev) & set(rest)
    assert carve_dev_rows(10, 64, seed=3) == (dev, rest)
    assert carve_dev_rows(10, 64, seed=4)[0] != dev
    assert len(carve_dev_rows(10, 2, seed=0)[0]) == 2
    with pytest.raises(ValueError, match="at least 2"):
        carve_dev_rows(1, 4)


def test_the_recipe_keeps_a_dev_file_round_trip_and_refuses_one_without_eval(workspace, tmp_path):
    data = recipe_data(workspace, dev={"copy": tmp_path / "copy-dev.jsonl"})
    recipe = recipe_from_dict(data)
    assert recipe.adapters[0].dev == str(tmp_path / "copy-dev.jsonl") and recipe.adapters[1].dev is None
    again = recipe_from_dict(recipe.to_dict())
    assert again == recipe and again.adapters[0].dev == recipe.adapters[0].dev
    assert recipe_from_dict(json.loads(recipe.to_json())) == recipe
    assert type(recipe).from_url(recipe.to_url()).adapters[0].dev == recipe.adapters[0].dev
    bad = recipe_data(workspace)
    bad["adapters"][0] = {"path": bad["adapters"][0]["path"], "dev": "dev.jsonl"}
    with pytest.raises(RecipeError, match=r"adapters\[0\]\.dev.*needs the task's evaluation file"):
        recipe_from_dict(bad)
    bad["adapters"][0] = {"path": data["adapters"][0]["path"], "eval": "e.jsonl", "dev": 3}
    with pytest.raises(RecipeError, match=r"field 'adapters\[0\]\.dev'"):
        recipe_from_dict(bad)


def test_a_recipe_file_resolves_the_dev_path_against_its_folder(workspace, tmp_path):
    from merging.recipe.codec import load_recipe

    path = tmp_path / "recipe.json"
    data = recipe_data(workspace)
    data["adapters"][0]["dev"] = "copy-dev.jsonl"
    path.write_text(json.dumps(data))
    assert load_recipe(path).adapters[0].dev == str((tmp_path / "copy-dev.jsonl").resolve())


def test_the_cli_searches_a_causal_recipe_choosing_on_dev_rows_and_reporting_on_the_others(
    workspace, tmp_path, capsys, one_thread
):
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe_data(workspace)))
    code = main(["search", str(recipe_file), "--trials", "3", "--dev-size", "4", "--no-store", "--json"])
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["objective"] == "average" and out["direction"] == "maximize" and "exact match" in out["objective_meaning"]
    assert [s["task"] for s in out["split"]] == list(TASKS)
    for split in out["split"]:
        rows = len(rows_of(workspace["evals"][split["task"]]))
        assert len(split["dev_rows"]) == 4 and split["rows"] == rows
        assert f"dev = 4 of the {rows} rows" in split["statement"] and f"the other {rows - 4}" in split["statement"]
        # the report scores the rows the trials never saw, and only those
        assert out["best"]["evaluation"]["tasks"][split["task"]]["metric"] == "exact_match"
        scored = out["best"]["evaluation"]["tasks"][split["task"]]
        assert round(scored["merged"] * (rows - 4), 9).is_integer()
        assert "loss" in scored
    assert [t["number"] for t in out["trials"]] == [0, 1, 2]
    assert all(0.0 <= t["dev_objective"] <= 1.0 for t in out["trials"])


def test_the_loss_objective_is_minimised_and_its_first_trial_matches_transformers_on_the_dev_rows(
    workspace, one_thread
):
    recipe = recipe_from_dict(recipe_data(workspace))
    result = run_search(recipe, 3, objective="loss", dev_size=4, seed=1, shared_grid=(0.5, 1.0))
    data = result.to_dict()
    assert data["direction"] == "minimize" and "lower is better" in data["objective_meaning"]
    values = [t["dev_objective"] for t in data["trials"]]
    assert data["best"]["dev_objective"] == min(values)
    # trial 0 is uniform λ = 1: its dev loss by hand, on exactly the carved rows
    assert data["trials"][0]["params"] == {f"weights.{t}-lora": 1.0 for t in TASKS}
    model = model_with_updates(workspace["model"], [workspace["adapters"][t] for t in TASKS], [1.0, 1.0])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    losses = []
    for split in data["split"]:
        rows = rows_of(workspace["evals"][split["task"]])
        dev = [rows[i - 1] for i in split["dev_rows"]]
        losses.append(hand_loss_and_greedy(model, tokenizer, dev)[0])
    assert math.isclose(values[0], sum(losses) / len(losses), rel_tol=1e-4)
    # the shared λ is the one with the lowest dev loss, and the report holds every candidate
    assert data["baselines"]["shared"]["lambda"] in (0.5, 1.0)
    assert set(data["baselines"]) == {"uniform", "shared"}
    assert data["best"]["evaluation"]["tasks"].keys() == set(TASKS)


def test_a_dev_file_is_the_dev_set_and_the_whole_eval_file_is_reported_and_an_overlap_is_refused(
    workspace, tmp_path, one_thread
):
    evals = workspace["evals"]
    dev = {task: tmp_path / f"{task}-dev.jsonl" for task in TASKS}
    for task in TASKS:  # the dev file: the last two rows of the evaluation file, which keeps the others
        rows = rows_of(evals[task])
        dev[task].write_text("".join(json.dumps(r) + "\n" for r in rows[-2:]))
        (tmp_path / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-2]))
    data = recipe_data(workspace, dev=dev)
    for entry, task in zip(data["adapters"], TASKS):
        entry["eval"] = str(tmp_path / f"{task}.jsonl")
    recipe = recipe_from_dict(data)
    result = run_search(recipe, 2, dev_size=4, shared_grid=(1.0,))
    out = result.to_dict()
    for split, task in zip(out["split"], TASKS):
        assert split["dev"] == str(dev[task]) and "dev_rows" not in split
        assert f"every row of {task}-dev.jsonl" in split["statement"]
        reported = len(rows_of(tmp_path / f"{task}.jsonl"))
        assert f"all {reported} rows" in split["statement"]
        assert round(out["best"]["evaluation"]["tasks"][task]["merged"] * reported, 9).is_integer()
    # a dev row that is also an evaluation row: refused, with the file and the line
    overlap = recipe_from_dict(recipe_data(workspace, dev=dev))  # eval = the full files again
    with pytest.raises(SearchError, match=r"copy-dev\.jsonl: 2 row\(s\) \(line 1, 2\) are also in the evaluation file copy\.jsonl"):
        run_search(overlap, 1, report=False)


def test_the_loss_objective_is_refused_for_a_classification_task(tiny_zoo):
    recipe = recipe_from_dict({"adapters": [{"path": str(tiny_zoo / "sms_spam-standard")}], "device": "cpu"})
    with pytest.raises(SearchError, match="--objective loss: task\\(s\\) sms_spam are classification tasks"):
        run_search(recipe, 1, objective="loss", report=False)


def test_the_plan_is_stated_from_the_files_alone(workspace):
    from merging.lab.catalog import resolve_inputs

    recipe = recipe_from_dict(recipe_data(workspace))
    plans = plan_splits(recipe, resolve_inputs(recipe).adapters, dev_size=3, seed=0)
    assert [p.task for p in plans] == list(TASKS)
    for plan in plans:
        assert len(plan.dev_rows) == 3 and len(plan.final_rows) == plan.rows - 3
        assert not set(plan.dev_rows) & set(plan.final_rows)


def test_ray_workers_score_a_causal_recipe_as_the_in_process_search_does(workspace, local_ray, one_thread):  # noqa: F811
    recipe = recipe_from_dict(recipe_data(workspace))
    on_ray = run_search(recipe, 2, objective="loss", dev_size=4, ray=True, workers=1, report=False)
    here = run_search(recipe, 2, objective="loss", dev_size=4, report=False)
    assert on_ray.backend.startswith("ray") and on_ray.study.failed == []
    assert all(not o.worker.endswith(f":{os.getpid()}") for o in on_ray.study.outcomes)
    for remote, local in zip(on_ray.study.outcomes, here.study.outcomes):
        assert remote.params == local.params
        assert math.isclose(remote.dev_objective, local.dev_objective, rel_tol=1e-6)
    assert [s.statement() for s in on_ray.splits] == [s.statement() for s in here.splits]


def test_a_classification_eval_file_is_split_the_same_way(tiny_zoo, tmp_path, one_thread):
    import csv

    from merging.adapters.lora import load_adapter
    from merging.lab.lab import task_data_for

    folder = tiny_zoo / "sms_spam-standard"
    data = task_data_for(load_adapter(folder))
    path = tmp_path / "spam.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for text, label in zip(data.eval_texts, data.eval_labels):
            writer.writerow([text, data.labels[label]])
    rows = len(data.eval_texts)
    recipe = recipe_from_dict({"adapters": [{"path": str(folder), "eval": str(path)}], "device": "cpu"})
    out = run_search(recipe, 1, dev_size=4, shared_grid=(1.0,)).to_dict()
    assert out["split"][0]["statement"] == f"spam: dev = 4 of the {rows} rows of spam.csv (seeded sample, seed 0); final report on the other {rows - 4}"
    assert round(out["best"]["evaluation"]["tasks"]["spam"]["merged"] * (rows - 4), 9).is_integer()
    assert out["trials"][0]["dev_objective"] * 4 == round(out["trials"][0]["dev_objective"] * 4)


def test_a_missing_dev_file_or_a_one_row_eval_file_is_one_clear_line(workspace, tmp_path, capsys):
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe_data(workspace, dev={"copy": tmp_path / "no-such-dev.jsonl"})))
    assert main(["search", str(recipe_file), "--trials", "1", "--no-store"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-dev.jsonl" in err and "Traceback" not in err
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(rows_of(workspace["evals"]["copy"])[0]) + "\n")
    data = recipe_data(workspace)
    data["adapters"][0]["eval"] = str(one)
    recipe_file.write_text(json.dumps(data))
    assert main(["search", str(recipe_file), "--trials", "1", "--no-store"]) == 2
    err = capsys.readouterr().err
    assert "one.jsonl (task one): 1 row(s): carving a dev split needs at least 2" in err and "'dev' file" in err
