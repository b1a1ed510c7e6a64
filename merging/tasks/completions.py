"""Causal-LM tasks from the user's files: JSONL prompt/completion rows, or JSONL chat `messages`.

A causal task is scored on its whole file (it is an evaluation file: nothing is split off for
training). The file's first row decides its format and every row must follow it:

- ``{"prompt": "2 + 3 =", "completion": " 5"}`` — the completion is what the model must produce;
- ``{"messages": [{"role": "user", "content": ...}, ..., {"role": "assistant", "content": ...}]}``
  — a chat: the last message must be the assistant's, and it is the completion; the messages
  before it are the prompt. They are rendered by :func:`render_chat` with the tokenizer's chat
  template when it has one (the generation prompt included, so the completion starts where the
  model would start answering; the token ids are what ``apply_chat_template(tokenize=True)``
  gives, so a template that renders ``<s>`` is read with one ``<s>``), else as plain
  ``role: content`` lines.

Rows are read without a tokenizer (so a bad file is refused before a model is loaded); each bad
row is one :class:`TaskError` naming the file, the line and what is wrong. Rows keep their line
number, so a later problem (a completion longer than the model reads) can name it too.
A CSV/JSONL file with ``text`` and ``label`` is a classification task (merging.tasks.files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merging.tasks.data import TaskError
from merging.tasks.files import _decode_utf8, parse_json_line, read_bounded

FORMATS = ("completion", "chat", "classification")
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class CompletionExample:
    """One prompt and the completion the model should give, from `line` of the task file.

    `prompt_ids` / `completion_ids`, when set, are the token ids the model reads (a chat rendered by
    its template: what `apply_chat_template(tokenize=True)` gives); None: the text is tokenised by
    the scorer (merging.evaluation.causal.encode_example)."""

    prompt: str
    completion: str
    line: int
    prompt_ids: tuple[int, ...] | None = None
    completion_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ChatExample:
    """A chat whose last message (the assistant's) is the completion, from `line` of the file."""

    messages: tuple[dict[str, str], ...]
    line: int


@dataclass(frozen=True)
class CausalTask:
    """A causal-LM evaluation task: rows of one file, in file order."""

    name: str
    source: str
    format: str  # "completion" or "chat"
    examples: tuple[CompletionExample | ChatExample, ...]

    def rendered(self, tokenizer: Any = None) -> list[CompletionExample]:
        """(prompt, completion) text of every row; chats rendered for `tokenizer` (see render_chat)."""
        return [
            example if isinstance(example, CompletionExample) else render_chat(example, tokenizer)
            for example in self.examples
        ]


def _text_field(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        found = "missing" if key not in row else f"a {type(value).__name__}, not text"
        raise TaskError(f"{where}: the {key!r} field is {found}")
    if not value.strip():
        raise TaskError(f"{where}: the {key!r} field is empty")
    return value


def _chat_row(row: dict, where: str, line: int) -> ChatExample:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TaskError(f"{where}: 'messages' must be a non-empty list of {{\"role\": ..., \"content\": ...}}")
    clean = []
    for index, message in enumerate(messages):
        at = f"{where}, messages[{index}]"
        if not isinstance(message, dict):
            raise TaskError(f"{at}: expected an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise TaskError(f"{at}: 'role' is {json.dumps(role)[:40]}; expected one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise TaskError(f"{at}: 'content' must be text, got {type(content).__name__}")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "assistant":
        raise TaskError(
            f"{where}: the last message is the {clean[-1]['role']}'s; the last message must be the assistant's "
            "reply, which is the completion the model is scored on"
        )
    if not clean[-1]["content"].strip():
        raise TaskError(f"{where}: the last (assistant) message is empty; it is the completion to score")
    if len(clean) < 2:
        raise TaskError(f"{where}: only the assistant's reply; the messages before it are the prompt")
    return ChatExample(tuple(clean), line)


def _format_of(row: dict) -> str | None:
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "completion"
    if "text" in row or "label" in row:
        return "classification"
    return None


_EXPECTED = {
    "completion": '{"prompt": "...", "completion": "..."}',
    "chat": '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}',
    "classification": '{"text": "...", "label": "..."}',
}


def file_format(path: str | Path) -> str:
    """"completion", "chat" or "classification": a CSV is classification, a JSONL file is what its
    first row is. Raises TaskError for an unreadable, empty or unrecognised file."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return "classification"
    if path.suffix.lower() != ".jsonl":
        raise TaskError(
            f"{path.name}: unsupported file type {path.suffix or '(no extension)'!r}; use .jsonl "
            "(prompt/completion, chat messages or text/label) or .csv (text,label)"
        )
    for number, _line, row in _jsonl_rows(path):
        found = _format_of(row)
        if found is None:
            raise TaskError(
                f"{path.name}, line {number}: no 'prompt'/'completion', 'messages' or 'text'/'label' field "
                f"(fields found: {', '.join(map(str, row))[:80] or 'none'})"
            )
        return found
    raise TaskError(f"{path.name} is empty")


def _jsonl_rows(path: Path):
    """(line number, raw line, object) of each non-blank line; a line that is not an object is refused."""
    content = _decode_utf8(read_bounded(path), path.name)
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        row = parse_json_line(line, f"{path.name}, line {number}")
        if not isinstance(row, dict):
            raise TaskError(f"{path.name}, line {number}: expected a JSON object, got {type(row).__name__}")
        yield number, line, row


def read_causal_task(path: str | Path, name: str | None = None) -> CausalTask:
    """A causal task from a JSONL file of prompt/completion rows or chat messages (see module doc)."""
    path = Path(path)
    kind = file_format(path)
    if kind == "classification":
        raise TaskError(f"{path.name}: a text,label file is a classification task, not a causal-LM one")
    examples: list[CompletionExample | ChatExample] = []
    for number, _, row in _jsonl_rows(path):
        where = f"{path.name}, line {number}"
        found = _format_of(row)
        if found != kind:
            raise TaskError(f"{where}: expected a row like line 1's, {_EXPECTED[kind]}")
        if kind == "chat":
            examples.append(_chat_row(row, where, number))
        else:
            examples.append(
                CompletionExample(_text_field(row, "prompt", where), _text_field(row, "completion", where), number)
            )
    return CausalTask(name or path.stem, str(path), kind, tuple(examples))


def chat_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """The token ids `tokenizer.apply_chat_template(messages, tokenize=True)` gives (a list of ints,
    whichever return type this transformers version prefers)."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(ids, "keys"):  # a BatchEncoding (transformers ≥ 5 returns a dict by default)
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def render_chat(example: ChatExample, tokenizer: Any = None) -> CompletionExample:
    """The chat as (prompt, completion) text, and with a template as the ids the model reads.

    With a chat template: prompt = the template over every message but the last, with the
    generation prompt (e.g. ``<|im_start|>assistant\\n``); completion = what the template adds for
    the last message, when the full rendering extends the prompt (so end-of-turn markers the model
    was trained to emit are scored too), else the reply itself. The ids are exactly those of
    ``apply_chat_template(tokenize=True)`` (transformers tokenises the rendering *without* adding
    special tokens): a template that renders ``bos_token`` gives one ``<s>``, not the template's and
    the tokenizer's; one that renders none gives none, as the model saw in chat training. The
    completion's ids are what the full conversation's ids add to the prompt's (when they extend
    them; else the reply tokenised on its own). Without a template: ``role: content`` lines, then
    ``assistant:``, and the reply after a space, tokenised like a prompt/completion row.
    """
    *history, reply = example.messages
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template:
        prompt = tokenizer.apply_chat_template(list(history), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(example.messages), tokenize=False)
        extends = full.startswith(prompt) and full[len(prompt):].strip()
        completion = full[len(prompt):] if extends else reply["content"]
        prompt_ids = chat_ids(tokenizer, list(history), add_generation_prompt=True)
        full_ids = chat_ids(tokenizer, list(example.messages))
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            completion_ids = full_ids[len(prompt_ids):]
        else:
            completion_ids = list(tokenizer(completion, add_special_tokens=False).input_ids)
        return CompletionExample(prompt, completion, example.line, tuple(prompt_ids), tuple(completion_ids))
    prompt = "".join(f"{m['role']}: {m['content']}\n" for m in history) + "assistant:"
    return CompletionExample(prompt, " " + reply["content"], example.line)
