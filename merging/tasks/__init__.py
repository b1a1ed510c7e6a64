"""Text-classification tasks: the built-in demo tasks and tasks read from a user's CSV/JSONL file.

A task is plain data (:class:`TaskData`): label names, a training split and a balanced evaluation
split, plus where the text came from and under which licence. Nothing here imports torch.

- :mod:`merging.tasks.data`: what a task is (:class:`TaskData`, :class:`TaskError`);
- :mod:`merging.tasks.split`: text clean-up and the seeded, class-balanced train/evaluation split
  that every task goes through;
- :mod:`merging.tasks.demo`: the built-in tasks, read from files shipped inside installed packages;
- :mod:`merging.tasks.files`: a user's CSV or JSONL file with text and label;
- :mod:`merging.tasks.completions`: a causal-LM task, a JSONL file of prompt/completion rows or of
  chat messages (scored whole, by merging.evaluation.causal).

The names below are re-exported so that ``from merging.tasks import load_demo_task`` keeps working.
"""

from merging.tasks.data import Example, TaskData, TaskError, carve_dev
from merging.tasks.demo import (
    DEFAULT_DEMO_TASKS,
    DataSourceMissing,
    DemoTask,
    list_demo_tasks,
    load_demo_pool,
    load_demo_task,
    package_file,
)
from merging.tasks.files import MAX_LABELS, SUPPORTED_SUFFIXES, load_task_file, read_task_file
from merging.tasks.split import MAX_CHARS, clean_text, dedupe, make_task, split_examples

__all__ = [
    "DEFAULT_DEMO_TASKS",
    "MAX_CHARS",
    "MAX_LABELS",
    "SUPPORTED_SUFFIXES",
    "DataSourceMissing",
    "DemoTask",
    "Example",
    "TaskData",
    "TaskError",
    "carve_dev",
    "clean_text",
    "dedupe",
    "list_demo_tasks",
    "load_demo_pool",
    "load_demo_task",
    "load_task_file",
    "make_task",
    "package_file",
    "read_task_file",
    "split_examples",
]
