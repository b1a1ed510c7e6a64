"""Every tiny model the tests (and bench/causal_scoring.py) build: in-process, from configs, seeded.

One set, two families:
- with their own in-process tokenizer (no files): `tiny_bert` (a BertForSequenceClassification over a
  small whole-word vocabulary, weights std 0.2 so a toy task is learnable in a few steps),
  `tiny_llama` and `tiny_gpt2` (causal LMs over `tiny_causal_tokenizer`), and `save_model_folder`
  to write one as a local Hugging Face folder;
- bare bases for PEFT adapters (`bare_bert`, `bare_llama`: vocabulary 64, no tokenizer), on which
  tests/peft_fixtures.py builds real PEFT folders.

They lived in merging/models/base.py; nothing in the library uses them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------
# A tiny BERT: builds in milliseconds, no files needed.

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
# Tiny causal LMs: built from a config in-process, with an in-process tokenizer.

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


# ----------------------------------------------------------------------------------------------
# Bare bases for PEFT adapters (tests/peft_fixtures.py): the same weights for the same seed, so an
# adapter saved from one copy loads into a fresh one.


def bare_bert(seed: int = 0, name: str = "tiny-bert", hidden_size: int = 16):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config).eval()
    model.name_or_path = name  # PEFT records it as base_model_name_or_path
    return model


def bare_llama(seed: int = 0, name: str = "tiny-llama", hidden_size: int = 16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden_size,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    model.name_or_path = name
    return model
