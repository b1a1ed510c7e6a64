"""Hostile input, round 3 (issue 22): nothing lost, bounded reads, no silent results.

`--overwrite` onto a Hugging Face Trainer folder replaces the adapter's files and keeps the rest;
an output that is, holds or lies inside an input is refused; recipes are read with a size bound,
a byte-order mark, duplicate keys and deep nesting handled in one line; a full disk names the
output and keeps the previous one; flag values are refused naming the flag; the silent cases of
round 2 (an unusable run store, an override for a missing layer, a stray tensor, lora_alpha 0, a
completion the tokenizer cannot read, share-link warnings that vanished) are named. A few probes of
scripts/hostile_sweep.py run here too.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.adapters.lora import CONFIG_FILE, WEIGHTS_FILE, AdapterError, load_adapter, save_adapter
from merging.cli import main
from merging.core.staging import clean_leftovers, move_into_place
from tests.conftest import random_adapter

REPO = Path(__file__).resolve().parent.parent
ZOO_ADAPTER = REPO / "zoo" / "sms_spam-standard"
OTHER_ZOO_ADAPTER = REPO / "zoo" / "question_type-standard"


def one_line_error(capsys, *argv) -> str:
    """Run the CLI in-process; it must exit 2 with one line on stderr and no traceback."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    first, second = tmp_path / "inputs" / "first", tmp_path / "inputs" / "second"
    shutil.copytree(ZOO_ADAPTER, first)
    shutil.copytree(OTHER_ZOO_ADAPTER, second)
    return first, second


@pytest.fixture
def recipe(tmp_path, inputs) -> Path:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({
        "adapters": [{"path": str(inputs[0]), "weight": 0.5}, {"path": str(inputs[1]), "weight": 0.5}],
        "method": "task_arithmetic", "device": "cpu",
    }))
    return path


def trainer_folder(parent: Path) -> Path:
    """What transformers' Trainer leaves: the adapter, checkpoints, training state and the user's notes."""
    folder = parent / "trainer-output"
    (folder / "checkpoint-500").mkdir(parents=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(ZOO_ADAPTER / name, folder / name)
    (folder / "checkpoint-500" / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / "checkpoint-500" / CONFIG_FILE).write_text("{}")
    (folder / "training_args.bin").write_bytes(b"args")
    (folder / "notes.txt").write_text("what I tried")
    (folder / "README.md").write_text("model card")
    return folder


# ----------------------------------------------------------------------------------------------
# 1. --overwrite replaces the output's own files only; an input is never an output


def test_overwrite_onto_a_trainer_folder_replaces_the_adapter_and_keeps_everything_else(tmp_path, recipe, capsys):
    folder = trainer_folder(tmp_path)
    kept = {k: v for k, v in snapshot(folder).items() if k not in (CONFIG_FILE, WEIGHTS_FILE)}
    fresh = tmp_path / "fresh"
    assert main(["merge", str(recipe), "--out", str(fresh)]) == 0
    assert main(["merge", str(recipe), "--out", str(folder), "--overwrite"]) == 0
    capsys.readouterr()
    after = snapshot(folder)
    assert {k: after[k] for k in kept} == kept  # checkpoint-500/, training_args.bin, notes, README untouched
    merged, reference = load_adapter(folder), load_adapter(fresh)
    assert set(merged.modules) == set(reference.modules)
    for name, module in reference.modules.items():  # the adapter now is the merge, not the Trainer's
        assert torch.equal(merged.modules[name].B @ merged.modules[name].A, module.B @ module.A)
    assert sorted(after) == sorted(set(kept) | set(snapshot(fresh)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "inputs", "recipe.json", "trainer-output"]


def test_an_earlier_merges_heads_file_does_not_outlive_the_merge_that_replaces_it(tmp_path):
    out = save_adapter(random_adapter("a", {"layer.0.q": (6, 5)}), tmp_path / "out",
                       extra_files={"mergescope_heads.safetensors": b"old heads"})
    (out / "mine.txt").write_text("mine")
    save_adapter(random_adapter("b", {"layer.0.q": (6, 5)}, seed=3), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE, "mine.txt"]


@pytest.mark.parametrize("position", ["first input", "second input", "folder above the inputs", "inside an input",
                                      "deep inside an input"])
def test_an_output_that_is_holds_or_lies_inside_an_input_is_refused(tmp_path, recipe, inputs, capsys, position):
    first, second = inputs
    out = {"first input": first, "second input": second, "folder above the inputs": first.parent,
           "inside an input": first / "merged", "deep inside an input": second / "a" / "b"}[position]
    before = snapshot(tmp_path / "inputs")
    for extra in ([], ["--overwrite"], ["--overwrite", "--full-model"]):
        line = one_line_error(capsys, "merge", recipe, "--out", out, *extra)
        assert "the recipe's input adapter" in line and str(out) in line, line
    assert snapshot(tmp_path / "inputs") == before
    assert not (first / "merged").exists() and not (second / "a").exists()


def test_a_replace_that_fails_half_way_puts_the_old_entries_back(tmp_path, monkeypatch):
    folder = trainer_folder(tmp_path)
    before = snapshot(folder)
    staged = tmp_path / ".staged"
    staged.mkdir()
    (staged / CONFIG_FILE).write_text('{"new": 1}')
    (staged / WEIGHTS_FILE).write_bytes(b"new weights")
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if Path(src).parent == staged and len([c for c in calls if Path(c).parent == folder]) == 2:
            raise OSError(errno.EIO, "input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr("merging.core.staging.os.replace", failing_replace)
    with pytest.raises(OSError):
        move_into_place(staged, folder, overwrite=True)
    monkeypatch.undo()
    assert snapshot(folder) == before
    assert [p.name for p in tmp_path.iterdir() if "mergescope" in p.name] == []


@pytest.mark.parametrize("state", ["moving-old", "moving-new", "done"])
def test_a_replace_killed_part_way_is_undone_at_the_next_write(tmp_path, state):
    """A parts folder of a dead writer (pid 2**22 + 1 is above Linux's pid_max default) and its journal."""
    folder = trainer_folder(tmp_path)
    parts = tmp_path / f".{folder.name}.mergescope-parts-{2**22 + 1}-abc"
    parts.mkdir()
    old_config = (folder / CONFIG_FILE).read_bytes()
    os.replace(folder / CONFIG_FILE, parts / CONFIG_FILE)  # the old config moved aside
    if state != "moving-old":
        os.replace(folder / WEIGHTS_FILE, parts / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text('{"half": "new"}')  # one new entry got in
    journal = {"state": state, "new": [CONFIG_FILE, WEIGHTS_FILE], "old": [CONFIG_FILE, WEIGHTS_FILE]}
    (parts / "mergescope-replace.json").write_text(json.dumps(journal))
    clean_leftovers(tmp_path)
    assert not parts.exists()
    if state == "done":  # the replace had finished: the new output stays
        assert (folder / CONFIG_FILE).read_text() == '{"half": "new"}'
    else:
        assert (folder / CONFIG_FILE).read_bytes() == old_config
        assert (folder / WEIGHTS_FILE).read_bytes() == (ZOO_ADAPTER / WEIGHTS_FILE).read_bytes()
    assert (folder / "checkpoint-500" / "optimizer.pt").read_bytes() == b"optimizer state"


# ----------------------------------------------------------------------------------------------
# 2. Bounded reads, deep nesting, full disks, flag values, pickles


@pytest.mark.parametrize("make, words", [
    (lambda d: Path("/dev/zero"), "not a regular file"),
    (lambda d: _sparse(d / "big.json", 50 * 10**6), "a recipe file is at most"),
    (lambda d: _text(d / "deep.json", "[" * 200_000 + "]" * 200_000), "nested too deeply"),
    (lambda d: _text(d / "deep.yaml", "[" * 200_000 + "]" * 200_000), "nested too deeply"),
    (lambda d: _text(d / "deep-block.yaml", "- " * 200_000 + "1"), "nested too deeply"),
    (lambda d: d, "a folder, not a recipe file"),
])
def test_a_recipe_beyond_its_bounds_is_refused_at_once_in_one_line(tmp_path, capsys, make, words):
    import time

    path = make(tmp_path)
    start = time.perf_counter()
    line = one_line_error(capsys, "merge", path, "--out", tmp_path / "out")
    assert words in line and str(path) in line, line
    assert time.perf_counter() - start < 5


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_json_recipe_with_a_byte_order_mark_is_read(tmp_path, recipe, capsys):
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + recipe.read_bytes())
    assert main(["merge", str(bom), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert load_adapter(tmp_path / "out").modules


@pytest.mark.parametrize("name, text", [
    ("dup.json", '{"adapters": [{"path": "a"}], "method": "ties", "method": "task_arithmetic"}'),
    ("dup-inner.json", '{"adapters": [{"path": "a", "weight": 1, "weight": 2}]}'),
    ("dup.yaml", "adapters:\n- path: a\nmethod: ties\nmethod: task_arithmetic\n"),
    ("dup-mergekit.yaml", "merge_method: ties\nmerge_method: linear\nbase_model: b\nmodels: []\n"),
])
def test_a_key_given_twice_is_refused_naming_the_key(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    line = one_line_error(capsys, "merge", path, "--out", tmp_path / "out")
    key = "weight" if "inner" in name else ("merge_method" if "mergekit" in name else "method")
    assert f"'{key}' appears twice" in line and name in line, line


def test_a_full_disk_names_the_output_and_keeps_the_previous_one(tmp_path, recipe, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    for failure in (OSError(errno.ENOSPC, "No space left on device"),
                    __import__("safetensors").SafetensorError("Error while serializing: IoError(Os { code: 28, "
                                                              "kind: StorageFull, message: \"No space left on device\" })")):
        def full(*args, _failure=failure, **kwargs):
            raise _failure

        monkeypatch.setattr("merging.adapters.lora.save_file", full)
        line = one_line_error(capsys, "merge", recipe, "--out", out, "--overwrite")
        assert f"could not write {out}: no space left on the device" in line and "nothing was replaced" in line
        assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "out", "recipe.json"]


@pytest.mark.parametrize("argv, flag", [
    (["merge", "{recipe}", "--out", "x", "--full-model", "--max-shard-size", "lots"], "--max-shard-size"),
    (["merge", "{recipe}", "--out", "x", "--full-model", "--max-shard-size", "1e999GB"], "--max-shard-size"),
    (["merge", "{recipe}", "--out", "x", "--full-model", "--max-shard-size", "-5"], "--max-shard-size"),
    (["search", "{recipe}", "--trials", "many"], "--trials"),
    (["search", "{recipe}", "--objective", "best"], "--objective"),
    (["train", "sms_spam", "--out", "x", "--rank", "eight"], "--rank"),
    (["dashboard", "--port", "http"], "--port"),
])
def test_a_bad_flag_value_is_one_line_naming_the_flag(recipe, capsys, argv, flag):
    argv = [a.replace("{recipe}", str(recipe)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in captured.err, lines


class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_refused_pickle_prints_one_line_and_no_torch_warning(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copyfile(ZOO_ADAPTER / CONFIG_FILE, folder / CONFIG_FILE)
    # a plain pickle (protocol 4, which torch warns about) that would run a command when loaded
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"x": _RunsACommand()}, protocol=4))
    result = subprocess.run([sys.executable, "-m", "merging", "inspect", str(folder)], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to load this pickled file safely" in lines[0], lines
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------------------
# 3. Silent cases named


def test_search_with_an_unusable_run_store_is_refused_before_any_trial(tmp_path, recipe, capsys, monkeypatch):
    pytest.importorskip("optuna")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "runs.sqlite").write_bytes(b"this is not a database" * 100)
    monkeypatch.setattr("merging.search.study.run_search", lambda *a, **k: pytest.fail("searched anyway"))
    line = one_line_error(capsys, "search", recipe, "--workspace", workspace, "--trials", 1)
    assert str(workspace / "runs.sqlite") in line and "--no-store" in line


@pytest.mark.parametrize("override, words", [
    ({"layers": [99], "weights": [1, 1]}, "layers [99]"),
    ({"match": "no_such_module", "weights": [1, 1]}, "match 'no_such_module'"),
])
def test_a_weight_override_that_applies_to_no_module_is_refused_by_name(tmp_path, recipe, capsys, override, words):
    data = json.loads(recipe.read_text())
    data["overrides"] = [{"layers": [0], "weights": [1, 0]}, override]
    recipe.write_text(json.dumps(data))
    line = one_line_error(capsys, "merge", recipe, "--out", tmp_path / "out")
    assert "overrides[1]" in line and words in line and "blocks 0–" in line, line


def _edit_folder(folder: Path, config: dict | None = None, extra_tensor: str | None = None) -> Path:
    if config:
        data = json.loads((folder / CONFIG_FILE).read_text())
        data.update(config)
        (folder / CONFIG_FILE).write_text(json.dumps(data))
    if extra_tensor:
        state = load_file(str(folder / WEIGHTS_FILE))
        state[extra_tensor] = torch.ones(3)
        save_file(state, str(folder / WEIGHTS_FILE))
    return folder


def test_a_stray_tensor_is_named_as_neither_a_factor_nor_a_listed_module(inputs, capsys):
    folder = _edit_folder(inputs[0], extra_tensor="base_model.model.bert.pooler.dense.weight")
    with pytest.raises(AdapterError, match=r"tensor base_model\.model\.bert\.pooler\.dense\.weight is not a LoRA "
                                           r"factor, and its module is not in the config's modules_to_save \(classifier\)"):
        load_adapter(folder)
    one_line_error(capsys, "inspect", folder)
    listed = _edit_folder(inputs[1], config={"modules_to_save": ["classifier", "pooler.dense"]},
                          extra_tensor="base_model.model.bert.pooler.dense.weight")
    assert "bert.pooler.dense.weight" in load_adapter(listed).saved_modules  # listed: carried, as PEFT would


def test_lora_alpha_zero_is_named_and_an_integral_float_rank_is_read(inputs, capsys):
    zero = _edit_folder(inputs[0], config={"lora_alpha": 0})
    line = one_line_error(capsys, "inspect", zero)
    assert "'lora_alpha' is 0" in line and "changes nothing" in line
    float_rank = _edit_folder(inputs[1], config={"r": 8.0})
    assert {m.rank for m in load_adapter(float_rank).modules.values()} == {8}
    half = _edit_folder(inputs[1], config={"r": 8.5})
    assert "'r' must be a whole number ≥ 1, got 8.5" in one_line_error(capsys, "inspect", half)


def test_a_completion_of_characters_the_tokenizer_does_not_know_is_refused(tmp_path):
    from merging.evaluation.causal import CausalEvaluator
    from merging.evaluation.evaluate import EvaluationError
    from merging.tasks.completions import read_causal_task
    from tests.tiny_models import tiny_llama

    model, tokenizer = tiny_llama(seed=0)
    assert not tokenizer.decode(tokenizer(" ☃☃ ✈", add_special_tokens=False).input_ids, skip_special_tokens=True)
    path = tmp_path / "snow.jsonl"
    path.write_text(json.dumps({"prompt": "next 3 =", "completion": " 4"}) + "\n"
                    + json.dumps({"prompt": "weather", "completion": " ☃☃ ✈"}) + "\n")
    evaluator = CausalEvaluator(model, tokenizer, max_length=64)
    with pytest.raises(EvaluationError, match=r"snow\.jsonl, line 2: the completion ' ☃☃ ✈' decodes to no text"):
        evaluator.add_task(read_causal_task(path))


def test_share_link_warnings_stay_until_dismissed_or_a_linked_control_changes(app_test):
    app_test.query_params["recipe"] = '{"adapters":[{"name":"sms_spam-standard","weight":99}]}'
    at = app_test.run()

    def warned(at) -> bool:
        return any("λ of sms_spam-standard" in w.value for w in at.warning)

    assert warned(at)
    at = at.run()  # any rerun (a background job's, another widget's)
    assert warned(at) and warned(at.run())
    at.button(key="_merge_link_notes_dismiss").click()
    at = at.run()
    assert not warned(at) and not warned(at.run())


def test_share_link_warnings_go_when_the_user_changes_a_control_the_link_set(app_test):
    app_test.query_params["recipe"] = '{"adapters":[{"name":"sms_spam-standard","weight":99}]}'
    at = app_test.run()
    assert any("λ of sms_spam-standard" in w.value for w in at.warning)
    at.slider(key="weight:sms_spam-standard").set_value(1.0).run()
    assert not any("λ of sms_spam-standard" in w.value for w in at.run().warning)


def test_a_refused_share_link_stays_named_on_the_page(app_test):
    app_test.query_params["recipe"] = '{"adapters":[{"name":"sms_spam-standard"}],"seed":"abc"}'
    at = app_test.run()
    for _ in range(2):
        assert any("field 'seed'" in w.value for w in at.warning)
        at = at.run()


# ----------------------------------------------------------------------------------------------
# A few probes of the sweep (scripts/hostile_sweep.py runs ~400; see its docstring)


def _sweep():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostile_sweep", REPO / "scripts" / "hostile_sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hostile_sweep", module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["hostile_sweep"])
    return sys.modules["hostile_sweep"]


@pytest.mark.parametrize("words", ["share links", "run store", "file with a BOM", "--out", "pickle", "config r="])
def test_the_sweeps_probes_end_in_a_clear_refusal_or_a_correct_acceptance(tmp_path, words):
    sweep = _sweep()
    chosen = [(g, n, f) for g, n, f in sweep.PROBES if words in f"{g}: {n}"]
    assert chosen
    outcomes = {}
    for index, (group, name, fn) in enumerate(chosen):
        outcomes[f"{group}: {name}"] = fn(sweep.Sandbox(tmp_path, index))
    odd = {k: v for k, v in outcomes.items() if v[0] not in ("refusal", "accepted")}
    assert not odd, odd


def test_an_export_replaces_an_earlier_exports_files_keeps_the_rest_and_refuses_to_replace_a_users_file(tmp_path):
    from merging.engine.export import ExportError, export_merged
    from merging.engine.merge import merge_adapters
    from tests.test_causal_models import _recipe, peft_adapter
    from tests.test_export import _base_folder

    base_dir = _base_folder("llama", tmp_path)
    peft_adapter("llama", tmp_path / "a", seed=81)
    merged = merge_adapters([load_adapter(tmp_path / "a")], _recipe([tmp_path / "a"], [1.0]))
    out = tmp_path / "trainer"
    shutil.copytree(tmp_path / "a", out)  # a Trainer folder: its adapter, a checkpoint, notes
    (out / "checkpoint-500").mkdir()
    (out / "checkpoint-500" / "optimizer.pt").write_bytes(b"optimizer state")
    (out / "notes.txt").write_text("mine")
    (out / "tokenizer_config.json").write_text('{"mine": true}')  # a name the export would write too
    before = snapshot(out)
    with pytest.raises(ExportError, match=r"holds tokenizer_config\.json, not written by mergescope"):
        export_merged(merged, base_dir, out, max_shard_size="20KB", overwrite=True)
    assert snapshot(out) == before  # refused before any work
    (out / "tokenizer_config.json").unlink()
    export_merged(merged, base_dir, out, max_shard_size="20KB", overwrite=True)  # several shards
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / CONFIG_FILE).exists()  # the adapter's files went with it
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoint-500" / "optimizer.pt").read_bytes() == b"optimizer state"
    export_merged(merged, base_dir, out, max_shard_size="10MB", overwrite=True)  # an earlier export: replaced
    assert sorted(p.name for p in out.glob("model*.safetensors")) == ["model.safetensors"]  # no stale shard
    assert not (out / "model.safetensors.index.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
