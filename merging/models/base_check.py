"""The recipe's `base_model` is checked on every merge, and recorded as given.

A `base_model` is accepted when it is

    a folder holding a config.json (a Hugging Face model folder), or
    a Hub id (`org/name`, `name`, optionally `@revision`) found in the local Hugging Face cache
    (models.hub_cache_dir(); nothing is ever downloaded), or
    one of the packaged demo model's names.

Anything else — `/etc` (a folder without config.json), an unknown Hub id, a typo — is refused with
one line naming the field, what was looked for and where (`check_base_model`). The CLI's merge,
evaluate and search and the dashboard all go through merging.lab.catalog.resolve_inputs, which calls it;
the library's `merge_adapters` takes its Recipe as given.

A merged PEFT adapter records `base_model` as the recipe gives it (after the path rule below) in its
adapter_config.json's `base_model_name_or_path`; only a recipe without one takes the adapters' own.

Paths, one rule (merging.recipe.codec): in a recipe *file*, every relative path — `adapters[].path`,
`adapters[].eval`, and a `base_model` that names a folder — is relative to the recipe file's folder,
never to the working folder; a loaded Recipe (and so every stored run) holds them absolute, and
`Recipe.to_file(path)` writes the paths under the file's folder relative to it again, so a folder
of adapters with its recipe can be moved or shared as a whole. A relative `base_model` that is no
folder there is taken as given: a Hub id (a Recipe built in code, not read from a file, may also
name a folder relative to the working folder).
"""

from __future__ import annotations

from pathlib import Path

from merging.models.base import DEMO_SPECS, ModelLoadError, _looks_like_hub_id, hub_cache_dir


class BaseModelError(ModelLoadError):
    """A recipe's base_model that is neither a model folder nor in the local cache."""


def check_base_model(spec: str) -> Path | None:
    """The local folder `spec` stands for (None for the packaged demo model), or BaseModelError."""
    text = str(spec).strip()
    if text in DEMO_SPECS:
        return None
    folder = Path(text).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise BaseModelError(f"field 'base_model': {folder} is a file, not a Hugging Face model folder")
        if not (folder / "config.json").is_file():
            raise BaseModelError(
                f"field 'base_model': {folder.resolve()} has no config.json, so it is not a Hugging Face model folder"
            )
        return folder.resolve()
    cache = hub_cache_dir()
    if not _looks_like_hub_id(text):
        raise BaseModelError(
            f"field 'base_model': {folder.resolve()}: no such folder (and {text!r} is not a Hub id to look up in {cache})"
        )
    repo_id, _, revision = text.partition("@")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision or None, cache_dir=str(cache), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
        snapshot = None
    if snapshot is None or not (snapshot / "config.json").is_file():
        raise BaseModelError(
            f"base model {text!r} not found (field 'base_model'): no folder {folder.resolve()}, and not in the local "
            f"Hugging Face cache {cache}; mergescope never downloads: give a local folder, or fetch it yourself "
            f"(`huggingface-cli download {repo_id}`)"
        )
    return snapshot
