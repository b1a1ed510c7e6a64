"""DO-Merging's orthogonalize diagnostics travel with a merge: in `merge`'s JSON and in the merged
folder's mergescope.json (merging.methods.do_merging.diagnostics). The cosines before are checked against
the adapters' own updates, rebuilt here in float64 from their factors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from merging.adapters.lora import load_adapter
from merging.cli import main
from tests.peft_fixtures import save_lora


def recipe_file(tmp_path: Path, do_merging: dict) -> Path:
    for seed, name in ((21, "a"), (22, "b"), (23, "c")):
        save_lora(tmp_path / name, seed=seed)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"adapters": ["a", "b", "c"], "method": "task_arithmetic", "do_merging": do_merging}))
    return path


def test_orthogonalize_reports_its_loss_curve_and_cosines_in_the_json_and_in_mergescope_json(tmp_path, capsys):
    recipe = recipe_file(tmp_path, {"orthogonalize": True, "steps": 6, "lr": 0.05})
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    orth = summary["do_merging"]["orthogonalize"]
    assert len(orth["loss"]) == 6 and orth["loss"][-1] < orth["loss"][0]
    assert "per_module" not in orth  # only with --per-module

    adapters = [load_adapter(tmp_path / n) for n in ("a", "b", "c")]
    names = sorted(adapters[0].modules)
    means = []
    for name in names:
        flat = [(m.B.double() @ m.A.double() * m.scale).reshape(-1) for m in (a.modules[name] for a in adapters)]
        pairs = [abs(float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm()))) for i in range(3) for j in range(i + 1, 3)]
        means.append(sum(pairs) / len(pairs))
    expected = sum(means) / len(means)
    assert abs(orth["cosine_before"] - expected) < 1e-5, (orth["cosine_before"], expected)
    assert orth["cosine_after"] < orth["cosine_before"]
    assert orth["modules"] == len(names)

    stored = json.loads((out / "mergescope.json").read_text())["do_merging"]["orthogonalize"]
    assert sorted(stored["per_module"]) == names
    assert stored["loss"] == orth["loss"] and stored["cosine_before"] == orth["cosine_before"]
    for name, module in stored["per_module"].items():
        assert module["relative_change"] > 0 and module["cosine_before"] >= 0, name
        assert all(isinstance(module[k], float) for k in ("loss_first", "loss_last", "cosine_after")), name


def test_per_module_diagnostics_with_per_module_and_none_without_orthogonalize(tmp_path, capsys):
    recipe = recipe_file(tmp_path, {"orthogonalize": True, "steps": 3})
    assert main(["merge", str(recipe), "--out", str(tmp_path / "m1"), "--per-module"]) == 0
    orth = json.loads(capsys.readouterr().out)["do_merging"]["orthogonalize"]
    assert set(orth["per_module"]) == set(load_adapter(tmp_path / "a").modules)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"adapters": ["a", "b"], "do_merging": {"decouple": True}}))
    assert main(["merge", str(plain), "--out", str(tmp_path / "m2")]) == 0
    assert "do_merging" not in json.loads(capsys.readouterr().out)
    assert "do_merging" not in json.loads((tmp_path / "m2" / "mergescope.json").read_text())
    assert torch.isfinite(torch.tensor(orth["loss"])).all()
