"""Scoring a causal LM on prompt/completion tasks: completion loss and exact match.

For each example the model reads ``tokenizer(prompt).input_ids + tokenizer(completion,
add_special_tokens=False).input_ids`` — for a chat rendered by its template, the ids
``apply_chat_template(tokenize=True)`` gives instead (merging.tasks.completions.render_chat: the
template's own special tokens, no second ``<s>``); a prompt that does not fit ``max_length`` with its
completion loses tokens from its *left* (the end of a prompt is what the answer depends on), and
every such cut is counted and reported. A completion that alone fills ``max_length`` is refused
with the file and line, because scoring part of it would not be the task the user wrote.

- ``loss``: the mean negative log-likelihood, in nats, of the completion tokens given everything
  before them (summed over every completion token of the task, divided by their number).
- ``exact_match``: the share of examples whose greedy continuation of the prompt, exactly as many
  tokens as the completion has, decodes (special tokens dropped) to the same text as the completion
  after stripping whitespace on both sides.

One forward pass gives both. Teacher forcing gives, at each completion position, the model's argmax
given the reference prefix. If every argmax equals the reference token, greedy generation would
produce the reference itself: an exact match, no generation needed. If the first disagreement is at
position k, greedy generation produced reference[:k] and then the argmax g at k — known already.
Decoding is concatenative (later tokens only append text), so unless the text of reference[:k] + g
is still a prefix of the reference text (whitespace aside), the example cannot match. Only the rare
example that passes this test is generated for real, from position k + 1 on, with a KV cache. So
scoring costs one forward over the tokens (tests/test_causal_eval.py checks the result against a
plain greedy loop; bench/causal_scoring.py measures the cost against a plain forward).

The logits are computed only from the first completion position of a batch on
(``logits_to_keep``): the prompt's logits are never needed, and for a large vocabulary they are most
of a forward's memory. Batches group examples of similar length, right-padded.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from merging.adapters.lora import Adapter, LoraModule
from merging.evaluation.evaluate import PARTS, EvaluationError, Tally, preview_indices, updates_applied
from merging.tasks.completions import CausalTask, CompletionExample, read_causal_task

DEFAULT_MAX_LENGTH = 1024
TOKENS_PER_BATCH = 8192


@dataclass(frozen=True)
class EncodedExample:
    """One example as the model reads it: prompt ids (left-cut if needed) then completion ids."""

    prompt: tuple[int, ...]
    completion: tuple[int, ...]
    line: int
    cut: int  # prompt tokens dropped from the left to fit max_length

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prompt + self.completion


def encode_example(tokenizer: Any, example: CompletionExample, max_length: int, source: str = "") -> EncodedExample:
    """Token ids of one example, the prompt cut from the left so that the whole fits `max_length`."""
    where = f"{source}, line {example.line}" if source else f"line {example.line}"
    prompt = list(example.prompt_ids) if example.prompt_ids is not None else list(tokenizer(example.prompt).input_ids)
    completion = (
        list(example.completion_ids) if example.completion_ids is not None
        else list(tokenizer(example.completion, add_special_tokens=False).input_ids)
    )
    if not completion:
        raise EvaluationError(f"{where}: the completion gives no tokens")
    if not tokenizer.decode(completion, skip_special_tokens=True).strip():
        # exact match compares decoded text without special tokens: "" would equal any such answer
        raise EvaluationError(
            f"{where}: the completion {example.completion[:40]!r} decodes to no text: its characters are unknown "
            "to the tokenizer (its unknown token) or only special tokens or whitespace, so exact match could not "
            "tell a right answer from a wrong one"
        )
    if not prompt:
        raise EvaluationError(f"{where}: the prompt gives no tokens (the tokenizer adds no BOS token)")
    if len(completion) >= max_length:
        raise EvaluationError(
            f"{where}: the completion is {len(completion)} tokens, the model reads at most {max_length}; "
            "shorten it (a prompt token must precede it)"
        )
    room = max_length - len(completion)
    cut = max(0, len(prompt) - room)
    return EncodedExample(tuple(prompt[cut:]), tuple(completion), example.line, cut)


@dataclass
class CausalEvalSet:
    """A causal task's rendered examples (prompt and completion text)."""

    name: str
    examples: list[CompletionExample]
    source: str = ""

    @property
    def majority_baseline(self) -> None:  # no classes: no majority guess
        return None


def could_still_match(
    tokenizer: Any, reference: Sequence[int], agreed: int, guess: int, target: str | None = None
) -> bool:
    """Can greedy output that starts reference[:agreed] + [guess] (guess ≠ reference[agreed])
    still decode to the reference text, whitespace stripped? False only when it surely cannot.
    `target`: the reference's decoded, stripped text, when the caller has it already."""
    if target is None:
        target = tokenizer.decode(list(reference), skip_special_tokens=True).strip()
    so_far = tokenizer.decode([*reference[:agreed], guess], skip_special_tokens=True).lstrip()
    if "\ufffd" in so_far and "\ufffd" not in target:
        return True  # a byte-level token cut a character in two: the next token may complete it
    return target.startswith(so_far.rstrip())


def same_text(tokenizer: Any, generated: Sequence[int], reference: Sequence[int]) -> bool:
    """The exact-match rule: equal decoded text (special tokens dropped), whitespace stripped."""
    decode = tokenizer.decode
    return decode(list(generated), skip_special_tokens=True).strip() == decode(list(reference), skip_special_tokens=True).strip()


def _takes_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class CausalEvaluator:
    """Holds one causal LM and the tokenised tasks; scores bodies (base + updates) on them.

    The same interface as merging.evaluation.evaluate.Evaluator (the classification scorer), so
    evaluate_merge and the Lab never ask which kind they hold.
    """

    kind = "causal"
    metric = "exact_match"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        eval_sets: Sequence[CausalEvalSet] = (),
        device: torch.device | str = "cpu",
        max_length: int | None = None,
        tokens_per_batch: int = TOKENS_PER_BATCH,
    ):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.max_length = int(max_length or min(positions or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH))
        self.tokens_per_batch = tokens_per_batch
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.eval_sets: dict[str, CausalEvalSet] = {}
        self._encoded: dict[str, list[EncodedExample]] = {}
        self._parts: dict[str, dict[str, list[list[int]]]] = {}
        self._data_keys: dict[str, str] = {}
        self.base_tallies: MutableMapping = {}  # a lab may give a disk-backed mapping
        self._texts: dict[tuple[int, ...], str] = {}
        self._logits_to_keep = _takes_logits_to_keep(model)
        self.generated = 0  # examples that needed a real greedy generation (see the module doc)
        for eval_set in eval_sets:
            self.add_eval_set(eval_set)

    # -- tasks ------------------------------------------------------------------------------------

    def add_eval_set(self, eval_set: CausalEvalSet) -> None:
        """Tokenise once; batch the preview part (every PREVIEW_EVERY-th example), the rest and all."""
        encoded = [encode_example(self.tokenizer, e, self.max_length, eval_set.source) for e in eval_set.examples]
        if not encoded:
            raise EvaluationError(f"task {eval_set.name}: no examples")
        preview = set(preview_indices([0] * len(encoded)))
        members = {
            "preview": [i for i in range(len(encoded)) if i in preview],
            "rest": [i for i in range(len(encoded)) if i not in preview],
            "all": list(range(len(encoded))),
        }
        parts = {}
        for part, indices in members.items():
            order = sorted(indices, key=lambda i: (len(encoded[i].ids), i))
            batches, batch = [], []
            for i in order:
                longest = len(encoded[i].ids)  # sorted: the newest is the longest
                if batch and (len(batch) + 1) * longest > self.tokens_per_batch:
                    batches.append(batch)
                    batch = []
                batch.append(i)
            if batch:
                batches.append(batch)
            parts[part] = batches
        digest = hashlib.blake2b(digest_size=8)
        for example in encoded:
            digest.update(repr(example.ids).encode() + b"|" + repr(len(example.completion)).encode())
        self.eval_sets[eval_set.name] = eval_set
        self._encoded[eval_set.name] = encoded
        self._parts[eval_set.name] = parts
        self._data_keys[eval_set.name] = f"{eval_set.name}@{digest.hexdigest()}"

    def add_task(self, task: CausalTask, owner: Adapter | None = None) -> CausalEvalSet:
        """A task read from the user's file (merging.tasks.completions), rendered for this tokenizer."""
        eval_set = CausalEvalSet(task.name, task.rendered(self.tokenizer), task.source)
        self.add_eval_set(eval_set)
        return eval_set

    def add_task_file(self, path: str, name: str, owner: Adapter | None = None) -> CausalEvalSet:
        """Every row of a user's prompt/completion or chat JSONL file as the task `name`."""
        eval_set = self.eval_set_from_file(path, name, owner)
        self.add_eval_set(eval_set)
        return eval_set

    def eval_set_from_file(self, path: str, name: str, owner: Adapter | None = None) -> CausalEvalSet:
        """Every row of the file, in file order, rendered for this tokenizer (not added)."""

        task = read_causal_task(path, name)
        return CausalEvalSet(task.name, task.rendered(self.tokenizer), task.source)

    def data_key(self, task: str) -> str:
        """Identifies the task's scored examples: caches keyed by it never mix two versions of a file."""
        return self._data_keys[task]

    def encoded(self, task: str) -> list[EncodedExample]:
        """The task's examples as the model reads them (ids, left cut), in file order."""
        return list(self._encoded[task])

    def truncated(self, task: str) -> int:
        """How many prompts of `task` lost tokens from the left to fit max_length."""
        return sum(1 for e in self._encoded[task] if e.cut)

    def baseline(self, task: str) -> None:
        return None

    # -- scoring ----------------------------------------------------------------------------------

    def tally(
        self,
        task: str,
        owner: Adapter | None,
        modules: Mapping[str, LoraModule] | None,
        carried: Mapping[str, torch.Tensor] | None = None,
        parts: Sequence[str] = PARTS,
    ) -> Tally:
        """Exact matches and completion NLL on `parts` of `task` for the base + `modules` (+ the
        `carried` whole tensors, e.g. a trained lm_head). `owner` is unused: no task head here."""
        if task not in self.eval_sets:
            raise EvaluationError(f"no evaluation data for task '{task}'")
        with updates_applied(self.model, modules, carried):
            return self._tally(task, parts)

    def base_tally(self, task: str, owner: Adapter | None, head_key: str | None) -> Tally:
        """The base model's tally (cached: it depends on the task's data only)."""
        key = (task, self.data_key(task))
        if key not in self.base_tallies:
            self.base_tallies[key] = self.tally(task, owner, None)
        return self.base_tallies[key]

    @torch.inference_mode()
    def _tally(self, task: str, parts: Sequence[str]) -> Tally:
        self.model.eval()
        if set(parts) == set(PARTS):
            parts = ("all",)
        total = Tally()
        for part in parts:
            for batch in self._parts[task][part]:
                total = total + self._score_batch([self._encoded[task][i] for i in batch])
        return total

    def _score_batch(self, examples: Sequence[EncodedExample]) -> Tally:
        longest = max(len(e.ids) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        # target[b, t] is the token at t + 1 when it is a completion token, else -1
        target = torch.full((len(examples), longest - 1), -1, dtype=torch.long)
        for row, example in enumerate(examples):
            n, p = len(example.ids), len(example.prompt)
            ids[row, :n] = torch.tensor(example.ids)
            mask[row, :n] = 1
            target[row, p - 1 : n - 1] = torch.tensor(example.completion)
        first = min(len(e.prompt) for e in examples) - 1  # the first position whose logits are needed
        kwargs = {"logits_to_keep": longest - first} if self._logits_to_keep else {}
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs).logits
        if not self._logits_to_keep:
            logits = logits[:, first:]
        logits = logits[:, : longest - 1 - first]  # the last position predicts nothing here
        target = target[:, first:].to(self.device)
        picked = target >= 0
        chosen = logits[picked].float()  # (completion tokens, vocab), row-major: example by example
        log_probs = torch.log_softmax(chosen, dim=-1)
        wanted = target[picked]
        nll = -log_probs.gather(1, wanted[:, None]).squeeze(1)
        guesses = chosen.argmax(dim=-1).cpu().tolist()
        correct = 0
        offset = 0
        for example in examples:
            length = len(example.completion)
            mine = guesses[offset : offset + length]
            offset += length
            agreed = next((k for k, (g, r) in enumerate(zip(mine, example.completion)) if g != r), length)
            if agreed == length:
                correct += 1
            elif could_still_match(self.tokenizer, example.completion, agreed, mine[agreed], self._text(example)):
                correct += int(self._generate_matches(example, agreed, mine[agreed]))
        return Tally(correct, len(examples), float(nll.sum().double()), int(picked.sum()))

    def _text(self, example: EncodedExample) -> str:
        """The reference completion's decoded text, stripped (decoded once per example)."""
        if example.completion not in self._texts:
            self._texts[example.completion] = self.tokenizer.decode(list(example.completion), skip_special_tokens=True).strip()
        return self._texts[example.completion]

    def _generate_matches(self, example: EncodedExample, agreed: int, guess: int) -> bool:
        """Greedy generation from reference[:agreed] + [guess] to the completion's length; compare."""
        self.generated += 1
        produced = [*example.completion[:agreed], guess]
        context = torch.tensor([[*example.prompt, *produced]], device=self.device)
        out = self.model(input_ids=context, use_cache=True)
        past = out.past_key_values
        while len(produced) < len(example.completion):
            token = int(out.logits[0, -1].argmax())
            produced.append(token)
            if len(produced) == len(example.completion):
                break
            out = self.model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=past, use_cache=True)
            past = out.past_key_values
        return same_text(self.tokenizer, produced, example.completion)

