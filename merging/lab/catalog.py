"""The adapter catalogue and everything resolved from a Recipe before a merge, in one place.

The dashboard and the CLI must merge the same body from the same Recipe. So what used to be decided
in the pages — which adapters exist (the zoo plus the workspace), an adapter's OSRM twin, the base
model, the OSRM post-hoc projection, the key under which results are cached — is decided here, from
the recipe and the folders alone:

- A *folder of adapters* is either a zoo (a `manifest.json` names its adapters, tasks and inits) or
  a plain folder whose sub-folders are adapters (a workspace's `adapters/`). An adapter's twin is
  looked up among the adapters of its own folder: same task, the other init. That is why a stored
  recipe (adapter paths + `osrm: twins`) resolves the same way wherever it is re-run.
- The catalogue reads only small JSON files, never weights, and never raises for one bad folder: a
  broken adapter (e.g. a `mergescope.json` that is `[1]`, a `lora_alpha` that is not a number) is
  listed with its error (`Entry.error`, the one list of broken adapters), so a page can say what is
  wrong and offer to remove it instead of failing for every adapter.
- Each entry says which base model it was trained on (mergescope.json's `base_model`, else PEFT's
  `base_model_name_or_path`) and, for workspace adapters, which evaluation file the user attached
  (merging.store.workspace keeps them). The dashboard works on one base model at a time: the entries
  shown are those `for_base_model` keeps. Names of one model differ between machines (a Hub id, its
  snapshot in the HF cache, a local copy of it), so two names are the same model when they are
  equal, resolve to the same folder, or when one is a Hub id `org/name` and the other a folder
  called `name` (how people copy a model locally); an adapter that names no base model is kept
  under every base (nothing says it does not fit) and marked as such.
- Each entry says whether it learned its task (`Entry.did_not_learn`, merging.lab.learned: the zoo
  build's rule applied to its manifest entry or mergescope.json), so every page can flag one at chance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merging.adapters.lora import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    Adapter,
    AdapterError,
    adapter_version,
    check_lora_config,
    check_meta,
    load_adapter,
    read_config,
    read_json,
)
from merging.lab.lab import task_data_for
from merging.lab.learned import manifest_verdicts, record_verdict
from merging.models.base import DEMO_BASE_MODEL, ModelLoadError, model_kind, resolve_model_source
from merging.recipe.codec import Recipe
from merging.store.workspace import attached_eval_files, task_display_name
from merging.tasks import read_task_file
from merging.tasks.completions import file_format, read_causal_task
from merging.training.zoo import MANIFEST, Zoo, ZooError, load_zoo

if TYPE_CHECKING:
    from merging.lab.lab import Lab

OSRM_INIT = "osrm"


@dataclass(frozen=True)
class Entry:
    """One adapter the user can pick; `error` says why a broken one cannot be used."""

    name: str
    task: str | None
    init: str
    path: Path
    source: str  # "zoo" or "workspace"
    single_task_accuracy: float | None = None
    error: str | None = None
    base_model: str | None = None  # what the adapter says it was trained on; None: it does not say
    eval_file: Path | None = None  # the evaluation file attached on the Adapters page (workspace only)
    did_not_learn: str | None = None  # why it is at chance (merging.lab.learned); None: it learned, or unknown
    majority_baseline: float | None = None  # its task's majority-class accuracy, where recorded

    @property
    def usable(self) -> bool:
        return self.error is None


# ----------------------------------------------------------------------------------------------
# Reading folders of adapters


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _accuracy_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1 else None


def adapter_entry(path: Path, source: str = "workspace") -> Entry:
    """The catalogue entry of one adapter folder, from its JSON files only; never raises.

    The config and mergescope.json get the checks load_adapter makes (merging.adapters.lora), so an adapter
    offered here fails later only for what is in its tensors; the error names the file and field.
    """
    path = path.resolve()
    try:
        config = read_config(path)
        check_lora_config(config, str(path / CONFIG_FILE))
        meta = check_meta(read_json(path / META_FILE), str(path / META_FILE)) if (path / META_FILE).is_file() else {}
        if not (path / WEIGHTS_FILE).is_file():  # the cache keys (adapter_version) are its mtime
            raise AdapterError(f"{path}: missing {WEIGHTS_FILE}")
    except AdapterError as err:
        return Entry(path.name, None, "standard", path, source, error=str(err))
    return Entry(
        path.name,
        _text_or_none(meta.get("task")),
        _text_or_none(meta.get("init")) or "standard",
        path,
        source,
        _accuracy_or_none(meta.get("single_task_accuracy")),
        base_model=_text_or_none(meta.get("base_model")) or _text_or_none(config.get("base_model_name_or_path")),
        did_not_learn=record_verdict(meta),
        majority_baseline=_accuracy_or_none(meta.get("majority_baseline")),
    )


def zoo_entries(zoo: Zoo) -> list[Entry]:
    verdicts = manifest_verdicts(zoo.folder)
    majority = {t.name: t.majority_baseline for t in zoo.tasks}
    return [
        Entry(a.name, a.task, a.init, a.path, "zoo", a.single_task_accuracy, base_model=zoo.base_model,
              did_not_learn=verdicts.get(a.name), majority_baseline=_accuracy_or_none(majority.get(a.task)))
        for a in zoo.adapters
    ]


def folder_entries(folder: Path, source: str = "workspace") -> list[Entry]:
    """The adapters of a folder: a zoo's manifest when it has one, else each visible sub-folder."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        try:
            return zoo_entries(load_zoo(folder))
        except ZooError:
            pass  # a broken manifest: list the sub-folders one by one instead
    if not folder.is_dir():
        return []
    # dot-folders are staging areas of imports and saves in progress
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [adapter_entry(p, source) for p in subfolders]


def adapters_folder(workspace: Path) -> Path:
    return Path(workspace) / "adapters"


def catalog(workspace: Path | None, zoo: Zoo | None) -> list[Entry]:
    """The built-in zoo's adapters, then the workspace's (broken ones included, with their error),
    each workspace adapter with the evaluation file attached to it, if any."""

    entries = zoo_entries(zoo) if zoo is not None else []
    if workspace is not None:
        attached = attached_eval_files(workspace)
        entries += [
            replace(e, eval_file=attached.get(e.name)) for e in folder_entries(adapters_folder(workspace), "workspace")
        ]
    return entries


def usable(entries: Sequence[Entry]) -> list[Entry]:
    return [e for e in entries if e.usable]


def entry_by_name(entries: Sequence[Entry], name: str) -> Entry | None:
    return next((e for e in entries if e.name == name), None)


def entry_for(entries: Sequence[Entry], name: str | None, path: str | None) -> Entry | None:
    """The catalogue entry a recipe's adapter refers to: by name first (links travel between
    machines, paths do not), else by resolved path."""
    if name:
        found = entry_by_name(entries, name)
        if found is not None:
            return found
    if path:
        resolved = Path(path).resolve()
        return next((e for e in entries if e.path == resolved), None)
    return None


def twin_of(entries: Sequence[Entry], entry: Entry, init: str = OSRM_INIT) -> Entry | None:
    """The adapter trained on the same task with another initialisation, from the same source."""
    if entry.init == init:
        return entry
    if entry.task is None:
        return None
    return next(
        (e for e in entries if e.usable and e.task == entry.task and e.init == init and e.source == entry.source),
        None,
    )


def twin_path(path: str | Path, init: str = OSRM_INIT) -> Entry | None:
    """An adapter folder's twin among the adapters of its own folder (None: it has none)."""
    path = Path(path).resolve()
    siblings = folder_entries(path.parent)
    own = next((e for e in siblings if e.path == path), None) or adapter_entry(path)
    return twin_of(siblings, own, init)


# ----------------------------------------------------------------------------------------------
# Base model


def adapters_base_model(adapters: Sequence[Adapter]) -> str | None:
    """The one base model the adapters name (mergescope.json, else PEFT's config); None if none does."""
    known = {a.meta.get("base_model") or a.base_model for a in adapters} - {None}
    if len(known) > 1:
        raise ValueError(f"the adapters come from different base models: {', '.join(sorted(map(str, known)))}")
    return known.pop() if known else None


def default_base_model(zoo: Zoo | None) -> str:
    """Where nothing else says: the built-in zoo's base model (the packaged demo model)."""
    return zoo.base_model if zoo is not None else DEMO_BASE_MODEL


def _model_folder(name: str, look_in_cache: bool = True) -> Path | None:
    """The local folder a base-model name stands for: a folder, the demo model, or (a Hub id) its
    snapshot in the local Hugging Face cache; None when there is none."""

    try:
        path = Path(name).expanduser()
        if path.is_dir():
            return path.resolve()
        if name != DEMO_BASE_MODEL and not look_in_cache:
            return None
        return resolve_model_source(name).resolve()
    except (ModelLoadError, OSError, ValueError):
        return None


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and _model_folder(name, False) is None


def same_base_model(first: str, second: str) -> bool:
    """Whether two base-model names stand for the same model (see the module docstring)."""
    first, second = first.strip().rstrip("/"), second.strip().rstrip("/")
    if first == second:
        return True
    folders = _model_folder(first), _model_folder(second)
    if None not in folders and folders[0] == folders[1]:
        return True
    for hub, local in ((first, folders[1]), (second, folders[0])):
        if local is not None and _is_hub_id(hub) and hub.split("/")[1].lower() == local.name.lower():
            return True
    return False


def fits_base_model(entry: Entry, base_model: str) -> bool:
    """An entry belongs under `base_model` when it names that model, or names none."""
    return entry.base_model is None or same_base_model(entry.base_model, base_model)


def for_base_model(entries: Sequence[Entry], base_model: str) -> list[Entry]:
    """The entries trained on `base_model` (and those that do not say), in their order; broken
    entries are kept so a page can still say what is wrong with them."""
    return [e for e in entries if not e.usable or fits_base_model(e, base_model)]


def base_model_choices(entries: Sequence[Entry], default: str) -> list[str]:
    """The base models a user can pick: `default` first, then each other model that a usable
    adapter names, once (names of one model counted once), in alphabetical order."""
    choices = [default]
    for name in sorted({e.base_model for e in entries if e.usable and e.base_model}):
        if not any(same_base_model(name, known) for known in choices):
            choices.append(name)
    return choices


def base_model_summary(base_model: str) -> tuple[str, Path]:
    """(kind, folder) of a base model — "causal" or "classification", and where it was found (a
    folder, or the local Hugging Face cache; nothing is downloaded). ModelLoadError says which
    folder and cache were searched."""

    folder = resolve_model_source(base_model)
    return model_kind(folder), folder


def with_base_model(recipe: Recipe, base_model: str, default: str) -> Recipe:
    """The recipe as the dashboard runs it with `base_model` chosen: a recipe that names its own
    base model keeps it; otherwise a non-default choice is written into it, so the stored recipe
    re-runs on the same model from the CLI."""
    if recipe.base_model or same_base_model(base_model, default):
        return recipe
    return replace(recipe, base_model=base_model)


def with_eval_files(recipe: Recipe, entries: Sequence[Entry]) -> Recipe:
    """The recipe with each adapter's attached evaluation file (Adapters page) written in, as
    `eval` and `task` (the file's name without the content hash the workspace adds), for adapters
    whose recipe entry names no file of its own. The stored recipe then scores the same files
    when it is re-run from the CLI."""

    adapters = []
    for ref in recipe.adapters:
        entry = entry_for(entries, ref.name, ref.path)
        if ref.eval is None and entry is not None and entry.eval_file is not None:
            ref = replace(ref, eval=str(entry.eval_file), task=task_display_name(entry.eval_file))
        adapters.append(ref)
    return replace(recipe, adapters=tuple(adapters))


def resolve_base_model(recipe: Recipe, adapters: Sequence[Adapter], fallback: str | None = None) -> str:
    """The recipe's `base_model`, else the adapters' one base model, else `fallback`."""
    if recipe.base_model:
        return recipe.base_model
    found = adapters_base_model(adapters)
    if found:
        return found
    if fallback:
        return fallback
    raise ValueError("the adapters do not say which base model they belong to; set the recipe's 'base_model'")


# ----------------------------------------------------------------------------------------------
# The task an adapter is scored on, and its texts


def scored_task(entry: Entry) -> str | None:
    """The task an entry is scored on: its attached evaluation file's (named after the file), else
    the task it was trained on (mergescope.json); None when neither says."""
    if entry.eval_file is not None:
        from merging.store.workspace import task_display_name

        return task_display_name(entry.eval_file)
    return entry.task


def as_scored(adapter: Adapter, entry: Entry) -> Adapter:
    """The adapter carrying the task it is scored on (metrics and pages group adapters by
    `adapter.task`): an attached evaluation file's task replaces the one in its metadata."""
    task = scored_task(entry)
    if entry.eval_file is None or task is None:
        return adapter
    return replace(adapter, meta={**adapter.meta, "task": task})


def eval_file_texts(path: str | Path, tokenizer: Any = None) -> list[str]:
    """The inputs of an evaluation file: a causal task's prompts (chat rows rendered with
    `tokenizer`'s template, as the scorer renders them), or a classification file's texts."""

    if file_format(path) == "classification":
        return [text for text, _ in read_task_file(path)]
    return [example.prompt for example in read_causal_task(path).rendered(tokenizer)]


def task_texts(adapter: Adapter, entry: Entry, split: str = "eval", tokenizer: Any = None) -> list[str]:
    """The texts the base model reads for the task an adapter is scored on — what OSRM's
    data-parameter interference runs through it. An attached causal-LM file gives its prompts (chat
    rows rendered with `tokenizer`'s template, as the scorer renders them), a classification file
    its texts; both are evaluation files, so the split does not apply. Otherwise the adapter's own
    task, split exactly as when it was trained (`split` is "eval" or "train")."""
    if entry.eval_file is not None:
        return eval_file_texts(entry.eval_file, tokenizer)

    data = task_data_for(adapter)
    return list(data.eval_texts if split == "eval" else data.train_texts)


# ----------------------------------------------------------------------------------------------
# From a Recipe to the adapters that are merged


@dataclass
class MergeInputs:
    """What a recipe merges: the adapters (twins swapped in, projections applied), in its order."""

    adapters: list[Adapter]
    base_model: str | None  # None: not known, and not needed (no projection); evaluation needs one
    twins: dict[str, str] = field(default_factory=dict)  # listed name -> the OSRM twin merged instead
    posthoc: list[str] = field(default_factory=list)  # names of the adapters projected post-hoc
    pending_posthoc: list[int] = field(default_factory=list)  # indices still to project (resolve_inputs)
    notes: list[str] = field(default_factory=list)
    eval_files: list[str | None] = field(default_factory=list)  # per adapter: the recipe's `eval`, if any

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]


def _load(path: Path, name: str) -> Adapter:
    return load_adapter(path, name=name)


def resolve_inputs(
    recipe: Recipe, load: Callable[[Path, str], Adapter] = _load, fallback_base_model: str | None = None
) -> MergeInputs:
    """Resolve the recipe's `osrm` mode and base model and load its adapters (cheap: no model).

    twins: each adapter whose folder has an OSRM twin is swapped for it; the others, and every
    adapter in mode posthoc, are marked for OSRM's post-hoc projection (`project_posthoc`, which
    needs the base model). `load(path, name)` loads one adapter (the dashboard passes its cache).
    The recipe's `base_model`, when it names one, must exist locally (merging.models.base_check).
    """
    if recipe.base_model:
        from merging.models.base_check import check_base_model

        check_base_model(recipe.base_model)
    paths, names, twins, pending = [], [], {}, []
    for index, ref in enumerate(recipe.adapters):
        path, name = Path(ref.path), ref.display_name
        if recipe.osrm == "twins":
            twin = twin_path(path)
            if twin is None:
                pending.append(index)
            elif twin.path != path.resolve():
                twins[name] = twin.name
                path, name = twin.path, twin.name
        elif recipe.osrm == "posthoc":
            pending.append(index)
        paths.append(path)
        names.append(name)
    adapters = [load(path, name) for path, name in zip(paths, names)]
    try:
        base_model = resolve_base_model(recipe, adapters, fallback_base_model)
    except ValueError:
        if pending and len(adapters) >= 2:
            raise  # the projection needs the base model
        base_model = None  # a plain merge does not: the factors alone define it
    inputs = MergeInputs(adapters, base_model, twins, eval_files=[ref.eval for ref in recipe.adapters])
    if pending and len(adapters) < 2:
        # OSRM's rows avoid the *other* tasks' inputs: with one adapter there is nothing to avoid.
        inputs.notes.append("OSRM post-hoc needs at least two adapters: merged without projection")
    else:
        inputs.pending_posthoc = pending
    return inputs


def project_posthoc(inputs: MergeInputs, lab: Lab) -> MergeInputs:
    """The inputs with the pending adapters projected onto OSRM's subspace (lab: the base model)."""
    if not inputs.pending_posthoc:
        return inputs
    # a task with an evaluation file (a causal LM's prompts) is avoided through that file's inputs
    texts = [eval_file_texts(f, getattr(lab, "tokenizer", None)) if f else None for f in inputs.eval_files]
    given = {"texts": texts} if any(t is not None for t in texts) else {}
    projected = lab.posthoc_osrm(inputs.adapters, **given)
    pending = inputs.pending_posthoc
    return MergeInputs(
        adapters=[projected[i] if i in pending else a for i, a in enumerate(inputs.adapters)],
        base_model=inputs.base_model,
        twins=dict(inputs.twins),
        posthoc=[inputs.adapters[i].name for i in pending],
        notes=list(inputs.notes),
        eval_files=list(inputs.eval_files),
    )


def merge_inputs(
    recipe: Recipe,
    lab_for: Callable[[str], Lab] | None = None,
    load: Callable[[Path, str], Adapter] = _load,
    fallback_base_model: str | None = None,
) -> MergeInputs:
    """resolve_inputs, then project_posthoc with `lab_for(base_model)` when the recipe needs it."""
    inputs = resolve_inputs(recipe, load, fallback_base_model)
    if not inputs.pending_posthoc:
        return inputs
    if lab_for is None:
        raise ValueError("this recipe projects adapters post-hoc onto OSRM's subspace, which needs the base model")
    return project_posthoc(inputs, lab_for(inputs.base_model))


# ----------------------------------------------------------------------------------------------
# Cache keys


def results_key(recipe: Recipe, **extra: Any) -> str:
    """A key for results computed from a recipe (plus e.g. a sweep's grid): equal keys, equal work.
    The device is left out (the same merge on another device is the same experiment); each
    adapter's version is in, so retraining an adapter in place invalidates its results."""
    data = {k: v for k, v in recipe.to_dict().items() if k != "device"}
    data["versions"] = [adapter_version(a.path) for a in recipe.adapters]
    data["extra"] = extra
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
