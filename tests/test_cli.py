"""`python -m merging …` in-process through merging.cli.main, plus one real subprocess."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from merging.adapters.lora import load_adapter
from merging.cli import EXIT_BAD_INPUT, main
from tests.browser_support import HANG_GUARD_S
from tests.peft_fixtures import lora_model, peft_deltas, peft_scales, save_peft

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Two tiny-BERT adapters of different ranks (one rsLoRA), each with its own classifier head."""
    root = tmp_path_factory.mktemp("zoo")
    models = {
        "sst": lora_model("bert", rank=4, lora_alpha=8, modules_to_save=["classifier"], seed=101),
        "nli": lora_model("bert", rank=2, lora_alpha=4, use_rslora=True, modules_to_save=["classifier"], seed=102),
    }
    folders = {name: save_peft(model, root / "adapters" / name) for name, model in models.items()}
    return {
        "root": root,
        "folders": folders,
        "deltas": {name: peft_deltas(m) for name, m in models.items()},
        "scales": {name: peft_scales(m) for name, m in models.items()},
    }


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def recipe_data(zoo, weights=(0.7, 0.4), **fields) -> dict:
    data = {
        "adapters": [{"path": str(zoo["folders"][n]), "weight": w} for n, w in zip(("sst", "nli"), weights)],
        "method": "task_arithmetic",
        "device": "cpu",
    }
    data.update(fields)
    return data


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> str:
    assert code == EXIT_BAD_INPUT == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def merged_deltas(folder: Path) -> dict[str, torch.Tensor]:
    return {name: module.delta() for name, module in load_adapter(folder).modules.items()}


def expected_deltas(zoo, weights) -> dict[str, torch.Tensor]:
    sst, nli = zoo["deltas"]["sst"], zoo["deltas"]["nli"]
    return {name: weights[0] * sst[name] + weights[1] * nli[name] for name in sst}


def assert_deltas(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name, delta in expected.items():
        error = float((actual[name] - delta).abs().max())
        assert error < 1e-5, f"{name}: {error}"


# ----------------------------------------------------------------------------------------------
# merge


def test_merge_writes_a_peft_folder_and_prints_a_summary(zoo, tmp_path, capsys):
    recipe = write_json(tmp_path / "recipe.json", recipe_data(zoo))
    out = tmp_path / "merged"
    code, stdout, stderr = run(capsys, "merge", recipe, "--out", out)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["method"] == "task_arithmetic"
    assert summary["adapters"] == ["sst", "nli"]
    assert summary["weights"] == [0.7, 0.4]
    assert summary["num_modules"] == 6
    assert summary["output_rank"] == {"min": 6, "max": 6}  # exact: rank 4 + rank 2
    assert summary["energy_kept"]["min"] == pytest.approx(1.0)
    assert isinstance(summary["seconds"], float) and summary["seconds"] >= 0
    assert summary["out"] == str(out)
    assert any("different ranks" in note for note in summary["notes"])
    assert "modules" not in summary  # only with --per-module

    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "tiny-bert"
    assert_deltas(merged_deltas(out), expected_deltas(zoo, [0.7, 0.4]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "recipe.json"]  # no staging left


def test_merge_per_module_report(zoo, tmp_path, capsys):
    recipe = write_json(tmp_path / "recipe.json", recipe_data(zoo, rank=3))
    code, stdout, stderr = run(capsys, "merge", recipe, "--out", tmp_path / "merged", "--per-module")
    assert code == 0, stderr
    modules = json.loads(stdout)["modules"]
    assert set(modules) == set(zoo["deltas"]["sst"])
    for name, report in modules.items():
        assert report["rank"] == 3, name
        assert 0.0 < report["energy_kept"] < 1.0, name  # truncating rank 6 to 3 loses energy
    assert load_adapter(tmp_path / "merged").ranks() == {name: 3 for name in modules}


def test_yaml_recipe_gives_the_same_merge_as_json(zoo, tmp_path, capsys):
    data = recipe_data(zoo, weights=(1.0, -0.5))
    json_recipe = write_json(tmp_path / "r.json", data)
    yaml_recipe = tmp_path / "r.yaml"
    yaml_recipe.write_text(
        "# a YAML recipe\n"
        "method: task_arithmetic\n"
        "device: cpu\n"
        "adapters:\n"
        f"  - path: {zoo['folders']['sst']}\n"
        "    weight: 1.0\n"
        f"  - path: {zoo['folders']['nli']}\n"
        "    weight: -0.5\n",
        encoding="utf-8",
    )
    assert run(capsys, "merge", json_recipe, "--out", tmp_path / "from-json")[0] == 0
    assert run(capsys, "merge", yaml_recipe, "--out", tmp_path / "from-yaml")[0] == 0
    from_json, from_yaml = merged_deltas(tmp_path / "from-json"), merged_deltas(tmp_path / "from-yaml")
    assert_deltas(from_yaml, from_json)
    assert_deltas(from_yaml, expected_deltas(zoo, [1.0, -0.5]))


def test_relative_adapter_paths_resolve_against_the_recipe_folder(zoo, tmp_path, capsys, monkeypatch):
    recipes = zoo["root"] / "recipes"
    recipe = recipes / f"relative-{tmp_path.name}.yaml"
    recipes.mkdir(exist_ok=True)
    recipe.write_text(
        "adapters:\n  - path: ../adapters/sst\n    weight: 0.5\n  - path: ../adapters/nli\n    weight: 0.5\n"
        "device: cpu\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # ../adapters from here does not exist
    assert not Path("../adapters/sst").exists()
    code, _stdout, stderr = run(capsys, "merge", os.path.relpath(recipe, elsewhere), "--out", "merged")
    assert code == 0, stderr
    assert (elsewhere / "merged" / "adapter_config.json").is_file()  # --out stays relative to the cwd
    assert_deltas(merged_deltas(elsewhere / "merged"), expected_deltas(zoo, [0.5, 0.5]))


def test_existing_out_needs_overwrite(zoo, tmp_path, capsys):
    recipe = write_json(tmp_path / "recipe.json", recipe_data(zoo))
    out = tmp_path / "merged"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    assert_one_line_error(*run(capsys, "merge", recipe, "--out", out), str(out), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]

    # --overwrite replaces only a folder holding an output (adapter_config.json): not this one
    assert_one_line_error(*run(capsys, "merge", recipe, "--out", out, "--overwrite"), "not a mergescope/PEFT output")
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]

    (out / "adapter_config.json").write_text("{}")  # an earlier output: its files replaced, the rest kept
    code, _, stderr = run(capsys, "merge", recipe, "--out", out, "--overwrite")
    assert code == 0, stderr
    assert (out / "precious.txt").read_text() == "mine"
    assert_deltas(merged_deltas(out), expected_deltas(zoo, [0.7, 0.4]))


BAD_RECIPES = {
    "unknown_method": ({"method": "tie"}, ["method", "'tie'", "'ties'"]),
    "density_too_big": ({"method": "ties", "density": 1.5}, ["'density'", "1.5"]),
    "unknown_field": ({"methdo": "ties"}, ["unknown field", "'methdo'"]),
    "bad_sign": ({"method": "ties", "sign": "majority"}, ["'sign'", "'majority'"]),
    "bad_rank": ({"rank": 0}, ["'rank'"]),
    "no_adapters": ({"adapters": []}, ["'adapters'"]),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_bad_recipe_exits_2_with_one_line(zoo, tmp_path, capsys, case):
    fields, needles = BAD_RECIPES[case]
    recipe = write_json(tmp_path / "recipe.json", recipe_data(zoo, **fields))
    out = tmp_path / "merged"
    assert_one_line_error(*run(capsys, "merge", recipe, "--out", out), *needles)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_missing_adapter_path_exits_2(zoo, tmp_path, capsys):
    data = recipe_data(zoo)
    missing = tmp_path / "no-such-adapter"
    data["adapters"][1]["path"] = str(missing)
    recipe = write_json(tmp_path / "recipe.json", data)
    assert_one_line_error(*run(capsys, "merge", recipe, "--out", tmp_path / "merged"), str(missing))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_invalid_yaml_exits_2_with_one_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("adapters: [unclosed\nmethod: ties\n  bad: : indent\n", encoding="utf-8")
    line = assert_one_line_error(*run(capsys, "merge", recipe, "--out", tmp_path / "merged"), str(recipe))
    assert "YAML" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_missing_recipe_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert_one_line_error(*run(capsys, "merge", missing, "--out", tmp_path / "merged"), str(missing))
    assert not (tmp_path / "merged").exists()


def test_incompatible_adapters_exit_2_and_leave_nothing(zoo, tmp_path, capsys):
    other = save_peft(lora_model("bert", base_name="another-bert", seed=5), tmp_path / "adapters" / "other")
    data = recipe_data(zoo)
    data["adapters"][1]["path"] = str(other)
    recipe = write_json(tmp_path / "recipe.json", data)
    assert_one_line_error(*run(capsys, "merge", recipe, "--out", tmp_path / "merged"), "different base models")
    assert not (tmp_path / "merged").exists()


def test_corrupt_adapter_exits_2(zoo, tmp_path, capsys):
    broken = save_peft(lora_model("bert", seed=6), tmp_path / "adapters" / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 3)
    data = recipe_data(zoo)
    data["adapters"][0]["path"] = str(broken)
    recipe = write_json(tmp_path / "recipe.json", data)
    assert_one_line_error(*run(capsys, "merge", recipe, "--out", tmp_path / "merged"), "safetensors")
    assert not (tmp_path / "merged").exists()


# ----------------------------------------------------------------------------------------------
# inspect


def test_inspect_prints_ranks_modules_scales_and_norms(zoo, capsys):
    code, stdout, stderr = run(capsys, "inspect", zoo["folders"]["sst"], zoo["folders"]["nli"])
    assert code == 0, stderr
    summaries = json.loads(stdout)
    assert [s["name"] for s in summaries] == ["sst", "nli"]
    for summary, name, rank in zip(summaries, ("sst", "nli"), (4, 2)):
        assert summary["base_model"] == "tiny-bert"
        assert summary["ranks"] == [rank]
        assert summary["num_modules"] == 6
        assert summary["saved_modules"] == ["classifier.bias", "classifier.weight"]
        assert set(summary["modules"]) == set(zoo["deltas"][name])
        for module, info in summary["modules"].items():
            delta = zoo["deltas"][name][module]
            assert info["rank"] == rank
            assert info["shape"] == list(delta.shape)
            assert info["scale"] == pytest.approx(zoo["scales"][name][module])
            assert info["delta_fro_norm"] == pytest.approx(float(torch.linalg.matrix_norm(delta)), rel=1e-5)
    assert summaries[1]["modules"]["bert.encoder.layer.0.attention.self.query"]["scale"] == pytest.approx(
        4 / math.sqrt(2)
    )


def test_inspect_bad_folder_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run(capsys, "inspect", tmp_path / "empty"), "adapter_config.json")


# ----------------------------------------------------------------------------------------------
# metrics


def _flat_cosine(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], names) -> float:
    """Cosine of two task vectors (the listed modules' updates flattened and concatenated), float64."""
    a = torch.cat([first[n].double().reshape(-1) for n in names])
    b = torch.cat([second[n].double().reshape(-1) for n in names])
    return float(a @ b / (a.norm() * b.norm()))


def test_metrics_prints_cosines_norms_and_sign_conflicts_that_match_peft_deltas(zoo, tmp_path, capsys):
    """Checked against the dense updates PEFT itself builds (get_delta_weight), not the library's."""
    recipe = write_json(tmp_path / "recipe.json", recipe_data(zoo))
    code, stdout, stderr = run(capsys, "metrics", recipe, "--json")
    assert code == 0, stderr
    printed = json.loads(stdout)
    sst, nli = zoo["deltas"]["sst"], zoo["deltas"]["nli"]
    assert printed["adapters"] == ["sst", "nli"]
    assert set(printed["modules"]) == set(sst)

    whole = _flat_cosine(sst, nli, sorted(sst))
    assert printed["adapter_cosine"][0][1] == pytest.approx(whole, abs=1e-5)
    assert printed["adapter_cosine"][1][0] == pytest.approx(whole, abs=1e-5)
    assert printed["adapter_cosine"][0][0] == pytest.approx(1.0, abs=1e-6)
    for name, module in printed["modules"].items():
        assert module["cosine"][0][1] == pytest.approx(_flat_cosine(sst, nli, [name]), abs=1e-5), name
        norms = [float(torch.linalg.matrix_norm(d[name].double())) for d in (sst, nli)]
        assert module["delta_norm"] == pytest.approx(norms, rel=1e-5), name
        # density 1: of the entries either update touches, the fraction where the signs differ
        a, b = sst[name], nli[name]
        touched = (a != 0) | (b != 0)
        conflicts = ((a > 0) & (b < 0)) | ((a < 0) & (b > 0))
        # (one entry's sign may differ between two float32 products of the same factors)
        expected_rate = float(conflicts.sum() / touched.sum())
        assert module["sign_conflict_rate"] == pytest.approx(expected_rate, abs=1.5 / float(touched.sum())), name
    # two independent random adapters: neither aligned nor opposed, and about half the signs disagree
    assert abs(whole) < 0.5
    rates = [m["sign_conflict_rate"] for m in printed["modules"].values()]
    assert 0.3 < sum(rates) / len(rates) < 0.7


def test_metrics_bad_recipe_exits_2(tmp_path, capsys):
    recipe = write_json(tmp_path / "recipe.json", {"adapters": [], "method": "ties"})
    assert_one_line_error(*run(capsys, "metrics", recipe, "--json"), "'adapters'")


# ----------------------------------------------------------------------------------------------
# The module entry point, in a real subprocess


def test_python_dash_m_merging_runs_a_merge(zoo, tmp_path):
    recipe = write_json(tmp_path / "recipe.json", recipe_data(zoo))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "merging", "merge", str(recipe), "--out", str(tmp_path / "merged")],
        check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["num_modules"] == 6
    assert_deltas(merged_deltas(tmp_path / "merged"), expected_deltas(zoo, [0.7, 0.4]))


def test_module_entry_passes_the_exit_status(tmp_path, monkeypatch, capsys):
    """`python -m merging` raises SystemExit with main()'s status (checked in-process with runpy)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["merging", "inspect", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("merging", run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 2
    assert_one_line_error(2, *capsys.readouterr(), "not a folder")
