"""Chat rows are read as their template says (issue 19, item 2): the token ids are exactly what
`tokenizer.apply_chat_template(messages, tokenize=True)` gives, so a template that renders
`bos_token` with a tokenizer that also adds `<s>` (Llama-3 / Mistral style) is read with one `<s>`,
and the completion loss equals the loss transformers computes itself on those ids."""

from __future__ import annotations

import json

import pytest
import torch

from merging.evaluation.causal import CausalEvaluator, encode_example
from merging.tasks.completions import ChatExample, read_causal_task, render_chat
from tests.tiny_models import CHAT_TEMPLATE, tiny_causal_tokenizer, tiny_llama

BOS_TEMPLATE = "{{ bos_token }}" + CHAT_TEMPLATE  # renders <s> itself, as Llama-3's and Mistral's do
CHATS = [
    [{"role": "user", "content": "next 3 ="}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "add"}, {"role": "user", "content": "2 + 3 ="}, {"role": "assistant", "content": "5"}],
    [{"role": "user", "content": "copy a b"}, {"role": "assistant", "content": "a b"},
     {"role": "user", "content": "copy c d"}, {"role": "assistant", "content": "c d"}],
]


def _template_ids(tokenizer, messages, add_generation_prompt=False) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                        return_dict=False)
    return list(ids)


@pytest.fixture
def bos_tokenizer():
    tokenizer = tiny_causal_tokenizer()
    tokenizer.chat_template = BOS_TEMPLATE
    bos = tokenizer.bos_token_id
    assert tokenizer("next 3 =").input_ids[0] == bos  # the tokenizer adds <s> too: the case of the issue
    return tokenizer


@pytest.mark.parametrize("messages", CHATS)
def test_the_ids_read_are_apply_chat_templates_ids_with_a_single_bos(bos_tokenizer, messages):
    example = render_chat(ChatExample(tuple(messages), 1), bos_tokenizer)
    encoded = encode_example(bos_tokenizer, example, max_length=1024)
    wanted = _template_ids(bos_tokenizer, messages)
    assert list(encoded.ids) == wanted
    assert list(encoded.prompt) == _template_ids(bos_tokenizer, messages[:-1], add_generation_prompt=True)
    bos = bos_tokenizer.bos_token_id
    assert encoded.ids[0] == bos and encoded.ids.count(bos) == 1
    # the text, tokenised again with special tokens, would have read <s> twice (the bug)
    assert bos_tokenizer(example.prompt).input_ids[:2] == [bos, bos]


def test_a_template_without_bos_gives_no_bos_as_apply_chat_template_does():
    tokenizer = tiny_causal_tokenizer()  # CHAT_TEMPLATE renders no <s>
    example = render_chat(ChatExample(tuple(CHATS[0]), 1), tokenizer)
    assert list(encode_example(tokenizer, example, 1024).ids) == _template_ids(tokenizer, CHATS[0])
    assert tokenizer.bos_token_id not in encode_example(tokenizer, example, 1024).ids


def test_the_chat_loss_equals_transformers_own_loss_on_the_template_ids(bos_tokenizer, tmp_path):
    model, _ = tiny_llama(seed=3, tokenizer=bos_tokenizer)
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS), encoding="utf-8")
    evaluator = CausalEvaluator(model, bos_tokenizer, device="cpu")
    evaluator.add_task_file(str(path), "chat")
    tally = evaluator.tally("chat", None, None)
    # independent: transformers' own shifted cross-entropy over the completion positions of each chat
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for messages in CHATS:
            ids = _template_ids(bos_tokenizer, messages)
            prompt = len(_template_ids(bos_tokenizer, messages[:-1], add_generation_prompt=True))
            labels = [-100] * prompt + ids[prompt:]
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            completion_tokens = len(ids) - prompt
            total_nll += float(out.loss) * completion_tokens
            total_tokens += completion_tokens
    assert tally.tokens == total_tokens and tally.scored == len(CHATS)
    assert tally.loss == pytest.approx(total_nll / total_tokens, rel=1e-5)
    assert len(read_causal_task(path).examples) == len(CHATS)
