"""The CLI paths that train: `train`, `zoo build`, `zoo rescore`, on tiny settings.

Each runs `python -m merging …` in-process through merging.cli.main on the packaged MiniLM (the
only base `zoo build` offers), one task, a few dozen examples and one epoch, so each stays within
seconds. What they print is checked against what is on disk and against an evaluation done here:
the accuracy a command reports must be what a fresh Lab measures on the saved adapter.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from merging.adapters.lora import load_adapter
from merging.cli import main
from merging.lab.lab import Lab
from merging.recipe.codec import recipe_from_dict
from merging.training.zoo import MANIFEST, load_zoo

pytestmark = pytest.mark.slow

TASK = "sms_spam"
TINY = ["--train-size", "24", "--eval-size", "12", "--epochs", "1", "--seed", "3"]
TINY_ZOO = ["--dev-size", "4", "--keep-chance-runs"]  # one epoch on 20 examples may not learn: shipped, flagged


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def measured_single_accuracy(folder, name: str) -> float:
    """The adapter scored alone by a fresh Lab, on the split its mergescope.json records."""
    adapter = load_adapter(folder, name=name)
    lab = Lab(adapter.meta.get("base_model") or adapter.base_model, device="cpu")
    recipe = recipe_from_dict({"adapters": [{"path": str(folder), "name": name}], "device": "cpu"})
    return lab.merge_and_evaluate([adapter], recipe).evaluation.tasks[adapter.task].single


@pytest.fixture(scope="module")
def built_zoo(tmp_path_factory, one_thread):
    """`zoo build` of one task, standard init only: (folder, printed JSON)."""
    folder = tmp_path_factory.mktemp("cli_zoo") / "zoo"
    code, stdout, stderr = run_cli(
        "zoo", "build", "--out", folder, "--tasks", TASK, "--inits", "standard", *TINY, *TINY_ZOO, "--device", "cpu"
    )
    assert code == 0, stderr
    return folder, json.loads(stdout)


def test_train_writes_an_adapter_that_loads_and_prints_its_measured_accuracy(tmp_path, one_thread):
    out = tmp_path / "spam-adapter"
    code, stdout, stderr = run_cli("train", TASK, "--out", out, "--rank", "4", "--alpha", "8", *TINY, "--device", "cpu")
    assert code == 0, stderr
    printed = json.loads(stdout)
    assert set(printed) == {"out", "task", "init", "single_task_accuracy", "majority_baseline", "seconds", "final_loss"}
    assert printed["out"] == str(out) and printed["task"] == TASK and printed["init"] == "standard"
    assert 0.0 <= printed["single_task_accuracy"] <= 1.0 and printed["seconds"] > 0
    assert printed["final_loss"] is not None and printed["final_loss"] > 0

    adapter = load_adapter(out, name="spam-adapter")
    assert adapter.task == TASK and adapter.meta["init"] == "standard"
    assert {k: adapter.meta["data"][k] for k in ("train_size", "eval_size", "seed")} == {"train_size": 24, "eval_size": 12, "seed": 3}
    assert set(adapter.ranks().values()) == {4}
    assert "classifier.weight" in adapter.saved_modules
    assert any(bool(m.B.any()) for m in adapter.modules.values())  # training moved B off its zero init
    assert adapter.meta["single_task_accuracy"] == printed["single_task_accuracy"]
    assert measured_single_accuracy(out, "spam-adapter") == printed["single_task_accuracy"]


def test_train_refuses_an_existing_folder_with_one_line(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, stdout, stderr = run_cli("train", TASK, "--out", out, *TINY, "--device", "cpu")
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and str(out) in stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_zoo_build_prints_what_its_manifest_records(built_zoo):
    folder, printed = built_zoo
    assert printed["out"] == str(folder)
    assert [a["name"] for a in printed["adapters"]] == [f"{TASK}-standard"]
    zoo = load_zoo(folder)
    assert [t.name for t in zoo.tasks] == [TASK]
    assert len(zoo.adapters) == 1
    entry, shown = zoo.adapters[0], printed["adapters"][0]
    assert (entry.name, entry.task, entry.init) == (f"{TASK}-standard", TASK, "standard")
    assert entry.single_task_accuracy == shown["single_task_accuracy"]
    assert entry.train_seconds == pytest.approx(shown["train_seconds"], abs=0.051) and shown["train_seconds"] > 0
    adapter = load_adapter(entry.path, name=entry.name)
    assert adapter.task == TASK and "classifier.weight" in adapter.saved_modules
    assert measured_single_accuracy(entry.path, entry.name) == entry.single_task_accuracy


def test_zoo_rescore_of_a_copy_gives_back_the_recorded_accuracies(built_zoo, tmp_path, one_thread):
    folder, _ = built_zoo
    recorded = {a.name: a.single_task_accuracy for a in load_zoo(folder).adapters}
    copy = tmp_path / "zoo-copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    for entry in manifest["adapters"]:
        entry["single_task_accuracy"] = 0.123  # a stale record, which the rescore must replace
    (copy / MANIFEST).write_text(json.dumps(manifest))

    code, stdout, stderr = run_cli("zoo", "rescore", "--zoo", copy, "--device", "cpu")
    assert code == 0, stderr
    assert json.loads(stdout) == recorded
    assert {a.name: a.single_task_accuracy for a in load_zoo(copy).adapters} == recorded
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in folder.iterdir())  # no staging left


def test_zoo_build_refuses_an_existing_folder_with_one_line(built_zoo):
    folder, _ = built_zoo
    before = (folder / MANIFEST).read_text()
    code, stdout, stderr = run_cli("zoo", "build", "--out", folder, "--tasks", TASK, *TINY, *TINY_ZOO)
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "--overwrite" in stderr
    assert (folder / MANIFEST).read_text() == before
