"""A hostile-input sweep: several hundred probes of what a user (or an attacker) can hand mergescope.

Groups: adapter folders, recipes (JSON, YAML, mergekit), outputs and interrupted writes, evaluation
files, search, flag values, zip import, share links, the run store. Each probe runs through the command line
in-process (`merging.cli.main`, stdout/stderr captured, SystemExit caught) or through the library,
and its outcome is classified:

  refusal      exit 2 / the library's own error: one line that names the file, field or flag
  accepted     valid input, and the result checks out
  traceback    an exception that is not one of mergescope's messages, or more than one line
  silent       bad input accepted without a word (or a valid input refused, or a hang)
  data loss    a file the user had is gone or changed
  security     something outside the sandbox was read/written, or code ran

    python scripts/hostile_sweep.py            # all probes; counts per class and group
    python scripts/hostile_sweep.py -k yaml    # only probes whose group/name holds "yaml"
    python scripts/hostile_sweep.py --skip flags --json results.json

Exit status 1 when any probe is neither a refusal nor accepted. Probes run in a temporary folder;
nothing outside it is written.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import io
import json
import os
import pickle
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from merging.cli import main as cli_main  # noqa: E402

ZOO = REPO / "zoo"
ADAPTER_A = ZOO / "sms_spam-standard"
ADAPTER_B = ZOO / "question_type-standard"
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MODULE = "base_model.model.bert.encoder.layer.0.attention.self.query"
A_KEY, B_KEY = f"{MODULE}.lora_A.weight", f"{MODULE}.lora_B.weight"

CLASSES = ("refusal", "accepted", "traceback", "silent", "data loss", "security")


@dataclass
class Result:
    group: str
    name: str
    outcome: str
    detail: str


class Sandbox:
    """A fresh folder per probe, with copies of two zoo adapters and a canary that must survive."""

    def __init__(self, root: Path, index: int):
        self.dir = root / f"p{index:04d}"
        self.dir.mkdir()
        self.canary = self.dir / "canary.txt"
        self.canary.write_text("the user's file")

    def adapter(self, name: str = "a", source: Path = ADAPTER_A) -> Path:
        folder = self.dir / name
        shutil.copytree(source, folder)
        return folder

    def recipe(self, data, name: str = "recipe.json") -> Path:
        path = self.dir / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    def good_recipe(self, **extra) -> dict:
        return {"adapters": [{"path": str(self.adapter("a")), "weight": 0.5},
                             {"path": str(self.adapter("b", ADAPTER_B)), "weight": 0.5}],
                "method": "task_arithmetic", "device": "cpu", **extra}


def run_cli(argv: list, cwd: Path | None = None) -> tuple[int | None, str, str, str | None]:
    """(exit code, stdout, stderr, traceback text or None), in-process."""
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    code, trace = None, None
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")
            try:
                code = cli_main([str(a) for a in argv])
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 2
            except BaseException:  # noqa: BLE001 — what escapes main is what the user would see
                trace = traceback.format_exc()
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue(), trace


def classify_cli(result, expect: str, names: tuple[str, ...] = ()) -> tuple[str, str]:
    code, _, err, trace = result
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if trace:
        return "traceback", trace.strip().splitlines()[-1][:200]
    if code == 2:
        if len(lines) != 1 or not lines[0].startswith("error:"):
            return "traceback", f"{len(lines)} lines: {' | '.join(lines)[:200]}"
        if expect == "accept":
            return "silent", f"valid input refused: {lines[0][:200]}"
        if names and not any(n in lines[0] for n in names):
            return "silent", f"refused without naming {names}: {lines[0][:200]}"
        return "refusal", lines[0][:200]
    if code == 0:
        warned = [line for line in lines if "warning" in line.lower() or "note" in line.lower()]
        if expect == "accept":
            return "accepted", "exit 0"
        if expect == "note" and (warned or "note" in result[1]):
            return "refusal", "accepted with a note"
        return "silent", f"bad input accepted (exit 0){': ' + lines[0][:120] if lines else ''}"
    return "traceback", f"exit {code}: {' | '.join(lines)[:200]}"


def library(call: Callable[[], object], expect: str, errors: tuple[type, ...], names: tuple[str, ...] = ()):
    """Run a library call; its own error (one line naming something) is a refusal."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = call()
    except errors as err:
        text = str(err)
        if expect == "accept":
            return "silent", f"valid input refused: {text[:200]}"
        if "\n" in text.strip():
            return "traceback", f"multi-line: {text[:200]}"
        if names and not any(n in text for n in names):
            return "silent", f"refused without naming {names}: {text[:200]}"
        return "refusal", text[:200]
    except BaseException as err:  # noqa: BLE001
        return "traceback", f"{type(err).__name__}: {str(err)[:200]}"
    if expect == "accept":
        return "accepted", "ok"
    if expect == "note" and (caught or value):
        return "refusal", f"accepted with a note: {str(value)[:120]}"
    return "silent", f"bad input accepted: {str(value)[:160]}"


PROBES: list[tuple[str, str, Callable[[Sandbox], tuple[str, str]]]] = []


def add(group: str, name: str, fn: Callable[[Sandbox], tuple[str, str]]) -> None:
    PROBES.append((group, name, fn))


# ----------------------------------------------------------------------------------------------
# Adapter folders (through `inspect`, one folder damaged one way)


def _inspect(box: Sandbox, folder: Path, expect: str, names=()):
    outcome = classify_cli(run_cli(["inspect", folder]), expect, names)
    if box.canary.read_text() != "the user's file":
        return "data loss", "canary changed"
    return outcome


def _config_probe(changes: dict, expect: str):
    def run(box: Sandbox):
        folder = box.adapter()
        config = json.loads((folder / CONFIG).read_text())
        config.update(changes)
        (folder / CONFIG).write_text(json.dumps(config))
        return _inspect(box, folder, expect, (CONFIG, *changes))

    return run


CONFIG_VALUES = {
    "r": [0, -1, "8", 8.5, True, [8], {}, 10**30, 4],
    "lora_alpha": [0, None, "16", [16], True, {}, 1e308, 10**400],
    "target_modules": [5, {"a": 1}],
    "use_rslora": ["yes", 1, [], {}],
    "use_dora": [True],
    "peft_type": ["IA3", 5, "LOKR"],
    "base_model_name_or_path": [5, ["a"], {}],
    "alpha_pattern": [["q"], {"query(": 4}, {"query": "big"}, {"query": 0}],
    "rank_pattern": [["q"], {"[query": 8}, {"query": 0}, {"query": 8.5}, {"query": 4}],
    "fan_in_fan_out": ["yes"],
    "layers_to_transform": ["all"],
}
for _field, _values in CONFIG_VALUES.items():
    for _value in _values:
        add("adapter folders", f"config {_field}={json.dumps(_value)[:30]}", _config_probe({_field: _value}, "refuse"))
for _field, _value in {"r": 8.0, "use_rslora": False, "lora_alpha": 16.0, "base_model_name_or_path": None,
                       "rank_pattern": {"query": 8}, "alpha_pattern": {"query": 16}, "task_type": None,
                       "unknown_field": 1}.items():
    add("adapter folders", f"config {_field}={json.dumps(_value)} (valid)", _config_probe({_field: _value}, "accept"))


def _raw_config_probe(raw: bytes, label: str, expect: str = "refuse"):
    def run(box: Sandbox):
        folder = box.adapter()
        (folder / CONFIG).write_bytes(raw)
        return _inspect(box, folder, expect, (CONFIG,))

    add("adapter folders", f"config file {label}", run)


_CONFIG_TEXT = (ADAPTER_A / CONFIG).read_bytes()
for _raw, _label in [
    (b"", "empty"), (b"{", "truncated"), (b"[]", "a list"), (b"null", "null"), (b"1", "a number"),
    (b"\xff\xfe\x00garbage", "not UTF-8"), (b"[" * 200_000 + b"]" * 200_000, "200k-deep nesting"),
    (b'{"r": NaN}', "NaN"), (b'{"r": 8, "r": 4}', "duplicate key"), (b" " * (20 * 1024**2), "20 MB"),
    (os.urandom(4096), "random bytes"), (b'{"lora_alpha": Infinity}', "Infinity"),
]:
    _raw_config_probe(_raw, _label)
_raw_config_probe(b"\xef\xbb\xbf" + _CONFIG_TEXT, "with a BOM", "accept")


def _folder_probe(label: str, damage: Callable[[Path], None], expect: str = "refuse", names=()):
    def run(box: Sandbox):
        folder = box.adapter()
        damage(folder)
        return _inspect(box, folder, expect, names)

    add("adapter folders", label, run)


def _tensors(edit):
    def damage(folder: Path):
        state = load_file(str(folder / WEIGHTS))
        edit(state)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS))

    return damage


def _nan(t):
    t = t.clone()
    t[0, 0] = float("nan")
    return t


def _set(key, fn):
    def edit(state):
        state[key] = fn(state[key])

    return edit


TENSOR_DAMAGE = {
    "NaN in lora_A": _set(A_KEY, _nan),
    "Inf in lora_B": _set(B_KEY, lambda t: t.fill_(float("inf"))),
    "int lora_A": _set(A_KEY, lambda t: t.to(torch.int32)),
    "bool lora_B": _set(B_KEY, lambda t: t > 0),
    "complex lora_A": _set(A_KEY, lambda t: t.to(torch.complex64)),
    "1-D lora_A": _set(A_KEY, lambda t: t.flatten()),
    "3-D lora_B": _set(B_KEY, lambda t: t[None]),
    "rank 0": lambda s: (s.__setitem__(A_KEY, s[A_KEY][:0].clone()), s.__setitem__(B_KEY, s[B_KEY][:, :0].clone())),
    "rank 4 vs config 8": lambda s: (s.__setitem__(A_KEY, s[A_KEY][:4].clone()), s.__setitem__(B_KEY, s[B_KEY][:, :4].clone())),
    "A and B do not chain": _set(B_KEY, lambda t: t[:, :4].clone()),
    "no lora_B": lambda s: s.pop(B_KEY),
    "two lora_A": lambda s: s.__setitem__(f"{MODULE}.lora_A.default.weight", s[A_KEY].clone()),
    "lora_embedding": lambda s: s.__setitem__(f"{MODULE}.lora_embedding_A", s[A_KEY].clone()),
    "float64 1e300": _set(A_KEY, lambda t: t.double().fill_(1e300)),
    "stray tensor": lambda s: s.__setitem__("base_model.model.bert.pooler.dense.weight", torch.ones(3)),
    "NaN in the head": lambda s: s.__setitem__("base_model.model.classifier.weight", _nan(s["base_model.model.classifier.weight"])),
    "no factors at all": lambda s: [s.pop(k) for k in list(s) if "lora_" in k],
    "empty d_in": _set(A_KEY, lambda t: t[:, :0].clone()),
}
for _label, _edit in TENSOR_DAMAGE.items():
    _folder_probe(f"weights {_label}", _tensors(_edit), names=(WEIGHTS, "module", "tensor"))
_folder_probe("weights float16 (valid)", _tensors(lambda s: [s.__setitem__(k, v.half()) for k, v in list(s.items())]), "accept")
_folder_probe("weights bfloat16 (valid)", _tensors(lambda s: [s.__setitem__(k, v.bfloat16()) for k, v in list(s.items())]), "accept")

for _label, _bytes in [("empty", b""), ("garbage", b"not safetensors at all"), ("huge header length", (2**62).to_bytes(8, "little") + b"{}"),
                       ("header not JSON", (8).to_bytes(8, "little") + b"notjson!"), ("random 1 MB", os.urandom(2**20))]:
    _folder_probe(f"weights file {_label}", lambda f, b=_bytes: (f / WEIGHTS).write_bytes(b), names=(WEIGHTS,))
_folder_probe("weights truncated", lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:5000]), names=(WEIGHTS,))
_folder_probe("weights missing", lambda f: (f / WEIGHTS).unlink(), names=(WEIGHTS,))
_folder_probe("config missing", lambda f: (f / CONFIG).unlink(), names=(CONFIG,))
_folder_probe("weights a folder", lambda f: ((f / WEIGHTS).unlink(), (f / WEIGHTS).mkdir()), names=(WEIGHTS,))
_folder_probe("config a folder", lambda f: ((f / CONFIG).unlink(), (f / CONFIG).mkdir()), names=(CONFIG,))
_folder_probe("weights link to /dev/zero", lambda f: ((f / WEIGHTS).unlink(), (f / WEIGHTS).symlink_to("/dev/zero")), names=(WEIGHTS,))
_folder_probe("config link to /etc/passwd", lambda f: ((f / CONFIG).unlink(), (f / CONFIG).symlink_to("/etc/passwd")), names=(CONFIG,))
_folder_probe("config link to /dev/zero", lambda f: ((f / CONFIG).unlink(), (f / CONFIG).symlink_to("/dev/zero")), names=(CONFIG,))
_folder_probe("mergescope.json not an object", lambda f: (f / "mergescope.json").write_text("[1]"), names=("mergescope.json",))
_folder_probe("mergescope.json 200k deep", lambda f: (f / "mergescope.json").write_text("[" * 200_000), names=("mergescope.json",))
_folder_probe("mergescope.json task 5", lambda f: (f / "mergescope.json").write_text('{"task": 5}'), names=("mergescope.json",))


class _RunsACommand:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_probe(label: str, write: Callable[[Path, Path], None], expect: str = "refuse"):
    def run(box: Sandbox):
        folder = box.adapter()
        (folder / WEIGHTS).unlink()
        marker = box.dir / "pwned"
        write(folder / "adapter_model.bin", marker)
        outcome = _inspect(box, folder, expect, ("adapter_model.bin",))
        if marker.exists():
            return "security", "a pickle ran code"
        return outcome

    add("adapter folders", f"pickle {label}", run)


_pickle_probe("running a command (protocol 4)", lambda p, m: p.write_bytes(pickle.dumps({"x": _RunsACommand(str(m))}, protocol=4)))
_pickle_probe("running a command (torch.save)", lambda p, m: torch.save({"x": _RunsACommand(str(m))}, str(p)))
_pickle_probe("garbage", lambda p, m: p.write_bytes(b"garbage"))
_pickle_probe("a list of tensors", lambda p, m: torch.save([torch.ones(2)], str(p)))
_pickle_probe("tensors (valid)", lambda p, m: torch.save(load_file(str(ADAPTER_A / WEIGHTS)), str(p)), "accept")


# ----------------------------------------------------------------------------------------------
# Recipes: JSON, YAML, mergekit (through `merge`)


def _merge(box: Sandbox, recipe: Path, expect: str, names=(), extra=()):
    out = box.dir / "out"
    result = run_cli(["merge", recipe, "--out", out, *extra])
    outcome = classify_cli(result, expect, names)
    if box.canary.read_text() != "the user's file":
        return "data loss", "canary changed"
    if expect != "accept" and outcome[0] == "refusal" and out.exists():
        return "silent", "refused, but an output folder was left"
    if outcome[0] == "accepted":
        from merging.adapters.lora import load_adapter

        try:
            load_adapter(out)
        except Exception as err:  # noqa: BLE001
            return "silent", f"exit 0 but the output does not load: {err}"
    return outcome


def _recipe_probe(group: str, label: str, edit: Callable[[Sandbox, dict], object], expect: str = "refuse",
                  names=(), syntax: str = "json"):
    def run(box: Sandbox):
        data = box.good_recipe()
        changed = edit(box, data)
        data = data if changed is None else changed
        if syntax == "yaml":
            import yaml

            text = data if isinstance(data, str) else yaml.safe_dump(data)
            path = box.recipe(text, "recipe.yaml")
        else:
            path = box.recipe(data)
        return _merge(box, path, expect, names or ("recipe",))

    add(group, label, run)


def _setter(key, value):
    def edit(box, data):
        data[key] = value

    return edit


def _adapter_setter(key, value):
    def edit(box, data):
        data["adapters"][0][key] = value

    return edit


RECIPE_FIELDS = {
    "adapters": [[], "x", [5], [{}], [{"path": 5}], [{"path": "/nonexistent"}], None],
    "method": [5, "tie", "", None, "slerp"],
    "parameters": [5, [1], {"nope": 1}],
    "rank": [0, -1, "8", 8.5, True],
    "seed": ["abc", -1, 1.5, 2**70],
    "device": ["gpu", 5, ""],
    "osrm": ["maybe", 5],
    "base_model": [5, []],
    "dtype": ["float8", 5],
    "modules_to_save": ["sum", 5],
    "do_merging": [5, {"steps": -1}, {"steps": 10**6}, {"lr": "x"}, {"nope": 1}, {"decouple": "yes"}],
    "overrides": [5, [{}], [{"match": "(", "weights": [1, 1]}], [{"layers": [99], "weights": [1, 1]}],
                  [{"layers": [0], "weights": [1]}], [{"layers": "0", "weights": [1, 1]}],
                  [{"match": "zzz_no_module", "weights": [1, 1]}], [{"layers": [0], "weights": ["a", 1]}]],
    "unknown_field": [1],
}
for _key, _values in RECIPE_FIELDS.items():
    for _value in _values:
        _recipe_probe("recipes JSON", f"{_key}={json.dumps(_value)[:30]}", _setter(_key, _value),
                      names=(_key, "/nonexistent"))
        if _key in ("method", "rank", "seed", "overrides", "do_merging", "unknown_field"):
            _recipe_probe("recipes YAML", f"{_key}={json.dumps(_value)[:30]}", _setter(_key, _value), names=(_key,),
                          syntax="yaml")
for _key, _values in {"weight": ["abc", 1e999, True, None, [1]], "name": [5, ""], "parameters": [5, {"nope": 1}],
                      "eval": [5, "/nonexistent.jsonl"], "bogus": [1]}.items():
    for _value in _values:
        _recipe_probe("recipes JSON", f"adapters[0].{_key}={json.dumps(_value)[:30]}", _adapter_setter(_key, _value),
                      names=(_key, "adapters", "Infinity"))
for _method in ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "tsv", "knots"):
    _recipe_probe("recipes JSON", f"method {_method} (valid)", _setter("method", _method), "accept")
_recipe_probe("recipes JSON", "rank 4 (valid)", _setter("rank", 4), "accept")
_recipe_probe("recipes JSON", "rank 10**9 (valid: an upper bound)", _setter("rank", 10**9), "accept")
_recipe_probe("recipes JSON", "seed null (valid: the default, 0)", _setter("seed", None), "accept")
_recipe_probe("recipes JSON", "osrm true (valid: old links' switch, = twins)", _setter("osrm", True), "accept")
_recipe_probe("recipes YAML", "seed null (valid: the default, 0)", _setter("seed", None), "accept", syntax="yaml")
_recipe_probe("recipes JSON", "override layer 0 (valid)", _setter("overrides", [{"layers": [0], "weights": [1, 0]}]), "accept")
_recipe_probe("recipes JSON", "same adapter twice", lambda b, d: d["adapters"].append(dict(d["adapters"][0])),
              names=("twice", "same", "adapters"))


def _raw_recipe(group: str, label: str, raw: bytes | Callable[[Sandbox], Path], name: str = "recipe.json",
                expect: str = "refuse", names=()):
    def run(box: Sandbox):
        if callable(raw):
            path = raw(box)
        else:
            path = box.dir / name
            path.write_bytes(raw)
        start = time.perf_counter()
        outcome = _merge(box, path, expect, names or (str(path.name),))
        if time.perf_counter() - start > 10 and outcome[0] == "refusal":
            return "silent", f"refused only after {time.perf_counter() - start:.0f} s"
        return outcome

    add(group, label, run)


def _big(box: Sandbox) -> Path:
    path = box.dir / "big.json"
    with path.open("wb") as handle:
        handle.truncate(50 * 10**6)
    return path


def _good_text(box: Sandbox, syntax: str = "json", bom: bool = False) -> Path:
    data = box.good_recipe()
    if syntax == "yaml":
        import yaml

        text, name = yaml.safe_dump(data), "recipe.yaml"
    else:
        text, name = json.dumps(data), "recipe.json"
    path = box.dir / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


for _raw, _label in [
    (b"", "empty"), (b"[1]", "a list"), (b"null", "null"), (b"\"x\"", "a string"), (b"{", "truncated"),
    (b"\xff\xfe\xfa", "not UTF-8"), (b"[" * 200_000 + b"]" * 200_000, "200k-deep"), (b'{"seed": NaN}', "NaN"),
    (b'{"seed": Infinity}', "Infinity"), (b'{"seed": 1e999}', "1e999"), (b'{"adapters": [], "adapters": []}', "duplicate key"),
    (b'{"' + b"k" * 100_000 + b'": 1}', "100k-character key"), (os.urandom(2048), "random bytes"),
]:
    _raw_recipe("recipes JSON", f"file {_label}", _raw)
_raw_recipe("recipes JSON", "file /dev/zero", lambda b: Path("/dev/zero"), names=("/dev/zero",))
_raw_recipe("recipes JSON", "file 50 MB", _big, names=("big.json",))
_raw_recipe("recipes JSON", "file a folder", lambda b: b.dir, names=(str(Path("p")),))
_raw_recipe("recipes JSON", "file missing", lambda b: b.dir / "nope.json", names=("nope.json",))
_raw_recipe("recipes JSON", "file with a BOM (valid)", lambda b: _good_text(b, bom=True), expect="accept")
_raw_recipe("recipes YAML", "file with a BOM (valid)", lambda b: _good_text(b, "yaml", bom=True), expect="accept")
_raw_recipe("recipes YAML", "file plain (valid)", lambda b: _good_text(b, "yaml"), expect="accept")
for _raw, _label in [
    (b"!!python/object/apply:os.system ['touch pwned']", "python tag"),
    (b"adapters: !!python/name:os.system", "python name tag"),
    (b"a: &a [*a]", "recursive alias"),
    (b"a: &a ['x','x','x','x','x','x','x','x','x']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nadapters: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", "billion laughs"),
    (b"[" * 200_000 + b"]" * 200_000, "200k-deep flow"), (b"- " * 200_000 + b"1", "200k-deep block"),
    (b"method: ties\nmethod: task_arithmetic\n", "duplicate key"), (b"a: [1\n", "unclosed"), (b"\t- x", "tab"),
    (b"--- {}\n--- {}\n", "two documents"), (b"adapters: !!binary aGVsbG8=", "binary tag"),
    (b"? [1, 2]\n: x\n", "list as key"), (b"<<: {method: ties}\nadapters: []\n", "merge key"),
]:
    def _yaml_raw(box, raw=_raw):
        path = box.dir / "recipe.yaml"
        path.write_bytes(raw)
        return path

    _raw_recipe("recipes YAML", f"file {_label}", _yaml_raw, names=("recipe.yaml",))


def _mergekit(models, method="ties", extra="", parameters=""):
    def make(box: Sandbox) -> Path:
        a, b = box.adapter("a"), box.adapter("b", ADAPTER_B)
        # BASE: a model folder both LoRAs share (a recipe's base_model must exist: merging/models/base_check.py)
        base = box.dir / "base-model"
        base.mkdir(exist_ok=True)
        (base / "config.json").write_text("{}")
        lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
        for model, weight in zip(models, (0.5, 0.5, 0.5)):
            lines.append(f"  - model: {model.replace('BASE', str(base)).format(A=a, B=b)}")
            lines.append(f"    parameters: {{weight: {weight}{parameters}}}")
        path = box.dir / "mergekit.yaml"
        path.write_text("\n".join(lines) + "\n" + extra)
        return path

    return make


for _label, _make in {
    "slerp": _mergekit(["BASE+{A}", "BASE+{B}"], "slerp"),
    "della": _mergekit(["BASE+{A}", "BASE+{B}"], "della"),
    "model_stock": _mergekit(["BASE+{A}", "BASE+{B}"], "model_stock"),
    "full model, not a LoRA": _mergekit(["other-model", "BASE+{B}"]),
    "LoRA on another base": _mergekit(["OTHER+{A}", "BASE+{B}"]),
    "missing LoRA path": _mergekit(["BASE+/nonexistent", "BASE+{B}"]),
    "revision": _mergekit(["BASE+{A}@main", "BASE+{B}"]),
    "slices": _mergekit(["BASE+{A}", "BASE+{B}"], extra="slices: []\n"),
    "tokenizer": _mergekit(["BASE+{A}", "BASE+{B}"], extra="tokenizer: {source: union}\n"),
    "density 5": _mergekit(["BASE+{A}", "BASE+{B}"], parameters=", density: 5"),
    "density list": _mergekit(["BASE+{A}", "BASE+{B}"], parameters=", density: [0.1, 0.9]"),
    "unknown parameter": _mergekit(["BASE+{A}", "BASE+{B}"], parameters=", frobnicate: 1"),
    "weight text": _mergekit(["BASE+{A}", "BASE+{B}"], parameters=", weight: x"),
    "lambda text": _mergekit(["BASE+{A}", "BASE+{B}"], "task_arithmetic", extra="parameters: {lambda: x}\n"),
    "dtype float8": _mergekit(["BASE+{A}", "BASE+{B}"], "task_arithmetic", extra="dtype: float8\n"),
    "no models": lambda box: box.recipe("merge_method: ties\nbase_model: x\nmodels: []\n", "mergekit.yaml"),
    "models not a list": lambda box: box.recipe("merge_method: ties\nbase_model: x\nmodels: 5\n", "mergekit.yaml"),
    "duplicate merge_method": lambda box: box.recipe("merge_method: ties\nmerge_method: linear\nmodels: []\n", "mergekit.yaml"),
    "python tag": lambda box: box.recipe("merge_method: !!python/object/apply:os.system ['touch pwned']\n", "mergekit.yaml"),
}.items():
    _raw_recipe("recipes mergekit", _label, _make, names=("mergekit.yaml", "/nonexistent"))
_raw_recipe("recipes mergekit", "task_arithmetic (valid)", _mergekit(["BASE+{A}", "BASE+{B}"], "task_arithmetic"), expect="accept")
# mergekit's normalize: false is the plain sum of the agreeing entries (divide_by none), not a refusal
_raw_recipe("recipes mergekit", "normalize false ties (valid)",
            _mergekit(["BASE+{A}", "BASE+{B}"], extra="parameters: {normalize: false}\n"), expect="accept")


# ----------------------------------------------------------------------------------------------
# Outputs and interrupted writes


def _out_probe(label: str, make_out: Callable[[Sandbox], tuple[Path, Callable[[], bool]]], extra=("--overwrite",),
               expect: str = "refuse", names=(), cwd: Callable[[Sandbox], Path] | None = None):
    """`make_out` returns the output path and a check that the user's files are all still there."""

    def run(box: Sandbox):
        recipe = box.recipe(box.good_recipe())
        out, intact = make_out(box)
        result = run_cli(["merge", recipe, "--out", out, *extra], cwd=cwd(box) if cwd else None)
        outcome = classify_cli(result, expect, names)
        if not intact() or box.canary.read_text() != "the user's file":
            return "data loss", f"{outcome[1]} — and the user's files changed"
        return outcome

    add("outputs", label, run)


def _keeps(*paths_and_bytes):
    def check():
        return all(p.exists() and p.read_bytes() == b for p, b in paths_and_bytes)

    return check


def _folder_with(box: Sandbox, name: str, files: dict[str, bytes]) -> tuple[Path, list[tuple[Path, bytes]]]:
    folder = box.dir / name
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    return folder, [(folder / rel, content) for rel, content in files.items()]


def _trainer(box: Sandbox):
    folder, kept = _folder_with(box, "trainer", {"checkpoint-500/optimizer.pt": b"opt", "notes.txt": b"notes",
                                                 "training_args.bin": b"args", "README.md": b"card"})
    shutil.copyfile(ADAPTER_A / CONFIG, folder / CONFIG)
    shutil.copyfile(ADAPTER_A / WEIGHTS, folder / WEIGHTS)
    return folder, _keeps(*kept)


_out_probe("a Trainer folder (valid: adapter replaced, rest kept)", _trainer, expect="accept")
_out_probe("the current folder", lambda b: (Path("."), _keeps((b.canary, b"the user's file"))), cwd=lambda b: b.dir,
           names=("current folder", "input"))
_out_probe("the folder above", lambda b: (Path(".."), lambda: True), cwd=lambda b: b.dir, names=("current folder", "input"))
_out_probe("the filesystem root", lambda b: (Path("/"), lambda: True), names=("/",))
_out_probe("the home folder", lambda b: (Path.home(), lambda: True), names=(str(Path.home()),))
_out_probe("a file", lambda b: (b.canary, _keeps((b.canary, b"the user's file"))), names=("canary.txt",))
_out_probe("an unrelated folder", lambda b: (lambda f: (f[0], _keeps(*f[1])))(_folder_with(b, "photos", {"cat.jpg": b"cat"})),
           names=("photos",))
_out_probe("a link to a folder", lambda b: ((b.dir / "link").symlink_to(b.dir) or b.dir / "link", lambda: True), names=("link",))
_out_probe("an empty folder (valid)", lambda b: ((b.dir / "empty").mkdir() or b.dir / "empty", lambda: True), expect="accept")
_out_probe("a new deep folder (valid)", lambda b: (b.dir / "x" / "y" / "z", lambda: True), extra=(), expect="accept")
_out_probe("an existing output without --overwrite", lambda b: (lambda f: (f[0], _keeps(*f[1])))(
    _folder_with(b, "old", {CONFIG: b"{}", "w": b"1"})), extra=(), names=("--overwrite",))
_out_probe("an earlier output with --overwrite (valid)", lambda b: (lambda f: (f[0], _keeps(f[1][1])))(
    _folder_with(b, "old", {CONFIG: b"{}", "mine.txt": b"1"})), expect="accept")
_out_probe("a name of 300 characters", lambda b: (b.dir / ("n" * 300), lambda: True), extra=(), names=("n" * 20,))
_out_probe("a name with a newline (valid)", lambda b: (b.dir / "a\nb", lambda: True), extra=(), expect="accept")
for _position in ("first input", "second input", "above the inputs", "inside an input", "deep inside an input"):
    def _input_out(box: Sandbox, position=_position):
        recipe = box.good_recipe()
        first, second = (Path(a["path"]) for a in recipe["adapters"])
        out = {"first input": first, "second input": second, "above the inputs": box.dir, "inside an input": first / "m",
               "deep inside an input": second / "x" / "y"}[position]
        return recipe, out

    def _run_input(box: Sandbox, make=_input_out):
        recipe, out = make(box)
        path = box.recipe(recipe)
        before = {p: p.read_bytes() for p in box.dir.rglob("*") if p.is_file()}
        outcome = classify_cli(run_cli(["merge", path, "--out", out, "--overwrite"]), "refuse", ("input",))
        after = {p: p.read_bytes() for p in box.dir.rglob("*") if p.is_file()}
        if any(after.get(p) != content for p, content in before.items()):
            return "data loss", f"{outcome[1]} — an input changed"
        return outcome

    add("outputs", f"--out {_position}", _run_input)
for _size in ("lots", "0", "-1", "nanGB", "infGB", "1e999GB", "", "5XB", "1.5"):
    add("outputs", f"--max-shard-size {_size!r}", lambda b, s=_size: classify_cli(
        run_cli(["merge", b.recipe(b.good_recipe()), "--out", b.dir / "o", "--full-model", "--max-shard-size", s]),
        "refuse", ("--max-shard-size",)))
add("outputs", "--max-shard-size without --full-model", lambda b: classify_cli(
    run_cli(["merge", b.recipe(b.good_recipe()), "--out", b.dir / "o", "--max-shard-size", "1GB"]), "refuse", ("--full-model",)))
def _export_onto_trainer(box: Sandbox):
    folder, check = _trainer(box)
    result = run_cli(["merge", box.recipe(box.good_recipe()), "--out", folder, "--overwrite", "--full-model"])
    outcome = classify_cli(result, "refuse", ("README.md",))
    return ("data loss", "the Trainer's files changed") if not check() else outcome


def _export_into_base(where: str):
    def run(box: Sandbox):
        from merging.models.base import resolve_model_source

        shipped = Path(resolve_model_source(json.loads((ADAPTER_A / CONFIG).read_text())["base_model_name_or_path"]))
        base = box.dir / "base"
        shutil.copytree(shipped, base)  # a copy: a failing probe must never touch the installed model
        before = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
        out = base if where == "is" else base / "merged"
        recipe = box.recipe(box.good_recipe(base_model=str(base)))
        result = run_cli(["merge", recipe, "--out", out, "--overwrite", "--full-model"])
        outcome = classify_cli(result, "refuse", ("base model", "not a mergescope/PEFT output"))
        after = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
        return ("data loss", "the base model changed") if after != before or (base / "merged").exists() else outcome

    return run


add("outputs", "--full-model onto a Trainer folder with its README", _export_onto_trainer)
add("outputs", "--full-model onto the base model's own folder", _export_into_base("is"))
add("outputs", "--full-model inside the base model's folder", _export_into_base("inside"))
add("outputs", "--dtype float8", lambda b: classify_cli(
    run_cli(["merge", b.recipe(b.good_recipe()), "--out", b.dir / "o", "--dtype", "float8"]), "refuse", ("--dtype",)))


def _full_disk(kind: str):
    def run(box: Sandbox):
        from safetensors import SafetensorError

        import merging.adapters.lora as lora

        recipe = box.recipe(box.good_recipe())
        out = box.dir / "out"
        classify_cli(run_cli(["merge", recipe, "--out", out]), "accept")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        error = (OSError(errno.ENOSPC, "No space left on device") if kind == "OSError"
                 else SafetensorError("IoError: No space left on device (os error 28)"))
        original = lora.save_file

        def full(*args, **kwargs):
            raise error

        lora.save_file = full
        try:
            outcome = classify_cli(run_cli(["merge", recipe, "--out", out, "--overwrite"]), "refuse", (str(out),))
        finally:
            lora.save_file = original
        if {p.name: p.read_bytes() for p in out.iterdir()} != before:
            return "data loss", "the previous output changed"
        leftovers = [p.name for p in box.dir.iterdir() if "mergescope" in p.name]
        return ("silent", f"left {leftovers}") if leftovers else outcome

    add("outputs", f"full disk ({kind})", run)


_full_disk("OSError")
_full_disk("SafetensorError")


def _killed_writer(state: str):
    def run(box: Sandbox):
        from merging.core.staging import clean_leftovers

        folder, kept = _folder_with(box, "out", {CONFIG: b"old config", WEIGHTS: b"old weights", "notes.txt": b"n"})
        parts = box.dir / f".out.mergescope-parts-{2**22 + 1}-x"
        parts.mkdir()
        os.replace(folder / CONFIG, parts / CONFIG)
        if state == "moving-new":
            os.replace(folder / WEIGHTS, parts / WEIGHTS)
            (folder / CONFIG).write_bytes(b"half new")
        (parts / "mergescope-replace.json").write_text(json.dumps({"state": state, "new": [CONFIG, WEIGHTS],
                                                                   "old": [CONFIG, WEIGHTS]}))
        clean_leftovers(box.dir)
        if not _keeps(*kept)() or parts.exists():
            return "data loss", "the interrupted replace was not undone"
        return "accepted", "undone"

    add("outputs", f"replace killed while {state}", run)


_killed_writer("moving-old")
_killed_writer("moving-new")


# ----------------------------------------------------------------------------------------------
# Evaluation files (library: check_eval_file, as the pages and recipes read them)


def _eval_probe(label: str, name: str, content: bytes | Callable[[Path], None], expect: str = "refuse"):
    def run(box: Sandbox):
        from merging.store.workspace import check_eval_file
        from merging.tasks import TaskError

        path = box.dir / name
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
        start = time.perf_counter()
        outcome = library(lambda: check_eval_file(path), expect, (TaskError, ValueError, OSError), (name,))
        if time.perf_counter() - start > 10:
            return "silent", f"took {time.perf_counter() - start:.0f} s"
        return outcome

    add("evaluation files", label, run)


def _sparse(size: int):
    def make(path: Path):
        with path.open("wb") as handle:
            handle.truncate(size)

    return make


for _name, _content, _label in [
    ("t.csv", b"", "empty CSV"), ("t.csv", b"text\nhello\n", "CSV without label"), ("t.csv", b"\xff\xfe\xfa,1\n", "CSV not UTF-8"),
    ("t.csv", b"text,label\n", "CSV header only"), ("t.csv", b"text,label\n\"unclosed,1\n", "CSV unclosed quote"),
    ("t.jsonl", b"", "empty JSONL"), ("t.jsonl", b"{\n", "JSONL truncated"), ("t.jsonl", b"[1]\n", "JSONL a list"),
    ("t.jsonl", b'{"prompt": "a"}\n', "no completion"), ("t.jsonl", b'{"prompt": "a", "completion": 5}\n', "completion a number"),
    ("t.jsonl", b'{"prompt": " ", "completion": "b"}\n', "blank prompt"),
    ("t.jsonl", b'{"messages": [{"role": "robot", "content": "x"}]}\n', "chat bad role"),
    ("t.jsonl", b'{"messages": []}\n', "chat empty"), ("t.jsonl", b'{"messages": 5}\n', "chat not a list"),
    ("t.jsonl", b"[" * 200_000 + b"\n", "200k-deep line"), ("t.jsonl", b'{"text": "a", "label": NaN}\n', "NaN label"),
    ("t.jsonl", b'{"text": "a", "label": null}\n', "null label"), ("t.jsonl", b'{"prompt": "a", "completion": "b", "prompt": "c"}\n', "duplicate key"),
    ("t.jsonl", os.urandom(4096), "random bytes"), ("t.txt", b"text,label\na,1\n", "unsupported suffix"),
    ("t.jsonl", b'{"prompt": "a", "completion": "b"}\n{"text": "a", "label": "x"}\n', "mixed formats"),
]:
    _eval_probe(f"{_label}", _name, _content)
_eval_probe("60 MB CSV", "big.csv", _sparse(60 * 1024**2))
_eval_probe("60 MB JSONL", "big.jsonl", _sparse(60 * 1024**2))
_eval_probe("a folder", "folder.csv", lambda p: p.mkdir())
_eval_probe("link to /dev/zero", "zero.jsonl", lambda p: p.symlink_to("/dev/zero"))
_eval_probe("CSV (valid)", "ok.csv", b"text,label\nhello,a\nbye,b\n", "accept")
_eval_probe("CSV with a BOM (valid)", "bom.csv", b"\xef\xbb\xbftext,label\nhello,a\nbye,b\n", "accept")
_eval_probe("completions (valid)", "ok.jsonl", b'{"prompt": "a", "completion": " b"}\n', "accept")
_eval_probe("chat (valid)", "chat.jsonl", b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n', "accept")


def _unknown_completion(box: Sandbox):
    from merging.evaluation.causal import CausalEvaluator
    from merging.evaluation.evaluate import EvaluationError
    from merging.tasks.completions import read_causal_task

    # the tests' tiny models (one set, tests/tiny_models.py), read by path: `tests` is not a package
    spec = importlib.util.spec_from_file_location("mergescope_tiny_models", REPO / "tests" / "tiny_models.py")
    tiny_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_models)
    model, tokenizer = tiny_models.tiny_llama(seed=0)
    path = box.dir / "snow.jsonl"
    path.write_text(json.dumps({"prompt": "weather", "completion": " ☃☃ ✈"}) + "\n")
    return library(lambda: CausalEvaluator(model, tokenizer, max_length=64).add_task(read_causal_task(path)),
                   "refuse", (EvaluationError,), ("snow.jsonl",))


add("evaluation files", "completion of unknown characters", _unknown_completion)


# ----------------------------------------------------------------------------------------------
# Search (the CLI refuses before any trial; the trial machinery is stubbed so nothing is trained)


class _Reached(Exception):
    pass


def _search_probe(label: str, flags: list[str], names=(), corrupt_store: bytes | None = None):
    def run(box: Sandbox):
        import merging.search.study as search

        workspace = box.dir / "ws"
        workspace.mkdir()
        if corrupt_store is not None:
            (workspace / "runs.sqlite").write_bytes(corrupt_store)
        recipe = box.recipe(box.good_recipe())
        original = search.TrialScorer, search.load_lab

        def reached(*args, **kwargs):
            raise _Reached("the search started")

        search.TrialScorer = search.load_lab = reached
        try:
            result = run_cli(["search", recipe, "--workspace", workspace, *flags])
        finally:
            search.TrialScorer, search.load_lab = original
        if result[3] and "_Reached" in result[3]:
            return "silent", "the search started with this input"
        return classify_cli(result, "refuse", names)

    add("search", label, run)


for _flags, _names in [
    (["--trials", "0"], "--trials"), (["--trials", "-3"], "--trials"), (["--trials", "x"], "--trials"),
    (["--bounds", "a,b"], "--bounds"), (["--bounds", "1"], "--bounds"), (["--bounds", "2,1"], "bounds"),
    (["--bounds", "nan,1"], "bounds"), (["--density-bounds", "0,5"], "density"), (["--params", "nope"], "nope"),
    (["--workers", "0", "--ray"], "--workers"), (["--dev-size", "0"], "--dev-size"), (["--objective", "x"], "--objective"),
    (["--sampler", "x"], "--sampler"), (["--seed", "x"], "--seed"),
]:
    _search_probe(" ".join(_flags), _flags, (_names,))
_search_probe("corrupt run store", ["--trials", "1"], ("runs.sqlite",), corrupt_store=b"not a database" * 100)


def _foreign_store_probe(box: Sandbox):
    workspace = box.dir / "ws2"
    workspace.mkdir()
    with sqlite3.connect(workspace / "runs.sqlite") as connection:
        connection.execute("CREATE TABLE photos (id INTEGER)")
    recipe = box.recipe(box.good_recipe())
    import merging.search.study as search

    original = search.TrialScorer

    def reached(*args, **kwargs):
        raise _Reached("the search started")

    search.TrialScorer = reached
    try:
        result = run_cli(["search", recipe, "--workspace", workspace, "--trials", "1"])
    finally:
        search.TrialScorer = original
    if result[3] and "_Reached" in result[3]:
        return "silent", "the search started with another program's database as its store"
    return classify_cli(result, "refuse", ("runs.sqlite",))


add("search", "another program's database as the run store", _foreign_store_probe)


# ----------------------------------------------------------------------------------------------
# Flag values of the other commands (refused by the parser, naming the flag, before any work)


for _argv, _flag in [
    (["train", "sms_spam", "--rank", "0"], "--rank"), (["train", "sms_spam", "--rank", "x"], "--rank"),
    (["train", "sms_spam", "--alpha", "nan"], "--alpha"), (["train", "sms_spam", "--alpha", "0"], "--alpha"),
    (["train", "sms_spam", "--alpha", "inf"], "--alpha"), (["train", "sms_spam", "--epochs", "0"], "--epochs"),
    (["train", "sms_spam", "--train-size", "-5"], "--train-size"), (["train", "sms_spam", "--eval-size", "0"], "--eval-size"),
    (["train", "sms_spam", "--osrm-samples", "0"], "--osrm-samples"), (["train", "sms_spam", "--seed", "-1"], "--seed"),
    (["train", "sms_spam", "--init", "magic"], "--init"), (["train", "sms_spam", "--device", "tpu"], "--device"),
    (["zoo", "build", "--epochs", "0"], "--epochs"), (["zoo", "build", "--train-size", "x"], "--train-size"),
    (["zoo", "build", "--replicate", "-1"], "--replicate"), (["zoo", "build", "--inits", "magic"], "--inits"),
    (["zoo", "rescore", "--device", "tpu"], "--device"), (["dashboard", "--port", "99999"], "--port"),
    (["dashboard", "--port", "0"], "--port"), (["dashboard", "--port", "http"], "--port"),
    (["search", "R", "--workers", "-2"], "--workers"), (["search", "R", "--seed", "-1"], "--seed"),
    (["evaluate", "R", "--dtype", "int8"], "--dtype"), (["merge", "R"], "--out"), (["frobnicate"], "command"),
]:
    def _flag_probe(box: Sandbox, argv=_argv, flag=_flag):
        argv = [str(box.recipe(box.good_recipe())) if a == "R" else a for a in argv]
        if argv[0] == "train":
            argv += ["--out", str(box.dir / "trained")]
        return classify_cli(run_cli(argv), "refuse", (flag,))

    add("flags", " ".join(_argv), _flag_probe)


# ----------------------------------------------------------------------------------------------
# Zip import


def _zip_probe(label: str, build: Callable[[zipfile.ZipFile, Sandbox], None], expect: str = "refuse", names=()):
    def run(box: Sandbox):
        from merging.adapters.lora import AdapterError
        from merging.store.workspace import WorkspaceError, import_adapter_zip

        path = box.dir / "upload.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile's own "Duplicate name" while the probe builds its zip
            build(archive, box)
        workspace = box.dir / "ws"
        outcome = library(lambda: import_adapter_zip(path, workspace, name="up"), expect,
                          (WorkspaceError, AdapterError, ValueError), names)
        escaped = [p for p in (box.dir / "evil.txt", box.dir.parent / "evil.txt", Path("/tmp/evil-mergescope.txt"))
                   if p.exists()]
        if escaped:
            return "security", f"a member was written outside: {escaped}"
        return outcome

    add("zip import", label, run)


def _adapter_members(archive: zipfile.ZipFile, prefix: str = "") -> None:
    for name in (CONFIG, WEIGHTS):
        archive.write(ADAPTER_A / name, prefix + name)


_zip_probe("a plain adapter (valid)", lambda z, b: _adapter_members(z), "accept")
_zip_probe("an adapter in a folder (valid)", lambda z, b: _adapter_members(z, "inner/"), "accept")
_zip_probe("zip slip ../", lambda z, b: (_adapter_members(z), z.writestr("../evil.txt", "x")))
_zip_probe("absolute member", lambda z, b: (_adapter_members(z), z.writestr("/tmp/evil-mergescope.txt", "x")))
_zip_probe("bomb: 1 GB of zeros", lambda z, b: (_adapter_members(z), z.writestr("zeros.bin", b"\0" * (300 * 1024**2))))
_zip_probe("two adapters", lambda z, b: (_adapter_members(z, "a/"), _adapter_members(z, "b/")))
_zip_probe("no adapter", lambda z, b: z.writestr("readme.txt", "x"))
_zip_probe("empty", lambda z, b: None)
_zip_probe("mergescope.json a list", lambda z, b: (_adapter_members(z), z.writestr("mergescope.json", "[1]")))
_zip_probe("pickle running a command", lambda z, b: (z.write(ADAPTER_A / CONFIG, CONFIG), z.writestr(
    "adapter_model.bin", pickle.dumps({"x": _RunsACommand(str(b.dir / "pwned"))}, protocol=4))))
_zip_probe("20,000 members", lambda z, b: (_adapter_members(z), [z.writestr(f"f{i}", "") for i in range(20_000)]))
_zip_probe("a nested zip only", lambda z, b: z.writestr("inner.zip", (ADAPTER_A / CONFIG).read_bytes()))
_zip_probe("duplicate member", lambda z, b: (_adapter_members(z), z.writestr(CONFIG, "{}")))
_zip_probe("backslash path", lambda z, b: (_adapter_members(z), z.writestr("..\\evil.txt", "x")))
_zip_probe("NaN in the weights", lambda z, b: (z.write(ADAPTER_A / CONFIG, CONFIG), z.writestr(
    WEIGHTS, _nan_weights())))


def _nan_weights() -> bytes:
    from safetensors.torch import save

    state = load_file(str(ADAPTER_A / WEIGHTS))
    state[A_KEY] = _nan(state[A_KEY])
    return save(state)


def _not_a_zip(box: Sandbox):
    from merging.store.workspace import WorkspaceError, import_adapter_zip

    path = box.dir / "upload.zip"
    path.write_bytes(b"PK\x03\x04 not really")
    return library(lambda: import_adapter_zip(path, box.dir / "ws"), "refuse", (WorkspaceError, ValueError))


add("zip import", "not a zip", _not_a_zip)


def _symlink_zip(box: Sandbox):
    from merging.store.workspace import WorkspaceError, import_adapter_zip

    path = box.dir / "upload.zip"
    with zipfile.ZipFile(path, "w") as archive:
        _adapter_members(archive)
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    return library(lambda: import_adapter_zip(path, box.dir / "ws", name="up"), "refuse", (WorkspaceError, ValueError))


add("zip import", "symlink member", _symlink_zip)


# ----------------------------------------------------------------------------------------------
# Share links (Recipe.from_url, as the pages read them)


def _link_probe(label: str, value: str, expect: str = "refuse", names=()):
    def run(box: Sandbox):
        from merging.recipe.codec import Recipe, RecipeError

        return library(lambda: Recipe.from_url(value), expect, (RecipeError,), names)

    add("share links", label, run)


_GOOD_LINK = {"adapters": [{"path": "a", "weight": 1}], "method": "task_arithmetic"}
for _label, _value, _names in [
    ("not JSON", "not json", ()), ("a list", "[1]", ()), ("200k deep", "[" * 200_000, ()), ("weight abc", '{"adapters":[{"path":"a","weight":"abc"}]}', ("weight",)),
    ("weight 1e999", '{"adapters":[{"path":"a","weight":1e999}]}', ("weight",)), ("seed abc", '{"adapters":[{"path":"a"}],"seed":"abc"}', ("seed",)),
    ("density 5", '{"adapters":[{"path":"a"}],"method":"ties","parameters":{"density":5}}', ("density",)),
    ("method nope", '{"adapters":[{"path":"a"}],"method":"nope"}', ("method",)), ("rank -1", '{"adapters":[{"path":"a"}],"rank":-1}', ("rank",)),
    ("osrm 5", '{"adapters":[{"path":"a"}],"osrm":5}', ("osrm",)), ("duplicate key", '{"adapters":[{"path":"a"}],"seed":1,"seed":2}', ("seed",)),
    ("NaN", '{"adapters":[{"path":"a"}],"seed":NaN}', ()), ("100k key", '{"adapters":[{"path":"a"}],"' + "k" * 100_000 + '":1}', ()),
    ("100k sign", '{"adapters":[{"path":"a"}],"method":"ties","parameters":{"sign":"' + "s" * 100_000 + '"}}', ("sign",)),
    ("adapters missing", "{}", ("adapters",)), ("adapters empty", '{"adapters":[]}', ("adapters",)),
    ("unknown field", '{"adapters":[{"path":"a"}],"evil":1}', ("evil",)), ("XSS name", '{"adapters":[{"path":"a","name":"<script>"}],"x":1}', ("x",)),
    ("override bad regex", '{"adapters":[{"path":"a"}],"overrides":[{"match":"(","weights":[1]}]}', ("match",)),
    ("do_merging steps 1e9", '{"adapters":[{"path":"a"}],"do_merging":{"steps":1000000000}}', ("steps",)),
    ("dtype float8", '{"adapters":[{"path":"a"}],"dtype":"float8"}', ("dtype",)), ("device tpu", '{"adapters":[{"path":"a"}],"device":"tpu"}', ("device",)),
]:
    _link_probe(_label, _value, names=_names)
_link_probe("a good link (valid)", json.dumps(_GOOD_LINK), "accept")
_link_probe("XSS in a name (valid, shown as text)", '{"adapters":[{"path":"a","name":"<script>alert(1)</script>"}]}', "accept")
_link_probe("old boolean osrm (valid)", '{"adapters":[{"path":"a"}],"osrm":true}', "accept")
_link_probe("with a BOM (valid)", "\ufeff" + json.dumps(_GOOD_LINK), "accept")


# ----------------------------------------------------------------------------------------------
# The run store


def _store_probe(label: str, make: Callable[[Path], None], expect: str = "refuse", write: bool = True):
    def run(box: Sandbox):
        from merging.store.runs import RunStore

        path = box.dir / "ws" / "runs.sqlite"
        path.parent.mkdir()
        make(path)
        try:
            store = RunStore(path)
            listed = store.list()
            stored = store.add({"adapters": []}, {}, {}) if write else None
        except BaseException as err:  # noqa: BLE001
            return "traceback", f"{type(err).__name__}: {str(err)[:160]}"
        if expect == "accept":
            return ("accepted", f"{len(listed)} runs") if store.problem is None else ("silent", f"valid store refused: {store.problem}")
        if store.problem and str(path) in store.problem:
            return "refusal", store.problem[:200]
        if stored is not None:
            return "silent", "a broken store accepted a run"
        return "silent", f"no problem reported (listed {len(listed)})"

    add("run store", label, run)


def _foreign(path: Path):
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE photos (id INTEGER)")


def _wrong_columns(path: Path):
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE runs (id INTEGER, x TEXT)")


def _malformed_row(path: Path):
    from merging.store.runs import RunStore

    store = RunStore(path)
    store.add({"adapters": [{"path": "a"}]}, {}, {})
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE runs SET recipe = '{not json'")


_store_probe("garbage file", lambda p: p.write_bytes(os.urandom(8192)))
_store_probe("text file", lambda p: p.write_text("not a database" * 100))
_store_probe("another program's database", _foreign)
_store_probe("a runs table of other columns", _wrong_columns)
_store_probe("a folder", lambda p: p.mkdir())
_store_probe("truncated database", lambda p: (_malformed_row(p), p.write_bytes(p.read_bytes()[:1500])))
_store_probe("an empty file (valid)", lambda p: p.touch(), "accept")
_store_probe("a new store (valid)", lambda p: None, "accept")
_store_probe("a malformed row (valid: skipped, reported)", _malformed_row, "accept")


def _read_only_store(box: Sandbox):
    from merging.store.runs import RunStore

    path = box.dir / "runs.sqlite"
    RunStore(path).add({"adapters": []}, {}, {})
    path.chmod(0o444)
    store = RunStore(path)
    return ("refusal", store.problem) if store.problem and store.list() else ("silent", "read-only store not reported")


if os.geteuid() != 0:  # root ignores file permissions: no read-only file to probe
    add("run store", "read-only file", _read_only_store)


# ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", help="only probes whose 'group: name' holds this text")
    parser.add_argument("--skip", action="append", default=[], metavar="GROUP",
                        help="leave out a group (e.g. flags on a version whose parser lets `train --rank 0` train)")
    parser.add_argument("--json", help="also write every result to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="name each probe before it runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    selected = [(g, n, f) for g, n, f in PROBES
                if (not args.k or args.k.lower() in f"{g}: {n}".lower()) and g not in args.skip]
    results: list[Result] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hostile-sweep-") as root:
        for index, (group, name, fn) in enumerate(selected):
            box = Sandbox(Path(root), index)
            if args.verbose:
                print(f"{index:4d} {group}: {name}", file=sys.stderr, flush=True)
            try:
                outcome, detail = fn(box)
            except BaseException as err:  # noqa: BLE001 — the probe itself broke: count it, do not hide it
                outcome, detail = "traceback", f"probe error {type(err).__name__}: {str(err)[:160]}"
            results.append(Result(group, name, outcome, detail))
            shutil.rmtree(box.dir, ignore_errors=True)
    seconds = time.perf_counter() - start
    by_class = Counter(r.outcome for r in results)
    by_group: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_group[r.group][r.outcome] += 1
    print(f"{len(results)} probes in {seconds:.0f} s")
    print("per class: " + ", ".join(f"{c} {by_class.get(c, 0)}" for c in CLASSES))
    width = max(len(g) for g in by_group)
    print(f"{'group':<{width}}  " + "  ".join(f"{c:>9}" for c in CLASSES))
    for group, counts in by_group.items():
        print(f"{group:<{width}}  " + "  ".join(f"{counts.get(c, 0):>9}" for c in CLASSES))
    odd = [r for r in results if r.outcome not in ("refusal", "accepted")]
    if odd:
        print("\nnot a clear refusal nor accepted:")
        for r in odd:
            print(f"  [{r.outcome}] {r.group}: {r.name} — {r.detail}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1, ensure_ascii=False))
    return 1 if odd else 0


if __name__ == "__main__":
    sys.exit(main())
