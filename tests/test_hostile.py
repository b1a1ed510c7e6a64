"""Hostile input: one clear line naming the file and field, nothing lost, nothing non-finite written.

Each case damages a real adapter folder (a copy of one of the shipped zoo's PEFT adapters) in one
way and checks both the library (one AdapterError naming the file and field) and the command line
(`merging.cli.main`: exit 2, one line on stderr, no traceback). Then: `--overwrite` never loses the
user's files, staging leftovers of a killed writer are cleaned, zip bombs are refused before
extraction, the run store survives a broken database, the Adapters page lets the user remove a
broken adapter, and a fuzz test of the loader finds no unhandled exception.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.adapters.lora import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    AdapterError,
    LoraModule,
    load_adapter,
    save_adapter,
)
from merging.cli import main
from merging.core.staging import StagingError, clean_leftovers, staged_folder
from merging.store.runs import RunStore
from merging.store.workspace import (
    WorkspaceError,
    adapters_dir,
    clean_workspace,
    import_adapter_zip,
)
from merging.training.zoo import zoo_owned
from tests.conftest import assert_page_ok, random_adapter

REPO = Path(__file__).resolve().parent.parent
ZOO_ADAPTER = REPO / "zoo" / "sms_spam-standard"
OTHER_ZOO_ADAPTER = REPO / "zoo" / "question_type-standard"
FIRST_MODULE = "bert.encoder.layer.0.attention.self.query"
A_KEY = f"base_model.model.{FIRST_MODULE}.lora_A.weight"
B_KEY = f"base_model.model.{FIRST_MODULE}.lora_B.weight"


@pytest.fixture
def adapter(tmp_path) -> Path:
    """A fresh copy of a shipped zoo adapter (PEFT-written, rank 8) to damage."""
    folder = tmp_path / "victim"
    shutil.copytree(ZOO_ADAPTER, folder)
    return folder


def edit_config(folder: Path, raw: str | None = None, **changes) -> None:
    path = folder / CONFIG_FILE
    if raw is not None:
        path.write_text(raw, encoding="utf-8")
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(changes)
    path.write_text(json.dumps(config), encoding="utf-8")


def edit_tensors(folder: Path, edit) -> None:
    path = folder / WEIGHTS_FILE
    state = load_file(str(path))
    edit(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def one_line_error(capsys, *argv) -> str:
    """Run the CLI in-process; it must exit 2 with one line on stderr and no traceback."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in captured.err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Adapter folders: each damage is refused with the file and the field or module named


def _rank(k: int):
    def edit(state):
        state[A_KEY] = state[A_KEY][:k].clone()
        state[B_KEY] = state[B_KEY][:, :k].clone()

    return edit


def _set(key: str, value_of):
    def edit(state):
        state[key] = value_of(state[key])

    return edit


def _nan(tensor):
    tensor = tensor.clone()
    tensor[0, 0] = float("nan")
    return tensor


# (id, how to damage the folder, the file named in the message, words the message must hold)
CONFIG_CASES = [
    ("alpha-null", {"lora_alpha": None}, CONFIG_FILE, ["lora_alpha", "number", "None"]),
    ("alpha-list", {"lora_alpha": [16]}, CONFIG_FILE, ["lora_alpha", "number"]),
    ("alpha-word", {"lora_alpha": "sixteen"}, CONFIG_FILE, ["lora_alpha", "'sixteen'"]),
    ("alpha-bool", {"lora_alpha": True}, CONFIG_FILE, ["lora_alpha", "number"]),
    ("alpha-huge-int", {"lora_alpha": 10**400}, CONFIG_FILE, ["lora_alpha"]),
    ("alpha-pattern-bad-regex", {"alpha_pattern": {"query(": 4}}, CONFIG_FILE, ["alpha_pattern", "query(", "regular expression"]),
    ("alpha-pattern-list", {"alpha_pattern": ["query"]}, CONFIG_FILE, ["alpha_pattern", "object"]),
    ("alpha-pattern-value", {"alpha_pattern": {"query": "big"}}, CONFIG_FILE, ["alpha_pattern", "'big'"]),
    ("rank-pattern-bad-regex", {"rank_pattern": {"[query": 8}}, CONFIG_FILE, ["rank_pattern", "[query", "regular expression"]),
    ("r-zero", {"r": 0}, CONFIG_FILE, ["'r'", "≥ 1", "0"]),
    ("r-text", {"r": "8"}, CONFIG_FILE, ["'r'", "'8'"]),
    ("rslora-text", {"use_rslora": "yes"}, CONFIG_FILE, ["use_rslora"]),
    ("base-model-list", {"base_model_name_or_path": ["a", "b"]}, CONFIG_FILE, ["base_model_name_or_path"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_a_bad_config_field_is_refused_naming_the_file_and_field(adapter, capsys, case):
    _, changes, file_name, words = case
    edit_config(adapter, **changes)
    with pytest.raises(AdapterError) as caught:
        load_adapter(adapter)
    message = str(caught.value)
    assert str(adapter / file_name) in message
    for word in words:
        assert word in message, (word, message)
    line = one_line_error(capsys, "inspect", adapter)
    assert str(adapter / file_name) in line


def test_alpha_nan_in_the_json_is_refused(adapter, capsys):
    """Python's json reads the non-standard NaN; it must not become a NaN scale."""
    text = (adapter / CONFIG_FILE).read_text(encoding="utf-8").replace('"lora_alpha": 8', '"lora_alpha": NaN')
    edit_config(adapter, raw=text)
    with pytest.raises(AdapterError, match=r"lora_alpha.*finite"):
        load_adapter(adapter)
    one_line_error(capsys, "inspect", adapter)


TENSOR_CASES = [
    ("rank-zero", _rank(0), ["rank 0", FIRST_MODULE]),
    ("config-r-16-tensors-rank-8", None, ["'r'", "rank 16", "rank 8", FIRST_MODULE]),
    ("a-b-do-not-chain", _set(B_KEY, lambda b: b[:, :4].clone()), ["incompatible shapes", FIRST_MODULE]),
    ("a-not-a-matrix", _set(A_KEY, lambda a: a.flatten().clone()), ["incompatible shapes", FIRST_MODULE]),
    ("nan-in-a", _set(A_KEY, _nan), ["NaN or Inf", "lora_A", FIRST_MODULE]),
    ("inf-in-b", _set(B_KEY, lambda b: torch.full_like(b, float("inf"))), ["NaN or Inf", "lora_B", FIRST_MODULE]),
    ("beyond-float32", _set(A_KEY, lambda a: a.double() * 1e300), ["float32", "lora_A", FIRST_MODULE]),
    ("integer-factor", _set(A_KEY, lambda a: a.to(torch.int32)), ["dtype int32", FIRST_MODULE]),
    ("empty-dimension", _set(A_KEY, lambda a: a[:, :0].clone()), ["empty dimension", FIRST_MODULE]),
    ("two-copies-of-a-factor", lambda s: s.__setitem__(A_KEY.removeprefix("base_model.model."), s[A_KEY].clone()),
     ["two lora_A tensors", FIRST_MODULE]),
]


@pytest.mark.parametrize("case", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_bad_factors_are_refused_naming_the_folder_and_module(adapter, capsys, case):
    _, edit, words = case
    if edit is None:
        edit_config(adapter, r=16)
    else:
        edit_tensors(adapter, edit)
    with pytest.raises(AdapterError) as caught:
        load_adapter(adapter)
    message = str(caught.value)
    assert str(adapter) in message
    for word in words:
        assert word in message, (word, message)
    assert str(adapter) in one_line_error(capsys, "inspect", adapter)


def test_config_r_matching_the_factors_loads_and_rank_pattern_overrides_r(adapter):
    """The r check is not over-strict: a rank_pattern entry for one module is honoured."""
    edit_tensors(adapter, _rank(4))
    with pytest.raises(AdapterError, match="'r' says rank 8"):
        load_adapter(adapter)
    edit_config(adapter, rank_pattern={"layer.0.attention.self.query": 4})
    assert load_adapter(adapter).modules[FIRST_MODULE].rank == 4


def test_alpha_so_large_the_update_overflows_float32_is_refused(adapter, capsys, tmp_path):
    edit_config(adapter, lora_alpha=1e40)
    with pytest.raises(AdapterError, match=r"lora_alpha.*float32") as caught:
        load_adapter(adapter)
    assert str(adapter) in str(caught.value)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"adapters": [{"path": str(adapter)}], "method": "task_arithmetic",
                                  "device": "cpu"}))
    line = one_line_error(capsys, "merge", recipe, "--out", tmp_path / "out")
    assert "lora_alpha" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "meta, words",
    [
        ([1], ["expected a JSON object", "list"]),
        ("just text", ["expected a JSON object"]),
        ({"task": 5}, ["'task'", "string"]),
        ({"labels": "ham,spam"}, ["'labels'", "list of strings"]),
        ({"labels": ["ham", None]}, ["'labels'"]),
        ({"single_task_accuracy": "high"}, ["'single_task_accuracy'", "number"]),
        ({"data": {"eval_size": -3}}, ["'data.eval_size'"]),
    ],
    ids=["list", "string", "task-number", "labels-text", "labels-null", "accuracy-text", "negative-size"],
)
def test_a_bad_mergescope_json_is_refused_naming_the_field(adapter, capsys, meta, words):
    (adapter / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(AdapterError) as caught:
        load_adapter(adapter)
    assert str(adapter / META_FILE) in str(caught.value)
    for word in words:
        assert word in str(caught.value)
    assert META_FILE in one_line_error(capsys, "inspect", adapter)


def test_every_shipped_zoo_adapter_still_loads():
    """The checks refuse only what is wrong: every adapter mergescope ships passes them."""
    folders = [p for p in sorted((REPO / "zoo").iterdir()) if (p / CONFIG_FILE).is_file()]
    assert len(folders) >= 10
    for folder in folders:
        assert load_adapter(folder).modules


# ----------------------------------------------------------------------------------------------
# Merges: finite output only, and no adapter merged with itself


def test_the_same_adapter_under_two_names_is_refused_with_both_names(tmp_path, capsys):
    copy = tmp_path / "copy-of-spam"
    shutil.copytree(ZOO_ADAPTER, copy)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "adapters": [{"path": str(ZOO_ADAPTER), "name": "spam"}, {"path": str(copy), "name": "spam-again"}],
        "method": "ties", "device": "cpu",
    }))
    line = one_line_error(capsys, "merge", recipe, "--out", tmp_path / "out")
    assert "'spam'" in line and "'spam-again'" in line and "same adapter" in line
    assert not (tmp_path / "out").exists()


def test_a_copy_with_its_scale_folded_into_B_is_still_the_same_adapter(tmp_path):
    """save_adapter folds scale into B; the copy is the same update and is recognised as such."""
    from merging.adapters.lora import check_compatible

    original = load_adapter(ZOO_ADAPTER)
    original.meta = {}
    saved = load_adapter(save_adapter(original, tmp_path / "resaved"), name="resaved")
    with pytest.raises(AdapterError, match="same adapter"):
        check_compatible([original, saved])
    check_compatible([original, load_adapter(OTHER_ZOO_ADAPTER)])  # two different adapters pass
    in_memory = random_adapter("a", {"layer.0.q": (6, 5)})
    twin = random_adapter("b", {"layer.0.q": (6, 5)})  # same seed: same factors, built by code on purpose
    check_compatible([in_memory, twin])


def test_a_merge_whose_output_is_not_finite_is_refused_naming_the_module(tmp_path):
    from merging.engine.merge import merge_adapters
    from merging.recipe.codec import AdapterRef, Recipe

    modules = {"layer.0.q": (6, 5), "layer.1.q": (6, 5)}
    first, second = random_adapter("a", modules, seed=1), random_adapter("b", modules, seed=2)
    # 1e19 · 1e19 overflows float32 in layer.1.q only: finite inputs, non-finite output
    second.modules["layer.1.q"] = LoraModule(second.modules["layer.1.q"].A * 1e19,
                                             second.modules["layer.1.q"].B * 1e19, 1.0)
    recipe = Recipe(adapters=(AdapterRef("a"), AdapterRef("b")), method="task_arithmetic", device="cpu")
    with pytest.raises(AdapterError, match=r"module layer\.1\.q is not finite"):
        merge_adapters([first, second], recipe)


def test_nothing_non_finite_is_ever_written(tmp_path):
    adapter = random_adapter("a", {"layer.0.q": (6, 5)})
    adapter.modules["layer.0.q"] = LoraModule(adapter.modules["layer.0.q"].A, adapter.modules["layer.0.q"].B, math.inf)
    with pytest.raises(AdapterError, match=r"NaN or Inf"):
        save_adapter(adapter, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# --overwrite: only an output folder is replaced, and only once the new one is complete


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({
        "adapters": [{"path": str(ZOO_ADAPTER), "weight": 0.5}, {"path": str(OTHER_ZOO_ADAPTER), "weight": 0.5}],
        "method": "task_arithmetic", "device": "cpu",
    }))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_the_current_folder_and_keeps_its_files(tmp_path, recipe, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    (work / "adapter_config.json").write_text("{}")  # even a folder that looks like an output
    monkeypatch.chdir(work)
    before = _snapshot(work)
    line = one_line_error(capsys, "merge", recipe, "--out", ".", "--overwrite")
    assert "current folder" in line
    assert _snapshot(work) == before
    one_line_error(capsys, "merge", recipe, "--out", "..", "--overwrite")  # a folder above it too


def test_overwrite_refuses_home_root_files_and_unrelated_folders(tmp_path, recipe, capsys, monkeypatch):
    home = tmp_path / "home"
    (home / "documents").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert "home folder" in one_line_error(capsys, "merge", recipe, "--out", home, "--overwrite")
    assert "/" in one_line_error(capsys, "merge", recipe, "--out", "/", "--overwrite")
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "cat.jpg").write_bytes(b"\xff\xd8 cat")
    line = one_line_error(capsys, "merge", recipe, "--out", unrelated, "--overwrite")
    assert "not a mergescope/PEFT output" in line and str(unrelated) in line
    assert (unrelated / "cat.jpg").read_bytes() == b"\xff\xd8 cat"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert "is a file" in one_line_error(capsys, "merge", recipe, "--out", a_file, "--overwrite")
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "notes.txt", "photos", "recipe.json"]


def test_overwrite_replaces_a_previous_output_and_an_empty_folder(tmp_path, recipe, capsys):
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("the user's, beside the old merge")
    assert main(["merge", str(recipe), "--out", str(out), "--overwrite"]) == 0
    # the adapter's files are replaced; what the tool did not write stays (tests/test_hostile_round3.py)
    assert (out / "notes.txt").read_text() == "the user's, beside the old merge" and load_adapter(out).modules
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["merge", str(recipe), "--out", str(empty), "--overwrite"]) == 0
    assert load_adapter(empty).modules
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "merged", "recipe.json"]  # no leftovers


def test_a_failed_replace_keeps_the_old_output(tmp_path, monkeypatch):
    out = save_adapter(random_adapter("a", {"layer.0.q": (6, 5)}), tmp_path / "out")
    before = _snapshot(out)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("merging.adapters.lora.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(random_adapter("b", {"layer.0.q": (6, 5)}, seed=3), out, overwrite=True)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from merging.core.staging import staged_folder
with staged_folder(Path(sys.argv[1]), overwrite=True) as staging:
    (staging / "adapter_config.json").write_text("{}")
    (staging / "half-written.safetensors").write_bytes(b"0" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_staging_left_by_a_sigkilled_writer_is_cleaned_at_the_next_start(tmp_path):
    parent = tmp_path / "outputs"
    target = parent / "merged"
    save_adapter(random_adapter("old", {"layer.0.q": (6, 5)}), target)
    before = _snapshot(target)
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(timeout=30)
    leftovers = [p.name for p in parent.iterdir() if p.name != "merged"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".merged.mergescope-staging-")
    assert _snapshot(target) == before  # the old output is untouched
    # the next save into the same parent removes the dead writer's folder
    save_adapter(random_adapter("new", {"layer.0.q": (6, 5)}), parent / "another")
    assert sorted(p.name for p in parent.iterdir()) == ["another", "merged"]


def test_a_replace_killed_between_its_two_renames_is_undone_at_the_next_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    parent = tmp_path / "adapters"
    parent.mkdir()
    aside = parent / f".mine.mergescope-old-{dead.pid}-abc123"  # renamed aside, new one not yet in place
    aside.mkdir()
    (aside / "adapter_config.json").write_text('{"kept": true}')
    staging = parent / f".mine.mergescope-staging-{dead.pid}-def456"
    staging.mkdir()
    live = parent / f".other.mergescope-staging-{os.getpid()}-ghi789"  # a write in progress: left alone
    live.mkdir()
    user_hidden = parent / ".my-notes"
    user_hidden.mkdir()
    done = clean_leftovers(parent)
    assert len(done) == 2
    assert (parent / "mine" / "adapter_config.json").read_text() == '{"kept": true}'
    assert sorted(p.name for p in parent.iterdir()) == sorted([live.name, ".my-notes", "mine"])


def test_the_dashboard_cleans_the_workspace_it_opens(tmp_path):
    workspace = tmp_path / "ws"
    adapters = adapters_dir(workspace)
    (adapters / ".incoming" / "stage-x").mkdir(parents=True)  # the staging area of older versions
    (adapters / ".spam.mergescope-staging-999999999-zz").mkdir()
    assert len(clean_workspace(workspace)) == 2
    assert list(adapters.iterdir()) == []


def test_staged_folder_refuses_before_any_work(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1")
    with pytest.raises(StagingError, match="not a mergescope/PEFT output"), staged_folder(tmp_path / "data", True):
        raise AssertionError("the block must not run")


# ----------------------------------------------------------------------------------------------
# Zip imports: bombs refused before extraction, passengers never kept


def _adapter_zip_members(prefix: str = "spam/") -> dict[str, bytes]:
    return {prefix + p.name: p.read_bytes() for p in sorted(ZOO_ADAPTER.iterdir())}


def test_a_1_gb_zero_filled_member_is_refused_before_anything_is_extracted(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in _adapter_zip_members().items():
            archive.writestr(name, data)
        chunk = bytes(64 * 1024**2)
        with archive.open("spam/adapter_model.bin", "w", force_zip64=True) as member:
            for _ in range(16):  # 1 GiB of zeros
                member.write(chunk)
    data = buffer.getvalue()
    assert len(data) < 1.5 * 1024**2
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k))
    with pytest.raises(WorkspaceError, match=r"expands .* times.*zip bomb"):
        import_adapter_zip(data, tmp_path / "ws")
    assert opened == [], "nothing may be decompressed before the checks pass"
    assert not (tmp_path / "ws").exists()


def test_the_ratio_limit_also_holds_on_the_bytes_actually_written(tmp_path, monkeypatch):
    """Headers can lie: with the declared-size checks bypassed, the stream is still cut off."""
    members = _adapter_zip_members()
    members["spam/adapter_model.safetensors"] = bytes(8 * 1024**2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    monkeypatch.setattr("merging.store.workspace._check_ratio", lambda info, ratio: None)
    with pytest.raises(WorkspaceError, match="zip bomb"):
        import_adapter_zip(buffer.getvalue(), tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


def test_files_an_adapter_does_not_need_are_not_kept(tmp_path):
    members = _adapter_zip_members()
    members["spam/README.md"] = os.urandom(3 * 1024**2)  # a big model card: incompressible, under every limit
    members["spam/optimizer.pt"] = b"state"
    members["spam/checkpoint-10/adapter_model.safetensors"] = b"old"
    members["other.txt"] = b"hello"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    folder = import_adapter_zip(buffer.getvalue(), tmp_path / "ws")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, META_FILE])


def test_a_zip_whose_mergescope_json_is_not_an_object_is_refused(tmp_path):
    members = _adapter_zip_members()
    members["spam/mergescope.json"] = b"[1]"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(AdapterError, match=r"up\.zip:spam.*mergescope\.json: expected a JSON object"):
        import_adapter_zip(buffer.getvalue(), tmp_path / "ws", file_name="up.zip")
    assert not (tmp_path / "ws").exists()


# ----------------------------------------------------------------------------------------------
# The run store


def _read_only_sqlite(monkeypatch) -> None:
    """SQLite's own read-only mode (a chmod does not stop root, who runs CI containers)."""
    real = sqlite3.connect

    def connect(target, *args, uri=False, **kwargs):
        if not uri:
            return real(f"{Path(target).resolve().as_uri()}?mode=ro", *args, uri=True, **kwargs)
        return real(target, *args, uri=uri, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_a_corrupt_store_names_its_path_and_stores_nothing(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = RunStore(path)
    assert str(path) in store.problem and "not an SQLite database" in store.problem
    assert store.add({"method": "ties"}, {}) is None and store.list() == [] and store.get(1) is None
    assert path.read_bytes() == b"this is not a database" * 100


def test_a_foreign_database_is_never_written(tmp_path):
    path = tmp_path / "runs.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE invoices (number INTEGER, amount REAL)")
    connection.execute("INSERT INTO invoices VALUES (1, 9.5)")
    connection.commit()
    connection.close()
    store = RunStore(path)
    assert str(path) in store.problem and "another program's database" in store.problem
    assert store.add({"method": "ties"}, {}) is None
    connection = sqlite3.connect(path)
    assert [r[0] for r in connection.execute("SELECT name FROM sqlite_master")] == ["invoices"]
    connection.close()


def test_a_read_only_store_lists_its_runs_and_says_new_ones_are_not_stored(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    first = RunStore(path).add({"method": "ties"}, {"average": 0.5})
    _read_only_sqlite(monkeypatch)
    store = RunStore(path)
    assert str(path) in store.problem and "read-only" in store.problem
    assert [r.id for r in store.list()] == [first]
    assert store.add({"method": "dare"}, {}) is None and store.delete([first]) == 0


def test_a_malformed_row_is_skipped_and_reported(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    good = store.add({"method": "ties"}, {"average": 0.5})
    connection = sqlite3.connect(path)
    connection.execute("INSERT INTO runs (created, kind, recipe, results, summary, device, seconds) "
                       "VALUES (1.0, 'merge', '{not json', '{}', '{}', 'cpu', 0.0)")
    connection.execute("INSERT INTO runs (created, kind, recipe, results, summary, device, seconds) "
                       "VALUES ('yesterday', 'merge', '{}', '[1]', '{}', 'cpu', 0.0)")
    connection.commit()
    connection.close()
    listing = store.read()
    assert [r.id for r in listing.records] == [good]
    reasons = {row.id: row.reason for row in listing.skipped}
    assert set(reasons) == {good + 1, good + 2}
    assert "recipe" in reasons[good + 1] and "JSON" in reasons[good + 1]
    assert "results" in reasons[good + 2] or "created" in reasons[good + 2]
    assert store.get(good + 1) is None and store.get(good).recipe == {"method": "ties"}


# ----------------------------------------------------------------------------------------------
# Pages: a broken adapter or run store never breaks a page


def _no_exception(at) -> None:
    assert_page_ok(at, errors_allowed=True)


def _broken_names(workspace: Path) -> list[str]:
    from merging.lab.catalog import catalog

    return [e.name for e in catalog(workspace, None) if not e.usable]


def test_the_adapters_page_lists_a_broken_adapter_and_removes_it(app_test, tmp_path):
    workspace = Path(app_test.session_state["workspace"])
    broken = adapters_dir(workspace) / "broken-meta"
    shutil.copytree(ZOO_ADAPTER, broken)
    (broken / META_FILE).write_text("[1]")
    assert _broken_names(workspace) == ["broken-meta"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = adapters_dir(workspace) / f".spam.mergescope-staging-{dead.pid}-abc123"  # from a killed import
    (leftover / "half").mkdir(parents=True)
    at = app_test.switch_page("pages/adapters.py").run()
    _no_exception(at)
    assert not leftover.exists(), "the app cleans the workspace it opens"
    assert any("broken-meta" in e.value and "expected a JSON object" in e.value for e in at.error)
    at.button(key="adapters_remove:broken-meta").click().run()
    _no_exception(at)
    assert not broken.exists()
    assert any("Removed" in s.value for s in at.success)
    assert not any("broken-meta" in e.value for e in at.error)


def test_every_page_stays_usable_with_a_broken_adapter_and_a_corrupt_run_store(app_test):
    workspace = Path(app_test.session_state["workspace"])
    damages = {
        "bad-alpha": lambda folder: edit_config(folder, lora_alpha="sixteen"),
        "meta-a-list": lambda folder: (folder / META_FILE).write_text("[1]"),
        "meta-bad-fields": lambda folder: (folder / META_FILE).write_text('{"task": 5, "single_task_accuracy": "x"}'),
        "rank-zero": lambda folder: edit_tensors(folder, _rank(0)),
    }
    # an adapter of the app's own (tiny) zoo: the pages list the adapters of the chosen base model only
    source = Path(os.environ["MERGESCOPE_ZOO"]) / "sms_spam-standard"
    for name, damage in damages.items():
        folder = adapters_dir(workspace) / name
        shutil.copytree(source, folder)
        damage(folder)
    (workspace / "runs.sqlite").write_bytes(b"garbage" * 200)
    for page in ("pages/merge.py", "pages/interference.py", "pages/sweep.py", "pages/adapters.py", "pages/runs.py"):
        at = app_test.switch_page(page).run()
        _no_exception(at)
        if page == "pages/merge.py":  # what the Adapters page calls broken is not offered for a merge
            assert not {"bad-alpha", "meta-a-list", "meta-bad-fields"} & set(at.multiselect(key="merge_adapters").options)
            assert any("bad-alpha" in w.value and "lora_alpha" in w.value for w in at.warning)
    at = app_test.switch_page("pages/adapters.py").run()
    assert set(_broken_names(workspace)) == {"bad-alpha", "meta-a-list", "meta-bad-fields"}
    for name in ("bad-alpha", "meta-a-list", "meta-bad-fields"):
        assert at.button(key=f"adapters_remove:{name}")
    # rank 0 shows only when the tensors are read: inspecting it says so and offers removal
    at.selectbox(key="adapters_inspect").set_value("rank-zero").run()
    _no_exception(at)
    assert any("rank 0" in e.value for e in at.error)
    at.button(key="adapters_remove_inspected").click().run()
    _no_exception(at)
    assert not (adapters_dir(workspace) / "rank-zero").exists()
    at = app_test.switch_page("pages/runs.py").run()
    assert any("runs.sqlite" in w.value and "not stored" in w.value for w in at.warning)


def test_the_runs_page_shows_the_good_runs_when_a_row_is_malformed(app_test):
    workspace = Path(app_test.session_state["workspace"])
    store = RunStore(workspace / "runs.sqlite")
    first = store.add({"adapters": [], "method": "ties"}, {"average": {"merged": 0.5}})
    connection = sqlite3.connect(workspace / "runs.sqlite")
    connection.execute("INSERT INTO runs (created, kind, recipe, results, summary, device, seconds) "
                       "VALUES (1.0, 'merge', '{not json', '{}', '{}', 'cpu', 0.0)")
    connection.commit()
    connection.close()
    last = store.add({"adapters": [], "method": "task_arithmetic"}, {"average": {"merged": 0.25}})
    at = app_test.switch_page("pages/runs.py").run()
    _no_exception(at)
    # the two good runs are listed (newest first), the malformed one is not, and is named instead
    table = at.dataframe[0].value
    assert list(table["id"]) == [last, first]
    (warning,) = [w.value for w in at.warning if "could not be read back" in w.value]
    assert f"row {first + 1}" in warning and "recipe" in warning


# ----------------------------------------------------------------------------------------------
# Fuzz: truncations and bit flips of a real adapter folder never escape as an unhandled exception


HOSTILE_VALUES = [None, True, False, 0, -1, 1, 8, 1e40, -1e40, 1e-45, 10**30, "", "x", "8", [], [1], {}, {"(": 1},
                  {"query": None}, {"q": "x"}, "NaN"]


def _fuzz_source(tmp_path: Path) -> dict[str, bytes]:
    """A small adapter of two ranks (rank_pattern, alpha_pattern), a head and mergescope.json."""
    adapter = random_adapter("fuzz", {"layer.0.query": (6, 5), "layer.1.query": (6, 5)}, rank=3, seed=4)
    adapter.modules["layer.1.query"] = LoraModule(torch.randn(2, 5), torch.randn(6, 2), 0.5)
    adapter.saved_modules = {"classifier.weight": torch.randn(2, 6)}
    adapter.meta = {"task": "sms_spam", "labels": ["ham", "spam"], "single_task_accuracy": 0.9,
                    "data": {"train_size": 10, "eval_size": 4, "seed": 0}}
    folder = save_adapter(adapter, tmp_path / "fuzz-source")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _mutate(rng: random.Random, files: dict[str, bytes]) -> dict[str, bytes]:
    files = dict(files)
    target = rng.choice(sorted(files))
    data = bytearray(files[target])
    kind = rng.random()
    if kind < 0.3:  # truncate
        data = data[: rng.randrange(len(data) + 1)]
    elif kind < 0.75:  # flip a few bits
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
    elif target.endswith(".json"):  # a hostile value in a field
        try:
            document = json.loads(bytes(data))
        except ValueError:
            document = None
        if isinstance(document, dict) and document:
            key = rng.choice(sorted(document))
            document[key] = rng.choice(HOSTILE_VALUES)
            data = bytearray(json.dumps(document).encode())
        else:
            data = bytearray(b"[1]")
    else:  # overwrite a run of bytes (the header's JSON, or tensor data) with random ones
        start = rng.randrange(len(data))
        for position in range(start, min(len(data), start + rng.randint(1, 16))):
            data[position] = rng.randrange(256)
    files[target] = bytes(data)
    if rng.random() < 0.05:  # now and then a file goes missing
        del files[rng.choice(sorted(files))]
    return files


def test_fuzzed_adapter_folders_load_or_are_refused_with_a_message(tmp_path):
    source = _fuzz_source(tmp_path)
    rng = random.Random(20261202)
    folder = tmp_path / "fuzzed"
    outcomes = {"loaded": 0, "refused": 0}
    started = time.perf_counter()
    cases = 2000
    for case in range(cases):
        files = _mutate(rng, source)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        try:
            adapter = load_adapter(folder)
        except ValueError as err:  # AdapterError is a ValueError; anything else is a bug
            assert str(err).strip(), f"case {case}: an empty message"
            outcomes["refused"] += 1
            continue
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case}: unhandled {type(err).__name__}: {err}")
        outcomes["loaded"] += 1
        for name, module in adapter.modules.items():
            assert math.isfinite(module.scale), (case, name)
            assert torch.isfinite(module.delta()).all(), (case, name)
    assert outcomes["loaded"] > 50 and outcomes["refused"] > 200, outcomes  # both paths were exercised
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("command", [["train", "sms_spam"], ["zoo", "build"]])
def test_train_and_zoo_build_refuse_to_overwrite_an_unrelated_folder_before_any_work(tmp_path, capsys, command,
                                                                                      monkeypatch):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.csv").write_text("text,label\n")
    monkeypatch.setattr("merging.training.pipeline.train_task_adapter", lambda *a, **k: pytest.fail("trained anyway"))
    monkeypatch.setattr("merging.training.zoo.build_zoo", lambda *a, **k: pytest.fail("built anyway"))
    line = one_line_error(capsys, *command, "--out", precious, "--overwrite")
    assert "not a mergescope/PEFT output" in line
    assert (precious / "data.csv").read_text() == "text,label\n"


def test_a_zoo_is_replaced_only_by_a_zoo_build(tmp_path):
    """staged_folder's markers: the zoo builder replaces a folder holding manifest.json, nothing else."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "manifest.json").write_text('{"adapters": [{"path": "old-adapter"}]}')
    (zoo / "old-adapter").mkdir()
    (zoo / "notes").mkdir()  # not the zoo's: kept
    with staged_folder(zoo, overwrite=True, markers=("manifest.json",), owned=zoo_owned(zoo)) as staging:
        (staging / "manifest.json").write_text('{"new": true}')
    assert sorted(p.name for p in zoo.iterdir()) == ["manifest.json", "notes"]
    assert (zoo / "manifest.json").read_text() == '{"new": true}'
    adapter_only = tmp_path / "an-adapter"
    shutil.copytree(ZOO_ADAPTER, adapter_only)
    with pytest.raises(StagingError, match="holds no manifest.json"), staged_folder(
        adapter_only, True, markers=("manifest.json",)
    ):
        raise AssertionError("the block must not run")
    assert load_adapter(adapter_only).modules
