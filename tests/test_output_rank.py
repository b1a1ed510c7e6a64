"""A PEFT-adapter output is right-sized: rank ≤ the sum of the inputs' ranks by default (the recipe's
`rank` when given), the energy kept reported per module, a warning below 99 % (merging.engine.output_rank).

The references are computed here in float64 from each adapter's own factors: TIES written out
(top-|x| trim, sign of the weighted mass, mean of the agreeing entries) and torch.linalg.svd of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from merging.adapters.lora import load_adapter
from merging.cli import main
from merging.engine.merge import merge_adapters, save_merged
from merging.engine.output_rank import ENERGY_THRESHOLD, bounded
from merging.recipe.codec import Recipe
from tests.peft_fixtures import save_lora


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rank")
    save_lora(folder / "a", seed=31, rank=4)
    save_lora(folder / "b", seed=32, rank=4)
    return folder


def float64_updates(folder: Path) -> list[dict[str, torch.Tensor]]:
    return [
        {k: m.B.double() @ m.A.double() * m.scale for k, m in load_adapter(folder / n).modules.items()} for n in "ab"
    ]


def ties64(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    trimmed = []
    for d in deltas:
        k = int(density * d.numel())
        keep = torch.zeros(d.numel(), dtype=torch.bool)
        keep[torch.topk(d.abs().reshape(-1), k).indices] = True
        trimmed.append(torch.where(keep.reshape(d.shape), d, torch.zeros_like(d)))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
    agree = (stacked * sign > 0).double()
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


def recipe_file(folder: Path, tmp_path: Path, method: str, parameters: dict, rank=None) -> Path:
    path = tmp_path / f"{method}.json"
    path.write_text(json.dumps({"adapters": [str(folder / "a"), str(folder / "b")], "method": method,
                                "parameters": parameters, "rank": rank}))
    return path


def test_ties_of_two_rank_4_adapters_writes_rank_at_most_8_and_reports_the_energy_svd_gives(pair, tmp_path, capsys):
    recipe = recipe_file(pair, tmp_path, "ties", {"density": 0.5})
    out = tmp_path / "ties"
    assert main(["merge", str(recipe), "--out", str(out), "--per-module"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    written = load_adapter(out)
    updates = float64_updates(pair)
    for name, module in written.modules.items():
        assert module.rank <= 8, name
        dense = ties64([u[name] for u in updates], 0.5)
        S = torch.linalg.svd(dense).S
        kept = min(8, S.numel())
        expected = float((S[:kept] ** 2).sum() / (S**2).sum())
        assert summary["modules"][name]["rank"] == module.rank
        assert summary["modules"][name]["energy_kept"] == pytest.approx(expected, abs=1e-4), name
        # the written factors are the best rank-8 approximation of the dense merge
        U, S_, Vh = torch.linalg.svd(dense)
        best = (U[:, :kept] * S_[:kept]) @ Vh[:kept]
        got = module.B.double() @ module.A.double() * module.scale
        assert float(torch.linalg.norm(got - best) / torch.linalg.norm(dense)) < 1e-4, name
    bound = summary["rank_bound"]
    assert bound["rule"] == "the sum of the inputs' ranks" and bound["threshold"] == ENERGY_THRESHOLD
    assert bound["rank"]["max"] <= 8
    energies = [m["energy_kept"] for m in summary["modules"].values()]
    assert bound["energy_kept"]["min"] == pytest.approx(min(energies))
    stored = json.loads((out / "mergescope.json").read_text())["rank_bound"]
    assert stored["energy_kept"] == bound["energy_kept"]
    # a rank-8 cut of a full-rank 16-wide TIES merge loses energy: the CLI says so, pointing at the remedies
    assert bound["below_threshold"] and bound["warning"]
    assert captured.err.count("warning:") == 1 and "'rank'" in captured.err and "--full-model" in captured.err


def test_task_arithmetic_is_exact_at_the_sum_of_the_ranks(pair, tmp_path, capsys):
    recipe = recipe_file(pair, tmp_path, "task_arithmetic", {})
    out = tmp_path / "ta"
    assert main(["merge", str(recipe), "--out", str(out), "--per-module"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "warning" not in captured.err and summary["rank_bound"]["warning"] is None
    updates = float64_updates(pair)
    for name, module in load_adapter(out).modules.items():
        assert module.rank == 8 and summary["modules"][name]["energy_kept"] == 1.0
        got = module.B.double() @ module.A.double() * module.scale
        torch.testing.assert_close(got, updates[0][name] + updates[1][name], atol=1e-6, rtol=1e-5)


def test_an_explicit_rank_is_the_bound_and_a_high_one_keeps_everything(pair, tmp_path, capsys):
    recipe = recipe_file(pair, tmp_path, "ties", {"density": 0.5}, rank=16)
    assert main(["merge", str(recipe), "--out", str(tmp_path / "r16"), "--per-module"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rank_bound"]["rule"] == "the recipe's rank" and summary["rank_bound"]["warning"] is None
    assert all(m["energy_kept"] > 0.999999 for m in summary["modules"].values())


def test_a_merge_scored_unbounded_is_cut_when_written_from_its_factors(pair, tmp_path):
    """The dashboard scores the exact merge; its PEFT download is bounded when written."""
    recipe = Recipe.from_dict({"adapters": [str(pair / "a"), str(pair / "b")], "method": "ties",
                               "parameters": {"density": 0.5}})
    adapters = [load_adapter(pair / n) for n in "ab"]
    exact = merge_adapters(adapters, recipe)
    assert exact.rank_bound is None and max(r.rank for r in exact.reports.values()) > 8
    cut = bounded(exact)
    direct = merge_adapters(adapters, recipe, bound_rank=True)
    for name in exact.reports:
        assert cut.reports[name].rank <= 8
        assert cut.reports[name].energy_kept == pytest.approx(direct.reports[name].energy_kept, abs=1e-5)
        a, b = cut.adapter.modules[name].delta("cpu"), direct.adapter.modules[name].delta("cpu")
        assert float(torch.linalg.norm(a - b) / torch.linalg.norm(exact.adapter.modules[name].delta("cpu"))) < 1e-4
    folder = save_merged(exact, tmp_path / "page")
    assert max(m.rank for m in load_adapter(folder).modules.values()) <= 8
    assert exact.rank_bound is None  # the scored merge itself is untouched


def test_exact_rank_writes_the_merge_as_it_is_and_says_nothing(pair, tmp_path, capsys):
    recipe = recipe_file(pair, tmp_path, "ties", {"density": 0.5})
    assert main(["merge", str(recipe), "--out", str(tmp_path / "exact"), "--exact-rank", "--per-module"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "rank_bound" not in summary and "warning" not in captured.err
    updates = float64_updates(pair)
    written = load_adapter(tmp_path / "exact")
    assert max(m.rank for m in written.modules.values()) > 8
    for name, module in written.modules.items():
        dense = ties64([u[name] for u in updates], 0.5)
        got = module.B.double() @ module.A.double() * module.scale
        assert float(torch.linalg.norm(got - dense) / torch.linalg.norm(dense)) < 1e-5, name
    assert "rank_bound" not in json.loads((tmp_path / "exact" / "mergescope.json").read_text())
    assert main(["merge", str(recipe), "--out", str(tmp_path / "x"), "--exact-rank", "--full-model"]) == 2
    assert "--exact-rank" in capsys.readouterr().err


def test_the_merge_page_says_so_beside_the_peft_download_when_the_bound_loses_energy(app_test):
    from tests.conftest import wait_for_job

    def run(at, **settings):
        for key, value in settings.items():
            at.session_state[key] = value
        at.run()
        next(b for b in at.button if b.label == "Run merge").click()
        at = wait_for_job(at.run(), "merge")
        assert not at.exception and not at.error, [e.value for e in at.error]
        return at

    # the tiny zoo's merges fit in the summed rank, so ask for rank 1: the bound is then the user's
    at = run(app_test.run(), merge_method="ties", merge_exact=False, merge_rank=1)
    cut = bounded(at.session_state["merge_last"]["merged"])
    assert cut.rank_bound["rule"] == "the recipe's rank" and cut.rank_bound["warning"]
    shown = [w.value for w in at.warning if "PEFT zip" in w.value]
    assert len(shown) == 1 and "'rank'" in shown[0] and "full-model" in shown[0], [w.value for w in at.warning]
    at = run(at, merge_method="task_arithmetic", merge_exact=True)
    assert bounded(at.session_state["merge_last"]["merged"]).rank_bound["warning"] is None
    assert not [w.value for w in at.warning if "PEFT zip" in w.value]
