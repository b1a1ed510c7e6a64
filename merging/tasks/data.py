"""What a text-classification task is: label names and two disjoint splits, as plain data.

Nothing here imports torch: a task is built from text files and handed to training and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

Example = tuple[str, str]  # (text, label name)


class TaskError(ValueError):
    """A task cannot be built from the given data; the message says what to fix."""


@dataclass(frozen=True)
class TaskData:
    """One classification task, split and ready to train on.

    ``train_labels``/``eval_labels`` are indices into ``labels``. Tuples keep the object immutable
    so that it can be cached and shared between pages without copies.
    """

    name: str
    labels: tuple[str, ...]
    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    eval_texts: tuple[str, ...]
    eval_labels: tuple[int, ...]
    description: str = ""
    source: str = ""
    licence: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def class_counts(self, split: str = "train") -> dict[str, int]:
        """Examples per label name in ``split`` ("train" or "eval")."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        ids = self.train_labels if split == "train" else self.eval_labels
        counts = {label: 0 for label in self.labels}
        for i in ids:
            counts[self.labels[i]] += 1
        return counts
