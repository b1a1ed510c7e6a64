"""Whether an adapter learned its task: the flag every page shows beside an adapter at chance.

An adapter that never learned (it predicts the majority class, whatever the input) still merges,
and drags the other tasks down with it; a chart that shows it without a word tells the audience
something about the method that is only about one failed training run. So the rule the zoo build
refuses runs by (merging.training.trainer.chance_verdict: single-task accuracy within 10 pp of the majority
class, or final training loss within 2 % of ln C) is applied to every adapter the catalogue lists,
from what its records say:

- a zoo adapter: its manifest entry — `single_task_accuracy` against its task's
  `majority_baseline`, with the last epoch's mean loss (`epoch_losses`) or else `final_loss`; and
  the build's own `did_not_learn` when it wrote one (newer manifests, judged on the dev split);
- a workspace adapter trained by the app: its mergescope.json (`single_task_accuracy`,
  `majority_baseline`, `final_loss`, `labels`);
- an adapter that records no accuracy (imported): no verdict (unknown), unless its loss says so.

The verdict is a sentence (why it did not learn) carried by `catalog.Entry.did_not_learn`; what
pages show of it (pickers, captions, tables, legends) is merging.lab.chance_badges.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from merging.training.trainer import chance_verdict  # torch and the models: only when a verdict is made

BADGE = "⚠ at chance"
RULE = (
    "⚠ at chance = single-task accuracy within 10 pp of the majority class, or final training loss within "
    "2 % of ln C (C classes); unknown = no accuracy and majority class recorded."
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def verdict(
    accuracy: float | None, majority: float | None, loss: float | None, num_labels: int | None
) -> str | None:
    """Why an adapter did not learn (merging.training.trainer.chance_verdict), or None: it did, or its
    records cannot tell. Accuracy is judged only against a known majority class; the loss only
    against a known number of classes (two or more)."""

    accuracy, majority, loss = _number(accuracy), _number(majority), _number(loss)
    classes = num_labels if isinstance(num_labels, int) and not isinstance(num_labels, bool) and num_labels > 1 else None
    if classes is None:
        loss, classes = None, 1  # chance_verdict reads the loss only with two classes or more
    if accuracy is not None and majority is not None:
        return chance_verdict(accuracy, majority, loss, classes)
    if loss is not None:
        return chance_verdict(1.0, 0.0, loss, classes)  # the loss alone: accuracy cannot flag
    return None


def _last_loss(record: Mapping) -> float | None:
    """The last epoch's mean training loss when recorded (what the build judges), else the last step's."""
    epochs = record.get("epoch_losses")
    if isinstance(epochs, list) and epochs and _number(epochs[-1]) is not None:
        return _number(epochs[-1])
    return _number(record.get("final_loss"))


def record_verdict(record: Mapping, majority: float | None = None, num_labels: int | None = None) -> str | None:
    """The verdict of one adapter's record: a zoo manifest entry, or a mergescope.json (which names
    its own `majority_baseline` and `labels`; `majority`/`num_labels` are its task's where given)."""
    if majority is None:
        majority = _number(record.get("majority_baseline"))
    labels = record.get("labels")
    if num_labels is None and isinstance(labels, list):
        num_labels = len(labels)
    measured = verdict(record.get("single_task_accuracy"), majority, _last_loss(record), num_labels)
    recorded = record.get("did_not_learn")  # the build's own verdict (on the dev split), when it wrote one
    recorded = recorded.strip() if isinstance(recorded, str) and recorded.strip() else None
    if measured and recorded:
        said = measured.split("; ")
        new = [part for part in recorded.split("; ") if part not in said]
        return measured + (f"; at build time: {'; '.join(new)}" if new else "")
    return measured or recorded


def manifest_verdicts(folder: str | Path) -> dict[str, str | None]:
    """{adapter name: verdict} for a zoo manifest (old or new; merging.training.zoo has validated it, so
    anything odd here only means "no verdict"). The fields read are optional in merging.training.zoo's
    reading, so they are read here from the manifest itself."""
    try:
        data = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    tasks = {
        t["name"]: t for t in data.get("tasks") or [] if isinstance(t, dict) and isinstance(t.get("name"), str)
    }
    verdicts: dict[str, str | None] = {}
    for record in data.get("adapters") or []:
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            continue
        task = tasks.get(record.get("task"), {})
        labels = task.get("labels")
        verdicts[record["name"]] = record_verdict(
            record, _number(task.get("majority_baseline")), len(labels) if isinstance(labels, list) else None
        )
    return verdicts
