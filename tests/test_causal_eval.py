"""Causal-LM tasks and metrics: completion loss and exact match against hand computations.

Adapters are trained here, in a few seconds, on tiny Llama- and GPT-2-style models
(tests/causal_fixtures.py), so that a single adapter clearly beats the base model and a merge of
two shows interference. Every score the library reports is checked against an oracle that shares
no code with it: PEFT's saved factors written into a plain transformers model, loss from its logits
one example at a time, exact match from a greedy loop without a cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from causal_fixtures import (
    TASKS,
    hand_loss_and_greedy,
    model_with_updates,
    save_base,
    task_rows,
    train_adapter,
    write_jsonl,
)
from torch import nn

from merging.adapters.lora import load_adapter
from merging.evaluation.causal import CausalEvalSet, CausalEvaluator, could_still_match
from merging.evaluation.evaluate import EvaluationError, evaluate_merge
from merging.lab.lab import Lab
from merging.recipe.codec import AdapterRef, Recipe
from merging.tasks import TaskError, read_task_file
from merging.tasks.completions import ChatExample, CompletionExample, read_causal_task, render_chat
from tests.tiny_models import tiny_causal_tokenizer, tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setting(request, tmp_path_factory):
    """A saved base model, one adapter trained per task, the tasks' files and a lab."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"causal-{kind}")
    base = save_base(kind, folder / "base")
    adapters = {task: train_adapter(kind, base, task, folder / f"adapter-{task}") for task in TASKS}
    files = {task: write_jsonl(folder / f"{task}.jsonl", task_rows(task)) for task in TASKS}
    lab = Lab(str(base), device="cpu")
    return SimpleNamespace(kind=kind, folder=folder, base=base, adapters=adapters, files=files, lab=lab)


def _recipe(setting, weights=(1.0, 1.0)) -> Recipe:
    refs = tuple(
        AdapterRef(path=str(setting.adapters[task]), weight=w, name=task, eval=str(setting.files[task]))
        for task, w in zip(TASKS, weights)
    )
    return Recipe(adapters=refs, method="task_arithmetic", base_model=str(setting.base), device="cpu")


def _loaded(setting):
    return [load_adapter(setting.adapters[task], name=task) for task in TASKS]


# ----------------------------------------------------------------------------------------------
# The metrics against independent computations


def test_loss_and_exact_match_equal_a_hand_computation_for_base_single_and_merged(setting):
    run = setting.lab.merge_and_evaluate(_loaded(setting), _recipe(setting))
    tokenizer = setting.lab.tokenizer
    paths = [setting.adapters[t] for t in TASKS]
    bodies = {"base": ([], []), "merged": (paths, [1.0, 1.0])}
    for task in TASKS:
        scores = run.evaluation.tasks[task]
        assert scores.metric == "exact_match"
        bodies["single"] = ([setting.adapters[task]], [1.0])
        for body, (folders, weights) in bodies.items():
            loss, exact = hand_loss_and_greedy(model_with_updates(setting.base, folders, weights), tokenizer, task_rows(task))
            assert scores.loss[body] == pytest.approx(loss, rel=1e-4, abs=1e-5), (task, body)
            assert getattr(scores, body) == exact, (task, body)
        # the adapters learned their task, and merging the two costs each of them something
        assert scores.single == 1.0 and scores.base <= 0.2
        assert scores.loss["single"] < scores.loss["merged"] < scores.loss["base"]
    assert any(s.normalized < 1.0 for s in run.evaluation.tasks.values())


def test_evaluate_json_keeps_its_shape_and_adds_the_metric_and_the_loss(setting, tmp_path, capsys):
    from merging.cli import main

    recipe = {
        "base_model": str(setting.base),
        "device": "cpu",
        "adapters": [
            {"path": str(setting.adapters["next"]), "eval": str(setting.files["next"])},
            {"path": str(setting.adapters["previous"]), "eval": str(setting.files["previous"]), "task": "back"},
        ],
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    assert main(["evaluate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["tasks"]) == {"next", "back"}  # the file's stem, or the recipe's task name
    for scores in out["tasks"].values():
        assert {"base", "single", "merged", "normalized", "majority"} <= set(scores)
        assert scores["metric"] == "exact_match"
        assert set(scores["loss"]) == {"base", "single", "merged"}
        assert all(math.isfinite(v) for v in scores["loss"].values())
        assert scores["normalized"] == pytest.approx(scores["merged"] / scores["single"])
        assert scores["truncated"] == 0
    assert {"base", "single", "merged", "normalized"} <= set(out["average"])


class BigramLM(nn.Module):
    """A model whose next-token logits depend on the last token only, set by hand: greedy output
    is known exactly, and a KV cache is just the last token."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, past_key_values=None, use_cache=False):
        logits = self.table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=None)


def _bigram(tokenizer, chain: dict[str, str]) -> BigramLM:
    table = torch.zeros(len(tokenizer), len(tokenizer))
    for before, after in chain.items():
        table[tokenizer.convert_tokens_to_ids(before), tokenizer.convert_tokens_to_ids(after)] = 10.0
    return BigramLM(table)


def test_a_greedy_output_that_differs_in_tokens_but_not_in_text_is_generated_and_counts_as_a_match():
    tokenizer = tiny_causal_tokenizer()
    # after "=" the model first emits a special token (no text), then "4": text "4", as the reference
    model = _bigram(tokenizer, {"=": "<|assistant|>", "<|assistant|>": "4"})
    evaluator = CausalEvaluator(model, tokenizer, [CausalEvalSet("t", [CompletionExample("next 3 =", " 4 </s>", 1)])])
    assert evaluator.tally("t", None, None).correct == 1
    assert evaluator.generated == 1  # teacher forcing disagreed at the first token: generated for real
    # a first token whose text already differs cannot match: no generation
    model = _bigram(tokenizer, {"=": "5", "5": "4"})
    evaluator = CausalEvaluator(model, tokenizer, [CausalEvalSet("t", [CompletionExample("next 3 =", " 4 </s>", 1)])])
    assert evaluator.tally("t", None, None).correct == 0 and evaluator.generated == 0


def test_could_still_match_is_false_only_when_the_text_already_differs():
    tokenizer = tiny_causal_tokenizer()
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in ("a", "b", "c", "</s>")}
    reference = [ids["a"], ids["b"]]
    assert not could_still_match(tokenizer, reference, 1, ids["c"])  # "a c" is no prefix of "a b"
    assert could_still_match(tokenizer, reference, 1, ids["</s>"])  # "a" still is
    assert could_still_match(tokenizer, reference, 0, ids["</s>"])


# ----------------------------------------------------------------------------------------------
# Truncation and refusals


def test_a_long_prompt_is_cut_from_the_left_counted_and_reported(tmp_path):
    model, tokenizer = tiny_llama(seed=0)
    rows = [{"prompt": "next 1 2 3 4 5 6 7 =", "completion": " 8"}, {"prompt": "next 3 =", "completion": " 4"}]
    task = read_causal_task(write_jsonl(tmp_path / "long.jsonl", rows))
    lab = Lab.with_model(model, tokenizer, "causal", max_length=6)
    lab.evaluator.add_task(task)
    adapter = SimpleNamespace(task="long", name="a", path=None, modules={}, saved_modules={}, meta={})
    result = evaluate_merge(lab.evaluator, [adapter], None)
    scores = result.tasks["long"]
    assert scores.truncated == 1 and "long: 1 prompt(s) cut from the left to fit max_length 6" in result.notes
    loss, exact = hand_loss_and_greedy(model, tokenizer, rows, max_length=6)
    assert scores.loss["base"] == pytest.approx(loss, rel=1e-5) and scores.base == exact


def test_a_completion_the_model_cannot_read_is_refused_with_its_file_and_line(tmp_path):
    model, tokenizer = tiny_llama(seed=0)
    rows = [{"prompt": "next 3 =", "completion": " 4"}, {"prompt": "copy", "completion": " a b c d e f"}]
    task = read_causal_task(write_jsonl(tmp_path / "copy.jsonl", rows))
    evaluator = CausalEvaluator(model, tokenizer, max_length=5)
    with pytest.raises(EvaluationError, match=r"copy\.jsonl, line 2: the completion is 6 tokens, the model reads at most 5"):
        evaluator.add_task(task)


BAD_ROWS = [
    ('{"prompt": "a"}\n', r"bad\.jsonl, line 1: the 'completion' field is missing"),
    ('{"prompt": "a", "completion": 5}\n', r"line 1: the 'completion' field is a int, not text"),
    ('{"prompt": "a", "completion": "b"}\n\n{"prompt": " ", "completion": "b"}\n', r"line 3: the 'prompt' field is empty"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b",\n', r"bad\.jsonl, line 2: not valid JSON"),
    ('{"prompt": "a", "completion": "b"}\n{"messages": []}\n', r"line 2: expected a row like line 1's"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', r"line 1: the last message is the user's"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}\n', r"line 1, messages\[0\]: 'role' is \"robot\""),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]}\n',
     r"line 1, messages\[1\]: 'content' must be text"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}\n',
     r"line 1: the last \(assistant\) message is empty"),
    ('[1, 2]\n', r"line 1: expected a JSON object"),
    ('{"question": "a"}\n', r"line 1: no 'prompt'/'completion', 'messages' or 'text'/'label' field"),
]


@pytest.mark.parametrize("content, message", BAD_ROWS)
def test_a_bad_row_names_the_file_the_line_and_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TaskError, match=message):
        read_causal_task(path)


def test_a_bad_classification_row_names_the_file_and_line_as_before(tmp_path):
    path = tmp_path / "spam.csv"
    path.write_text("text,label\nwin money,spam\nhello,\n")
    with pytest.raises(TaskError, match=r"spam\.csv, line 3: the 'label' value is empty"):
        read_task_file(path)


def test_a_classification_file_for_a_causal_base_model_is_refused_by_name(setting, tmp_path):
    path = tmp_path / "spam.csv"
    path.write_text("text,label\nwin money,spam\nhello,ham\n")
    refs = (AdapterRef(path=str(setting.adapters["next"]), name="next", eval=str(path)),)
    recipe = Recipe(adapters=refs, base_model=str(setting.base), device="cpu")
    with pytest.raises(TaskError, match=r"spam\.csv: a classification file, but the base model .* is a causal model"):
        setting.lab.merge_and_evaluate(_loaded(setting)[:1], recipe)


# ----------------------------------------------------------------------------------------------
# Chat files


def test_chat_rows_are_rendered_with_the_tokenizers_chat_template_or_as_plain_lines():
    tokenizer = tiny_causal_tokenizer()
    chat = ChatExample(({"role": "user", "content": "next 3 ="}, {"role": "assistant", "content": "4"}), 7)
    rendered = render_chat(chat, tokenizer)
    assert rendered.prompt == "<|user|> next 3 = </s> <|assistant|> "
    assert rendered.completion == "4 </s> "  # the end of turn the model must emit is scored too
    assert rendered.line == 7
    tokenizer.chat_template = None
    plain = render_chat(chat, tokenizer)
    assert (plain.prompt, plain.completion) == ("user: next 3 =\nassistant:", " 4")


def test_a_chat_file_is_scored_as_its_rendered_prompts_and_completions(setting, tmp_path):
    rows = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
            for r in task_rows("next")]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    tokenizer = setting.lab.tokenizer
    rendered = [{"prompt": e.prompt, "completion": e.completion} for e in read_causal_task(path).rendered(tokenizer)]
    assert rendered[0]["prompt"].startswith("<|user|> next 0 =")
    refs = (AdapterRef(path=str(setting.adapters["next"]), name="next", eval=str(path)),)
    run = setting.lab.merge_and_evaluate(_loaded(setting)[:1], Recipe(adapters=refs, device="cpu"))
    scores = run.evaluation.tasks["chat"]
    loss, exact = hand_loss_and_greedy(  # the template's ids: the rendering tokenised with no special tokens added
        model_with_updates(setting.base, [setting.adapters["next"]], [1.0]), tokenizer, rendered, prompt_special_tokens=False
    )
    assert scores.loss["single"] == pytest.approx(loss, rel=1e-4) and scores.single == exact


# ----------------------------------------------------------------------------------------------
# Preview, caching and λ = 0


def test_preview_caching_and_zero_weights_reuse_work_for_causal_tasks(setting):
    lab = setting.lab
    calls = []
    real = lab.evaluator.tally

    def counted(task, owner, modules, carried=None, parts=("preview", "rest")):
        calls.append((task, tuple(parts)))
        return real(task, owner, modules, carried, parts)

    lab.evaluator.tally = counted
    try:
        previews = []
        recipe = _recipe(setting, (0.7, 0.9))  # a body no other test scored
        first = lab.merge_and_evaluate(_loaded(setting), recipe, on_preview=previews.append)
        assert len(previews) == 1 and previews[0].preview
        merged_calls = [c for c in calls if c[1] in (("preview",), ("rest",))]
        assert len(merged_calls) == 2 * len(TASKS)  # each task: its preview part, then the rest
        calls.clear()
        again = lab.merge_and_evaluate(_loaded(setting), recipe)
        assert calls == [] and again.evaluation.to_dict()["tasks"] == first.evaluation.to_dict()["tasks"]
        zero = lab.merge_and_evaluate(_loaded(setting), _recipe(setting, (0.0, 0.0)))
        assert calls == []  # the base model's scores, already known
        for scores in zero.evaluation.tasks.values():
            assert scores.merged == scores.base and scores.loss["merged"] == scores.loss["base"]
    finally:
        del lab.evaluator.tally
    # the preview part and the rest add up to the whole task, scored in one go
    merged = lab.merge_and_evaluate(_loaded(setting), recipe)  # cached: the same numbers as `first`
    from merging.engine.merge import merge_adapters

    body = merge_adapters(_loaded(setting), recipe).adapter.modules
    for task in TASKS:
        whole = lab.evaluator.tally(task, None, body, None, ("all",))
        assert merged.evaluation.tasks[task].merged == whole.primary
        assert merged.evaluation.tasks[task].loss["merged"] == pytest.approx(whole.loss, rel=1e-6)


def test_two_adapters_naming_one_task_with_two_files_are_refused(setting):
    refs = tuple(
        AdapterRef(path=str(setting.adapters[task]), name=task, eval=str(setting.files[task]), task="same")
        for task in TASKS
    )
    with pytest.raises(EvaluationError, match=r"adapters\[1\]\.eval.*task 'same' is already read from"):
        setting.lab.merge_and_evaluate(_loaded(setting), Recipe(adapters=refs, device="cpu"))


def test_the_scoring_benchmark_runs_and_measures_the_same_scores_as_the_scorer(tmp_path):
    import sys

    bench = Path(__file__).resolve().parent.parent / "bench"
    sys.path.insert(0, str(bench))
    threads = torch.get_num_threads()
    try:
        import causal_scoring

        result = causal_scoring.main(["--tiny", "--threads", "1", "--json", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(bench))
    data = json.loads((tmp_path / "r.json").read_text())["data"]
    assert data["ratio"] > 0 and math.isfinite(data["loss"]) and data["tokens"] <= data["padded_tokens"]
    assert result["targets"][0]["name"] == "scoring cost"


def test_an_adapters_trained_lm_head_is_scored_with_it_single_and_merged(tmp_path):
    from causal_fixtures import saved_whole_tensors

    base = save_base("llama", tmp_path / "base")
    with_head = train_adapter("llama", base, "next", tmp_path / "next-head", steps=30, modules_to_save=["lm_head"])
    plain = train_adapter("llama", base, "previous", tmp_path / "previous", steps=30)
    whole = saved_whole_tensors(with_head)
    assert set(whole) == {"lm_head.weight"}
    lab = Lab(str(base), device="cpu")
    refs = (AdapterRef(path=str(with_head), name="next", eval=str(write_jsonl(tmp_path / "next.jsonl", task_rows("next")))),
            AdapterRef(path=str(plain), name="previous", eval=str(write_jsonl(tmp_path / "previous.jsonl", task_rows("previous")))))
    adapters = [load_adapter(with_head, name="next"), load_adapter(plain, name="previous")]
    run = lab.merge_and_evaluate(adapters, Recipe(adapters=refs, device="cpu"))
    scores = run.evaluation.tasks["next"]
    single, _ = hand_loss_and_greedy(model_with_updates(base, [with_head], [1.0], whole), lab.tokenizer, task_rows("next"))
    # the merged body carries the one copy there is (merging.engine.merge.carry_saved_modules)
    merged, _ = hand_loss_and_greedy(model_with_updates(base, [with_head, plain], [1.0, 1.0], whole), lab.tokenizer, task_rows("next"))
    without, _ = hand_loss_and_greedy(model_with_updates(base, [with_head], [1.0]), lab.tokenizer, task_rows("next"))
    assert scores.loss["single"] == pytest.approx(single, rel=1e-4) and scores.loss["merged"] == pytest.approx(merged, rel=1e-4)
    assert abs(single - without) > 1e-3  # the trained lm_head matters: leaving it out would be seen


def test_rows_of_different_lengths_batched_together_score_as_they_do_one_by_one(setting, tmp_path):
    rows = [{"prompt": "next " + " ".join("1" * n) + " =", "completion": " " + " ".join("2" * (1 + n % 3))} for n in range(1, 9)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    refs = (AdapterRef(path=str(setting.adapters["next"]), name="next", eval=str(path)),)
    run = setting.lab.merge_and_evaluate(_loaded(setting)[:1], Recipe(adapters=refs, device="cpu"))
    scores = run.evaluation.tasks["mixed"]
    for body, folders in (("base", []), ("single", [setting.adapters["next"]])):
        loss, exact = hand_loss_and_greedy(model_with_updates(setting.base, folders, [1.0] * len(folders)), setting.lab.tokenizer, rows)
        assert scores.loss[body] == pytest.approx(loss, rel=1e-4), body
        assert getattr(scores, body) == exact, body
