"""The workspace: importing adapter folders and zips safely, storing task files, training one adapter."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from merging.adapters.lora import META_FILE, AdapterError, load_adapter
from merging.store.workspace import (
    INCOMING,
    WorkspaceError,
    adapters_dir,
    check_adapter_name,
    describe_adapter_folder,
    import_adapter_folder,
    import_adapter_zip,
    store_task_file,
    task_display_name,
    unique_name,
)
from merging.tasks import TaskError
from merging.training.pipeline import train_task_adapter
from tests.peft_fixtures import save_lora

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory) -> Path:
    """A real tiny-BERT PEFT LoRA folder with a classifier head."""
    folder = tmp_path_factory.mktemp("src") / "my-adapter"
    save_lora(folder, "bert", seed=1, rank=4, modules_to_save=["classifier"])
    return folder


def _leftovers(workspace: Path) -> list[Path]:
    return [p for p in workspace.rglob("*")] if workspace.exists() else []


def _zip_of(files: dict[str, bytes], special: dict[str, int] | None = None) -> bytes:
    """A zip with the given members; `special` maps member names to Unix mode bits (links, devices)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            if special and name in special:
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = special[name] << 16
                archive.writestr(info, content)
            else:
                archive.writestr(name, content)
    return buffer.getvalue()


def _adapter_members(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{p.name}": p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Folder import


def test_import_folder_copies_a_loadable_adapter(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    folder = import_adapter_folder(adapter_folder, workspace)
    assert folder == adapters_dir(workspace) / "my-adapter"
    original, copied = load_adapter(adapter_folder), load_adapter(folder)
    assert set(copied.modules) == set(original.modules)
    for name, module in original.modules.items():
        assert torch.equal(copied.modules[name].A, module.A)
    assert not (adapters_dir(workspace) / INCOMING).exists()
    info = describe_adapter_folder(folder)
    assert info["rank"] == "4" and "query" in info["target_modules"]


def test_import_folder_refuses_name_clash_unless_overwrite(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    import_adapter_folder(adapter_folder, workspace, name="a")
    with pytest.raises(WorkspaceError, match="already exists"):
        import_adapter_folder(adapter_folder, workspace, name="a")
    assert import_adapter_folder(adapter_folder, workspace, name="a", overwrite=True).is_dir()
    with pytest.raises(WorkspaceError, match="zoo"):
        import_adapter_folder(adapter_folder, workspace, name="zoo-one", reserved=["zoo-one"])
    assert sorted(p.name for p in adapters_dir(workspace).iterdir()) == ["a"]


def test_import_folder_refuses_bad_folders_with_clear_messages(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        import_adapter_folder(empty, workspace)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(AdapterError, match="plain LoRA"):
        import_adapter_folder(prefix, workspace)
    with pytest.raises(WorkspaceError, match="no such folder"):
        import_adapter_folder(tmp_path / "nowhere", workspace)
    with pytest.raises(WorkspaceError, match="may only hold"):
        import_adapter_folder(adapter_folder, workspace, name="../evil")
    assert _leftovers(workspace) == []


def test_names():
    assert check_adapter_name(" ok-name_1.2 ") == "ok-name_1.2"
    for bad in ("", ".hidden", "a/b", "a b", "x" * 101):
        with pytest.raises(WorkspaceError):
            check_adapter_name(bad)


def test_unique_name_skips_taken_names(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    import_adapter_folder(adapter_folder, workspace, name="t-standard")
    assert unique_name(workspace, "t-standard") == "t-standard-2"
    assert unique_name(workspace, "z", reserved=["z"]) == "z-2"


# ----------------------------------------------------------------------------------------------
# Zip import


def test_import_zip_with_a_folder_inside(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    data = _zip_of(_adapter_members(adapter_folder, "zipped-adapter/"))
    folder = import_adapter_zip(data, workspace)
    assert folder.name == "zipped-adapter"
    assert load_adapter(folder).modules
    assert sorted(p.name for p in adapters_dir(workspace).iterdir()) == ["zipped-adapter"]


def test_import_zip_flat_takes_the_file_name(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    upload = io.BytesIO(_zip_of(_adapter_members(adapter_folder)))
    upload.name = "flat one.zip"
    assert import_adapter_zip(upload, workspace).name == "flat-one"


@pytest.mark.parametrize(
    "members, special, message",
    [
        ({"../evil/adapter_config.json": b"{}"}, None, r"outside"),
        ({"a/../../evil": b"x"}, None, r"outside"),
        ({"/etc/evil": b"x"}, None, r"absolute"),
        ({"C:/evil": b"x"}, None, r"absolute"),
        ({"a\\..\\evil": b"x"}, None, r"backslash"),
        ({"link": b"/etc/passwd"}, {"link": stat.S_IFLNK | 0o777}, r"symbolic link"),
        ({"fifo": b""}, {"fifo": stat.S_IFIFO | 0o644}, r"not a regular file"),
    ],
)
def test_import_zip_refuses_unsafe_members(adapter_folder, tmp_path, members, special, message):
    workspace = tmp_path / "ws"
    data = _zip_of({**_adapter_members(adapter_folder, "ok/"), **members}, special)
    with pytest.raises(WorkspaceError, match=message):
        import_adapter_zip(data, workspace)
    assert _leftovers(workspace) == []
    assert not (tmp_path / "evil").exists()


def test_import_zip_refuses_oversize_and_bombs(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    good = _zip_of(_adapter_members(adapter_folder, "ok/"))
    with pytest.raises(WorkspaceError, match="larger than the limit"):
        import_adapter_zip(good, workspace, max_bytes=len(good) - 1)
    bomb = _zip_of({**_adapter_members(adapter_folder, "ok/"), "ok/zeros.bin": b"\0" * (8 * 1024**2)})
    assert len(bomb) < 100_000  # compresses ~1000:1
    with pytest.raises(WorkspaceError, match="zip bomb"):
        import_adapter_zip(bomb, workspace, max_unzipped_bytes=4 * 1024**2)
    many = _zip_of({f"f{i}": b"" for i in range(20)})
    with pytest.raises(WorkspaceError, match="members"):
        import_adapter_zip(many, workspace, max_members=10)
    assert _leftovers(workspace) == []


def test_import_zip_refuses_lying_headers(adapter_folder, tmp_path, monkeypatch):
    """The cap holds on the bytes actually written, even when the declared sizes are small."""
    workspace = tmp_path / "ws"
    bomb = _zip_of({**_adapter_members(adapter_folder, "ok/"), "ok/zeros.bin": b"\0" * (3 * 1024**2)})
    real = zipfile.ZipFile.infolist

    def lying(self):
        infos = real(self)
        for info in infos:
            info.file_size = min(info.file_size, 10)  # headers claim tiny members
        return infos

    monkeypatch.setattr(zipfile.ZipFile, "infolist", lying)
    with pytest.raises(WorkspaceError, match="zip bomb|damaged"):
        import_adapter_zip(bomb, workspace, max_unzipped_bytes=1024**2)
    assert _leftovers(workspace) == []


def test_import_zip_refuses_bad_contents(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    with pytest.raises(WorkspaceError, match="not a zip"):
        import_adapter_zip(b"not a zip at all", workspace)
    with pytest.raises(WorkspaceError, match="no adapter_config.json"):
        import_adapter_zip(_zip_of({"readme.txt": b"hello"}), workspace)
    two = _zip_of({**_adapter_members(adapter_folder, "a/"), **_adapter_members(adapter_folder, "b/")})
    with pytest.raises(WorkspaceError, match="2 adapter folders"):
        import_adapter_zip(two, workspace)
    members = _adapter_members(adapter_folder, "broken/")
    members["broken/adapter_config.json"] = json.dumps({"peft_type": "LORA", "use_dora": True}).encode()
    with pytest.raises(AdapterError, match="DoRA") as caught:
        import_adapter_zip(members and _zip_of(members), workspace, file_name="up.zip")
    assert INCOMING not in str(caught.value) and "up.zip" in str(caught.value)
    assert _leftovers(workspace) == []


def test_import_zip_name_clash(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    data = _zip_of(_adapter_members(adapter_folder, "same/"))
    import_adapter_zip(data, workspace)
    with pytest.raises(WorkspaceError, match="already exists"):
        import_adapter_zip(data, workspace)
    assert import_adapter_zip(data, workspace, overwrite=True).name == "same"
    assert sorted(p.name for p in adapters_dir(workspace).iterdir()) == ["same"]


# ----------------------------------------------------------------------------------------------
# Task files


def test_store_task_file_keeps_each_version(tmp_path):
    one = store_task_file(b"text,label\na,x\nb,y\n", "reviews.csv", tmp_path)
    again = store_task_file(io.BytesIO(b"text,label\na,x\nb,y\n"), "reviews.csv", tmp_path)
    other = store_task_file(b"text,label\nc,x\nd,y\n", "reviews.csv", tmp_path)
    assert one == again and one != other
    assert task_display_name(one) == task_display_name(other) == "reviews"
    with pytest.raises(WorkspaceError, match="unsupported"):
        store_task_file(b"x", "notes.txt", tmp_path)
    with pytest.raises(WorkspaceError, match="limit"):
        store_task_file(b"x" * 100, "big.csv", tmp_path, max_bytes=10)
    with pytest.raises(TaskError, match="bad.csv has no 'text' column"):
        store_task_file(b"words,label\nhello,x\n", "bad.csv", tmp_path)
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == sorted([one.name, other.name])


def test_store_task_file_leaves_nothing_for_a_bad_file(tmp_path):
    with pytest.raises(TaskError, match="not UTF-8"):
        store_task_file(b"text,label\n\xff\xfe,x\n", "latin.csv", tmp_path / "ws")
    assert _leftovers(tmp_path / "ws") == []


# ----------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from tests.tiny_models import tiny_bert

    folder = tmp_path_factory.mktemp("base") / "tiny-bert"
    model, tokenizer = tiny_bert()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _task_csv() -> bytes:
    rows = ["text,label"]
    for extra in ("one", "two", "three", "red", "blue", "green"):
        rows += [f"good great movie {extra},pos", f"bad awful film {extra},neg"]
    return ("\n".join(rows) + "\n").encode()


def test_train_task_adapter_user_file_osrm(tiny_base, tmp_path):
    workspace = tmp_path / "ws"
    task_file = store_task_file(_task_csv(), "toy.csv", workspace)
    steps = []
    out = adapters_dir(workspace) / "toy-osrm"
    trained = train_task_adapter(
        task_file, out, init="osrm", other_tasks=["sms_spam"], base_model=str(tiny_base), rank=2,
        epochs=1, batch_size=4, train_size=8, eval_size=4, osrm_samples=8, device="cpu",
        progress=lambda done, total, what: steps.append((done, total)),
    )  # fmt: skip
    assert trained.folder == out and trained.task == "toy"
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(out.parent.stat().st_mode)
    adapter = load_adapter(out)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["task"] == "toy" and meta["init"] == "osrm" and meta["base_model"] == str(tiny_base)
    assert meta["task_file"] == str(task_file.resolve())
    assert meta["data"] == {"train_size": 8, "eval_size": 4, "seed": 0, "max_length": 48}
    assert meta["other_tasks"] == ["sms_spam"]
    assert 0.0 <= meta["single_task_accuracy"] <= 1.0 and meta["single_task_accuracy"] == trained.single_task_accuracy
    assert adapter.saved_modules and adapter.ranks() and set(adapter.ranks().values()) == {2}
    assert steps and steps[-1] == (1000, 1000) and all(a[0] <= b[0] for a, b in zip(steps, steps[1:]))
    assert sorted(p.name for p in adapters_dir(workspace).iterdir()) == ["toy-osrm"]

    # the lab reads the split back from the meta
    from merging.lab.lab import task_data_for

    assert len(task_data_for(adapter).eval_texts) == 4


def test_train_task_adapter_cancel_leaves_nothing(tiny_base, tmp_path):
    class Stop(Exception):
        pass

    def cancel(done, total, what):
        if done > 100:
            raise Stop()

    out = tmp_path / "ws" / "adapters" / "sms-standard"
    with pytest.raises(Stop):
        train_task_adapter("sms_spam", out, base_model=str(tiny_base), epochs=1, train_size=16, eval_size=4,
                           batch_size=4, device="cpu", progress=cancel)
    assert _leftovers(tmp_path / "ws") == []
    with pytest.raises(WorkspaceError, match="other task"):
        train_task_adapter("sms_spam", out, init="osrm", other_tasks=[], base_model=str(tiny_base), device="cpu")


# ----------------------------------------------------------------------------------------------
# Broken adapters: listed with their problem, removable, and never followed outside the workspace


def test_broken_adapters_are_listed_with_the_file_and_field(adapter_folder, tmp_path):
    from merging.lab.catalog import catalog

    workspace = tmp_path / "ws"
    good = import_adapter_folder(adapter_folder, workspace, name="good")
    bad_meta = import_adapter_folder(adapter_folder, workspace, name="bad-meta")
    (bad_meta / META_FILE).write_text("[1]")
    bad_alpha = import_adapter_folder(adapter_folder, workspace, name="bad-alpha")
    config = json.loads((bad_alpha / "adapter_config.json").read_text())
    config["lora_alpha"] = "sixteen"
    (bad_alpha / "adapter_config.json").write_text(json.dumps(config))
    (adapters_dir(workspace) / "no-config").mkdir()
    (adapters_dir(workspace) / ".spam.mergescope-staging-1-x").mkdir()  # staging: not an adapter
    listed = {e.name: e.error for e in catalog(workspace, None) if not e.usable}
    assert set(listed) == {"bad-meta", "bad-alpha", "no-config"}
    assert str(bad_meta / META_FILE) in listed["bad-meta"] and "JSON object" in listed["bad-meta"]
    assert "'lora_alpha'" in listed["bad-alpha"] and "'sixteen'" in listed["bad-alpha"]
    assert "missing adapter_config.json" in listed["no-config"]
    assert load_adapter(good).modules


def test_remove_adapter_removes_only_a_workspace_adapter(adapter_folder, tmp_path):
    from merging.store.workspace import remove_adapter

    workspace = tmp_path / "ws"
    folder = import_adapter_folder(adapter_folder, workspace, name="doomed")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (adapters_dir(workspace) / "link").symlink_to(outside, target_is_directory=True)
    for crafted in ("../outside", "..", ".", "", "/tmp", ".hidden", "nope"):
        with pytest.raises(WorkspaceError):
            remove_adapter(workspace, crafted)
    remove_adapter(workspace, "link")  # the link goes, never what it points to
    assert (outside / "keep.txt").read_text() == "mine"
    remove_adapter(workspace, "doomed")
    assert not folder.exists()
    assert list(adapters_dir(workspace).iterdir()) == []


@pytest.mark.parametrize("config", ['{"r": [8], "rank_pattern": ["x"]}', '{"r": {"a": 1}}', "[1]", "[" * 100000,
                                    '{"target_modules": 5, "base_model_name_or_path": [1]}'])
def test_describe_adapter_folder_never_raises(tmp_path, config):
    (tmp_path / "adapter_config.json").write_text(config)
    described = describe_adapter_folder(tmp_path)
    assert set(described) >= {"rank", "target_modules", "base_model"}


def test_an_import_that_replaces_an_adapter_swaps_it_in_whole(adapter_folder, tmp_path):
    workspace = tmp_path / "ws"
    first = import_adapter_folder(adapter_folder, workspace, name="same")
    (first / "stale.txt").write_text("old")
    import_adapter_folder(adapter_folder, workspace, name="same", overwrite=True)
    assert not (first / "stale.txt").exists() and load_adapter(first).modules
    assert sorted(p.name for p in adapters_dir(workspace).iterdir()) == ["same"]  # nothing left aside
