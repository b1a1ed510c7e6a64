"""Text clean-up and the seeded train/evaluation split, shared by demo tasks and user files.

Every split is a pure function of (examples, train_size, eval_size, seed):

* texts are whitespace-normalised and cut to :data:`MAX_CHARS` characters (the model reads at most
  ~64 tokens, so longer text only costs memory), then de-duplicated case-insensitively; a text that
  occurs with two different labels is dropped altogether because no model can get both right;
* the evaluation split takes the same number of examples from every class, so a majority-class
  guess scores exactly 1/k and accuracies of different tasks are comparable;
* the training split is drawn from what is left (so the two are disjoint), as balanced as the
  class sizes allow, and it does not change the evaluation split: the same seed gives the same
  evaluation examples whatever ``train_size`` is.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from merging.tasks.data import Example, TaskData, TaskError

MAX_CHARS = 300


def clean_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """Collapse whitespace and cut to ``max_chars`` characters (at a word boundary if one is near)."""
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    # Cutting at a space keeps the last word whole; only do it when it loses little text.
    return cut[:space] if space > max_chars * 0.8 else cut


def dedupe(examples: Iterable[Example], max_chars: int = MAX_CHARS) -> list[Example]:
    """Clean texts, drop empty ones and duplicates (case-insensitive), keep first-seen order.

    A text seen with two different labels is removed completely: keeping either copy would put a
    label noise example in training or an unwinnable one in evaluation.
    """
    first: dict[str, Example] = {}
    conflicting: set[str] = set()
    for text, label in examples:
        text = clean_text(text, max_chars)
        if not text:
            continue
        key = text.casefold()
        if key in first:
            if first[key][1] != label:
                conflicting.add(key)
            continue
        first[key] = (text, label)
    return [ex for key, ex in first.items() if key not in conflicting]


def _balanced_quota(available: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over classes as equally as their sizes allow (water-filling).

    A class with fewer examples than its equal share gives all it has and the rest is shared by
    the others, so small classes are never oversampled and the total is met whenever possible.
    """
    quota = {label: 0 for label in available}
    left = total
    active = [label for label, n in available.items() if n > 0]
    while left > 0 and active:
        share = max(1, left // len(active))
        for label in list(active):
            take = min(share, available[label] - quota[label], left)
            quota[label] += take
            left -= take
            if quota[label] == available[label]:
                active.remove(label)
            if left == 0:
                break
    return quota


def split_examples(
    examples: Sequence[Example],
    labels: Sequence[str],
    train_size: int | None,
    eval_size: int,
    seed: int,
) -> tuple[list[str], list[int], list[str], list[int]]:
    """Seeded, disjoint train/eval split with a class-balanced evaluation set.

    The evaluation set has ``eval_size // len(labels)`` examples of every class, capped at half of
    the smallest class so training keeps examples of every label. ``train_size=None`` trains on
    everything that is left. Returns (train_texts, train_labels, eval_texts, eval_labels).
    """
    if len(labels) < 2:
        raise TaskError(f"a task needs at least 2 labels, got {len(labels)}")
    if eval_size < len(labels):
        raise TaskError(
            f"eval_size={eval_size} is smaller than the number of labels ({len(labels)}): "
            "the evaluation set needs at least one example of each label"
        )
    if train_size is not None and train_size < 1:
        raise TaskError(f"train_size must be positive or None, got {train_size}")
    by_label: dict[str, list[str]] = {label: [] for label in labels}
    for text, label in examples:
        by_label[label].append(text)
    for label, texts in by_label.items():
        if len(texts) < 2:
            raise TaskError(
                f"label {label!r} has {len(texts)} example(s) after removing duplicates; "
                "every label needs at least 2 (one to train on, one to evaluate)"
            )
    rng = random.Random(seed)
    for label in labels:  # iterate in label order so the random stream is reproducible
        rng.shuffle(by_label[label])
    smallest = min(len(texts) for texts in by_label.values())
    per_class_eval = min(eval_size // len(labels), smallest // 2)

    index = {label: i for i, label in enumerate(labels)}
    eval_pairs = [(t, index[lab]) for lab in labels for t in by_label[lab][:per_class_eval]]
    rest = {label: by_label[label][per_class_eval:] for label in labels}
    if train_size is None:
        quota = {label: len(texts) for label, texts in rest.items()}
    else:
        quota = _balanced_quota({label: len(texts) for label, texts in rest.items()}, train_size)
    train_pairs = [(t, index[lab]) for lab in labels for t in rest[lab][: quota[lab]]]
    # A separate generator for the final shuffles keeps the eval set independent of train_size.
    order_rng = random.Random(seed + 1)
    order_rng.shuffle(eval_pairs)
    order_rng.shuffle(train_pairs)
    return (
        [t for t, _ in train_pairs],
        [y for _, y in train_pairs],
        [t for t, _ in eval_pairs],
        [y for _, y in eval_pairs],
    )


def make_task(
    name: str,
    examples: Sequence[Example],
    labels: Sequence[str],
    train_size: int | None,
    eval_size: int,
    seed: int,
    description: str = "",
    source: str = "",
    licence: str = "",
) -> TaskData:
    """De-duplicate ``examples`` and split them into a :class:`TaskData`."""
    unknown = sorted({label for _, label in examples} - set(labels))
    if unknown:
        raise TaskError(f"task {name!r}: labels {unknown} are not among {list(labels)}")
    train_x, train_y, eval_x, eval_y = split_examples(
        dedupe(examples), labels, train_size, eval_size, seed
    )
    return TaskData(
        name=name,
        labels=tuple(labels),
        train_texts=tuple(train_x),
        train_labels=tuple(train_y),
        eval_texts=tuple(eval_x),
        eval_labels=tuple(eval_y),
        description=description,
        source=source,
        licence=licence,
    )


def carve_dev_rows(count: int, size: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Row indices (dev, rest) of an evaluation file of `count` rows: a seeded sample of
    min(size, count // 2) rows for a search's dev split, the others for its final report.

    The two are disjoint and together are every row; at most half the file goes to dev, so the
    final report always keeps at least as many rows as the search saw. Both lists are in file order.
    """
    if size < 1:
        raise TaskError(f"dev size: expected a positive number of examples per task, got {size}")
    if count < 2:
        raise TaskError(
            f"{count} row(s): carving a dev split needs at least 2 (one to choose λ on, one to report on); "
            "give the adapter a 'dev' file"
        )
    order = list(range(count))
    random.Random(seed).shuffle(order)
    dev = sorted(order[: min(size, count // 2)])
    chosen = set(dev)
    return dev, [i for i in range(count) if i not in chosen]
