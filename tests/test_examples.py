"""Examples side by side (issue 19, item 6): base / single / merged greedy outputs per prompt with
each body's loss on the reference, and perplexity = exp(loss).

Oracles are plain transformers models with the updates written into their weights
(tests/causal_fixtures.model_with_updates, from the adapters' safetensors files): their
`generate(do_sample=False)` and their own loss on the reference, not mergescope's code.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from merging.adapters.lora import load_adapter
from merging.analysis.text_report import evaluation_text
from merging.cli import main
from merging.evaluation.examples import perplexity, side_by_side
from merging.lab.lab import Lab
from merging.recipe.codec import recipe_from_dict
from tests.causal_fixtures import model_with_updates
from tests.causal_workspace import TASKS, build_causal_workspace

WEIGHTS = (0.7, 0.6)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_causal_workspace(tmp_path_factory.mktemp("examples"))


def _recipe_data(workspace) -> dict:
    return {
        "adapters": [{"path": str(workspace["adapters"][t]), "name": f"{t}-lora", "eval": str(workspace["evals"][t]),
                      "weight": w} for t, w in zip(TASKS, WEIGHTS)],
        "method": "task_arithmetic", "base_model": str(workspace["model"]), "device": "cpu",
    }


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _oracle(model, tokenizer, row: dict) -> tuple[str, float]:
    """transformers' greedy output (the reference's length) and its own loss on the reference."""
    prompt = tokenizer(row["prompt"]).input_ids
    reference = tokenizer(row["completion"], add_special_tokens=False).input_ids
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(reference), do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        labels = torch.tensor([[-100] * len(prompt) + reference])
        loss = float(model(input_ids=torch.tensor([prompt + reference]), labels=labels).loss)
    return tokenizer.decode(out[0, len(prompt):].tolist(), skip_special_tokens=True), loss


def test_perplexity_is_exp_of_the_loss():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(None) is None


def test_greedy_outputs_and_losses_equal_transformers_for_base_single_and_merged(workspace, one_thread):
    recipe = recipe_from_dict(_recipe_data(workspace))
    lab = Lab(str(workspace["model"]), device="cpu")
    adapters = [load_adapter(workspace["adapters"][t]) for t in TASKS]
    run = lab.merge_and_evaluate(adapters, recipe)
    rows = side_by_side(lab, adapters, recipe, 3, run.merged.adapter.modules)
    assert [(r["task"], r["line"]) for r in rows] == [(t, line) for t in TASKS for line in (1, 2, 3)]

    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    folders = [workspace["adapters"][t] for t in TASKS]
    bodies = {
        "base": AutoModelForCausalLM.from_pretrained(str(workspace["model"]), dtype=torch.float32).eval(),
        "merged": model_with_updates(workspace["model"], folders, list(WEIGHTS)),
    }
    for index, task in enumerate(TASKS):
        bodies[f"single {task}"] = model_with_updates(workspace["model"], [folders[index]], [1.0])
    for row in rows:
        source = _rows(workspace["evals"][row["task"]])[row["line"] - 1]
        assert (row["prompt"], row["reference"]) == (source["prompt"], source["completion"])
        for role in ("base", "single", "merged"):
            model = bodies[f"single {row['task']}" if role == "single" else role]
            text, loss = _oracle(model, tokenizer, source)
            assert row[f"output {role}"] == text, (role, row)
            assert row[f"loss {role}"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
            assert row[f"perplexity {role}"] == pytest.approx(math.exp(row[f"loss {role}"]))
    # the workspace's adapters produce their references: single outputs equal them, base outputs do not
    assert all(r["output single"].strip() == r["reference"].strip() for r in rows)
    assert all(r["output base"].strip() != r["reference"].strip() for r in rows)


def test_evaluate_prints_a_table_by_default_and_examples_when_asked(workspace, tmp_path, capsys, one_thread):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(_recipe_data(workspace)))
    assert main(["evaluate", str(path), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert "examples" not in results
    assert main(["evaluate", str(path), "--examples", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(evaluation_text({**results, "memory": None}).splitlines()[0])
    header = out.splitlines()[0].split()
    assert header[:2] == ["task", "metric"] and "ppl" in header and "loss" in header
    for task in TASKS:
        line = next(line for line in out.splitlines() if line.startswith(task + " "))
        scores = results["tasks"][task]
        assert f"{100 * scores['merged']:.1f}%" in line and f"{scores['loss']['merged']:.4f}" in line
        assert f"{math.exp(scores['loss']['merged']):.3f}" in line
        assert f"[{task}, line 1]" in out and f"[{task}, line 2]" in out and f"[{task}, line 3]" not in out
    assert "perplexity" in out
    assert main(["evaluate", str(path), "--examples", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["examples"]) == 2 * len(TASKS) and {"output merged", "loss merged", "perplexity merged"} <= set(data["examples"][0])
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(path), "--examples", "0"])
    assert exit_info.value.code == 2 and "--examples: expected at least 1" in capsys.readouterr().err
