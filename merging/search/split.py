"""Where a λ search looks and where it reports: each task's dev set and final-report set.

A search chooses λ on one set and reports on another that it never saw, for every kind of task:

* a task with an evaluation file in the recipe (`adapters[i].eval`; a causal adapter's own
  `task_file` counts too) and a dev file (`adapters[i].dev`): trials score the dev file, the final
  report the whole evaluation file; a row in both is refused (the report would not be held out);
* such a task without a dev file: a seeded sample of the evaluation file's rows, at most half of
  them (`tasks.split.carve_dev_rows`), is the dev set, and the final report scores the other rows;
* a demo or training-file classification task (no evaluation file): a class-stratified, seeded
  sample of its *training* split is the dev set (`search.carve_dev_split`) and the final report
  scores its evaluation split, as before.

The plan is computed from the files alone (no model), so the CLI can state it and refuse a bad file
before Ray starts; `split_sets` turns it into the scorer's sets with a loaded Lab.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from merging.adapters.lora import Adapter
from merging.evaluation.evaluate import EvalSet
from merging.lab.lab import eval_set_for, task_data_for, tasked
from merging.recipe.codec import Recipe
from merging.search.trials import SearchError
from merging.tasks import read_task_file
from merging.tasks.completions import file_format, read_causal_task
from merging.tasks.split import carve_dev_rows


@dataclass(frozen=True)
class TaskSplit:
    """One task's dev/final plan. `eval_file` None: a training-split task (dev from training data)."""

    task: str
    adapter: str
    eval_file: str | None = None
    dev_file: str | None = None
    rows: int = 0  # rows of eval_file
    dev_rows: tuple[int, ...] = ()  # carved from eval_file (0-based, file order); empty with a dev file
    seed: int = 0
    dev_size: int = 0

    @property
    def final_rows(self) -> tuple[int, ...]:
        chosen = set(self.dev_rows)
        return tuple(i for i in range(self.rows) if i not in chosen)

    def statement(self) -> str:
        """One line a user reads: where λ is chosen and where the report is scored."""
        if self.eval_file is None:
            return (f"{self.task}: dev = up to {self.dev_size} examples of its training split (class-stratified, "
                    f"seed {self.seed}); final report on its evaluation split")
        name = Path(self.eval_file).name
        if self.dev_file is not None:
            return f"{self.task}: dev = every row of {Path(self.dev_file).name}; final report on all {self.rows} rows of {name}"
        return (f"{self.task}: dev = {len(self.dev_rows)} of the {self.rows} rows of {name} (seeded sample, seed "
                f"{self.seed}); final report on the other {self.rows - len(self.dev_rows)}")

    def to_dict(self) -> dict:
        data = {"task": self.task, "adapter": self.adapter, "statement": self.statement()}
        if self.eval_file is not None:
            data.update(eval=self.eval_file, rows=self.rows, seed=self.seed)
            if self.dev_file is not None:
                data["dev"] = self.dev_file
            else:
                data["dev_rows"] = [i + 1 for i in self.dev_rows]  # 1-based, as a reader counts rows
        return data


def _eval_file(adapter: Adapter, recipe_eval: str | None) -> str | None:
    """The task's evaluation file: the recipe's, else a causal adapter's own task file (a
    classification adapter's task_file is its training data: its dev comes from the training split)."""
    if recipe_eval is not None:
        return recipe_eval
    own = adapter.meta.get("task_file")
    if own:
        from merging.tasks.completions import file_format

        if file_format(own) != "classification":
            return own
    return None


def _row_count(path: str) -> int:

    if file_format(path) == "classification":
        return len(read_task_file(path))
    return len(read_causal_task(path).examples)


def plan_splits(recipe: Recipe, adapters: Sequence[Adapter], dev_size: int, seed: int = 0) -> list[TaskSplit]:
    """The dev/final plan of every task the recipe's adapters are scored on (first adapter of a task wins)."""

    if dev_size < 1:
        raise SearchError(f"--dev-size: expected a positive number of examples per task, got {dev_size}")
    plans: dict[str, TaskSplit] = {}
    for index, (adapter, ref) in enumerate(zip(tasked(adapters, recipe), recipe.adapters)):
        task = adapter.task
        if not task:
            raise SearchError(
                f"adapter {adapter.name} does not say which task it was trained on; give its evaluation file "
                f"in the recipe: 'adapters[{index}].eval'"
            )
        if task in plans:
            continue
        eval_file = _eval_file(adapter, ref.eval)
        if eval_file is None:
            plans[task] = TaskSplit(task, adapter.name, seed=seed, dev_size=dev_size)
            continue
        rows = _row_count(eval_file)
        if ref.dev is not None:
            _row_count(ref.dev)  # a missing or malformed dev file is refused before any model loads
            plans[task] = TaskSplit(task, adapter.name, eval_file, ref.dev, rows, (), seed, dev_size)
            continue
        try:
            dev_rows, _ = carve_dev_rows(rows, dev_size, seed)
        except ValueError as err:
            raise SearchError(f"{Path(eval_file).name} (task {task}): {err}") from None
        plans[task] = TaskSplit(task, adapter.name, eval_file, None, rows, tuple(dev_rows), seed, dev_size)
    return list(plans.values())


def _subset(eval_set, indices: Sequence[int]):

    if isinstance(eval_set, EvalSet):
        return replace(eval_set, texts=[eval_set.texts[i] for i in indices], targets=[eval_set.targets[i] for i in indices])
    return replace(eval_set, examples=[eval_set.examples[i] for i in indices])


def _keys(eval_set) -> list:
    """What makes two rows the same example: the text (classification) or prompt + completion."""

    if isinstance(eval_set, EvalSet):
        return [text.casefold() for text in eval_set.texts]
    return [(e.prompt, e.completion) for e in eval_set.examples]


def _lines(eval_set, indices: Sequence[int]) -> str:
    examples = getattr(eval_set, "examples", None)
    shown = [examples[i].line if examples is not None else i + 1 for i in indices[:3]]
    return ", ".join(map(str, shown)) + (" …" if len(indices) > 3 else "")


def split_sets(plans: Sequence[TaskSplit], lab, adapters: Sequence[Adapter], recipe: Recipe) -> tuple[list, list | None]:
    """(dev sets, final-report sets) for `lab`'s scorer. The final sets are None when every task is
    a training-split task: the lab's own evaluation split is the report's, as before."""

    owners = {}
    for adapter in tasked(adapters, recipe):
        owners.setdefault(adapter.task, adapter)
    dev_sets, final_sets = [], []
    for plan in plans:
        owner = owners[plan.task]
        if plan.eval_file is None:
            if lab.kind != "classification":
                raise SearchError(
                    f"task {plan.task} (adapter {plan.adapter}): no evaluation file to carve a dev split from; "
                    "give it in the recipe: {\"path\": ..., \"eval\": \"data/task.jsonl\"}"
                )
            dev_sets.append(dev_set_for(owner, plan.dev_size, plan.seed))
            final_sets.append(owner)  # its evaluation split, read below only when needed
            continue
        full = lab.read_task_set(plan.eval_file, plan.task, owner)
        count = len(_keys(full))
        if count != plan.rows:  # the file changed between the plan and now
            raise SearchError(f"{Path(plan.eval_file).name}: {count} rows now, {plan.rows} when the search was planned")
        if plan.dev_file is not None:
            dev = lab.read_task_set(plan.dev_file, plan.task, owner)
            report = set(_keys(full))
            shared = [i for i, key in enumerate(_keys(dev)) if key in report]
            if shared:
                raise SearchError(
                    f"{Path(plan.dev_file).name}: {len(shared)} row(s) (line {_lines(dev, shared)}) are also in the "
                    f"evaluation file {Path(plan.eval_file).name}; the final report must not score what λ was chosen on"
                )
            dev_sets.append(dev)
            final_sets.append(full)
        else:
            dev_sets.append(_subset(full, plan.dev_rows))
            final_sets.append(_subset(full, plan.final_rows))
    if all(plan.eval_file is None for plan in plans):
        return dev_sets, None
    return dev_sets, [eval_set_for(s) if isinstance(s, Adapter) else s for s in final_sets]


# ----------------------------------------------------------------------------------------------
# A demo task's dev set: carved from the examples the adapter was trained on

DEFAULT_DEV_SIZE = 64  # examples per task: a few seconds per trial on a 2-core CPU for the demo zoo


def carve_dev_split(
    train_texts: Sequence[str], train_labels: Sequence[int], num_labels: int, size: int, seed: int = 0
) -> tuple[list[str], list[int]]:
    """A class-stratified, seeded sample of the *training* examples: size // num_labels per class
    (at least one; fewer when a class has fewer), kept in training order."""
    if size < 1:
        raise SearchError(f"--dev-size: expected a positive number of examples per task, got {size}")
    rng = random.Random(seed)
    per_class = max(1, size // num_labels)
    chosen: list[int] = []
    for label in range(num_labels):
        members = [i for i, y in enumerate(train_labels) if y == label]
        rng.shuffle(members)
        chosen += members[:per_class]
    chosen.sort()
    return [train_texts[i] for i in chosen], [train_labels[i] for i in chosen]


def dev_set_for(adapter: Adapter, size: int = DEFAULT_DEV_SIZE, seed: int = 0) -> EvalSet:
    """The dev set of an adapter's task: carved from its training split, never its evaluation split."""
    data = task_data_for(adapter)
    texts, targets = carve_dev_split(data.train_texts, data.train_labels, data.num_labels, size, seed)
    leaked = set(texts) & set(data.eval_texts)
    if leaked:  # split_examples keeps train and eval disjoint; a task file that breaks it is refused
        raise SearchError(f"task {adapter.task}: {len(leaked)} dev example(s) are also in the evaluation split")
    return EvalSet(adapter.task, list(data.labels), texts, targets)
