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


def carve_dev(data: TaskData, dev_size: int, seed: int = 0) -> tuple[TaskData, tuple[str, ...], tuple[int, ...]]:
    """(the task with `dev_size` training examples taken out, their texts, their labels).

    The dev examples are drawn from the training split only (never the evaluation split), per class
    in proportion to the class counts, from a seeded shuffle: what model selection (the best epoch)
    reads, so the evaluation split stays unseen until the final score.
    """
    import random
    from dataclasses import replace

    if dev_size <= 0:
        return data, (), ()
    if dev_size >= len(data.train_texts):
        raise TaskError(f"{data.name}: a dev split of {dev_size} needs more than {len(data.train_texts)} training examples")
    order = list(range(len(data.train_texts)))
    random.Random(seed).shuffle(order)
    by_class: dict[int, list[int]] = {}
    for index in order:
        by_class.setdefault(data.train_labels[index], []).append(index)
    taken: set[int] = set()
    for _label, indices in sorted(by_class.items()):
        share = round(dev_size * len(indices) / len(order))
        taken.update(indices[:share])
    for index in order:  # rounding: top up (or trim) to exactly dev_size, in shuffle order
        if len(taken) >= dev_size:
            break
        taken.add(index)
    dev = sorted(taken)[:dev_size] if len(taken) > dev_size else sorted(taken)
    dev_set = set(dev)
    keep = [i for i in range(len(data.train_texts)) if i not in dev_set]
    train = replace(
        data,
        train_texts=tuple(data.train_texts[i] for i in keep),
        train_labels=tuple(data.train_labels[i] for i in keep),
    )
    return train, tuple(data.train_texts[i] for i in dev), tuple(data.train_labels[i] for i in dev)
