"""Causal-LM scoring vs a plain forward: what completion loss + exact match cost over the same tokens.

A Llama-shaped model built from a config (random weights, nothing downloaded) and a word-level
tokenizer with the model's vocabulary; `--examples` prompt/completion pairs of random words
(prompts `--prompt-tokens` long on average, completions `--completion-tokens`). The scorer
(merging.evaluation.causal.CausalEvaluator.tally over the whole task: loss and exact match, with real
greedy generation where teacher forcing cannot decide) is timed against a plain
`model(input_ids, attention_mask).logits` over exactly the same padded batches, and against the
same forward with `logits_to_keep` as the scorer runs it (so the cost of the loss and exact match
themselves shows apart from the logits the scorer never computes). Issue 10's goal: scoring costs
at most 1.2× the plain forward.

    .venv/bin/python bench/causal_scoring.py --threads 1     # the documented size
    .venv/bin/python bench/causal_scoring.py --tiny          # smoke test
"""

from __future__ import annotations

import random
import time

import torch
from common import base_parser, finish, setup, target, timed, tiny_models


def cpu_timed(fn, repeats: int, device: str) -> dict:
    """`timed`, plus the minimum CPU time this process spent per run."""
    cpu: list[float] = []

    def measured():
        start = time.process_time()
        result = fn()
        cpu.append(time.process_time() - start)
        return result

    result = timed(measured, repeats, device)
    result["min_cpu_s"] = min(cpu)
    result["cpu_s"] = cpu
    return result


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny_causal_tokenizer = tiny_models().tiny_causal_tokenizer

    words = tuple(f"w{i}" for i in range(args.vocab - 8))
    tokenizer = tiny_causal_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64), num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    rng = random.Random(0)
    from merging.tasks.completions import CompletionExample

    examples = []
    for line in range(1, args.examples + 1):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(args.prompt_tokens // 2, 3 * args.prompt_tokens // 2)))
        completion = " " + " ".join(rng.choice(words) for _ in range(rng.randint(max(1, args.completion_tokens // 2), 3 * args.completion_tokens // 2)))
        examples.append(CompletionExample(prompt, completion, line))
    return model.to(args.device), tokenizer, examples


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=96)
    parser.add_argument("--completion-tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target-ratio", type=float, default=1.2)
    args = parser.parse_args(argv)
    if args.tiny:
        args.examples, args.prompt_tokens, args.completion_tokens = 12, 12, 4
        args.hidden, args.layers, args.vocab, args.repeats = 64, 2, 512, 1
    setup(args)
    from merging.evaluation.causal import CausalEvalSet, CausalEvaluator

    model, tokenizer, examples = build(args)
    evaluator = CausalEvaluator(model, tokenizer, [CausalEvalSet("bench", examples)], device=args.device)
    batches = []
    for batch in evaluator._parts["bench"]["all"]:  # the scorer's own batches: the same tokens, same padding
        encoded = [evaluator._encoded["bench"][i] for i in batch]
        longest = max(len(e.ids) for e in encoded)
        ids = torch.full((len(encoded), longest), evaluator.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            mask[row, : len(e.ids)] = 1
        first = min(len(e.prompt) for e in encoded) - 1  # as the scorer: logits from the first completion position
        batches.append((ids.to(args.device), mask.to(args.device), longest - first))
    tokens = sum(len(e.ids) for e in evaluator._encoded["bench"])
    padded = sum(int(ids.numel()) for ids, _, _ in batches)

    @torch.inference_mode()
    def plain():
        positions = 0
        for ids, mask, _ in batches:
            positions += model(input_ids=ids, attention_mask=mask).logits.shape[1]
        return positions

    @torch.inference_mode()
    def plain_kept():
        positions = 0
        for ids, mask, keep in batches:
            positions += model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.shape[1]
        return positions

    def scored():
        return evaluator.tally("bench", None, None, parts=("all",))

    plain()
    plain_kept()
    scored()  # warm-up: kernels, allocator
    plain_t = cpu_timed(plain, args.repeats, args.device)
    kept_t = cpu_timed(plain_kept, args.repeats, args.device)
    evaluator.generated = 0
    scored_t = cpu_timed(scored, args.repeats, args.device)
    tally = scored_t["result"]
    # on the CPU the process's own CPU time (one torch thread): wall time on a shared machine
    # mostly measures the other processes; on a GPU, wall time
    key = "min_cpu_s" if args.device == "cpu" else "min_s"
    ratio = scored_t[key] / plain_t[key]
    rows = [
        [name, t["min_s"], t["median_s"], t["min_cpu_s"], t[key] / plain_t[key]]
        for name, t in (
            ("plain forward (logits of every position)", plain_t),
            ("plain forward, logits from the first completion position on", kept_t),
            ("scorer: loss + exact match", scored_t),
        )
    ]
    params = sum(p.numel() for p in model.parameters())
    tables = [{
        "title": "Scoring a causal task vs a plain forward over the same tokens",
        "caption": (
            f"Llama-shaped model from a config: hidden {args.hidden}, {args.layers} layers, vocabulary "
            f"{len(tokenizer)} ({params / 1e6:.1f} M parameters, random weights); {args.examples} examples, "
            f"{tokens} tokens ({padded} with padding) in {len(batches)} batches, completions "
            f"{tally.tokens} tokens in all. Device {args.device}; minimum and median of {args.repeats} runs; "
            + ("the ratio is of CPU time (this process, one thread)." if args.device == "cpu" else "the ratio is of wall time.")
        ),
        "headers": ["what", "wall min (s)", "wall median (s)", "CPU time min (s)", "× plain forward"],
        "rows": rows,
        "notes": [
            f"examples generated for real (teacher forcing could not decide): {evaluator.generated // max(1, args.repeats)} per run",
            f"loss {tally.loss:.3f} nats/token, exact match {tally.primary:.3f} (random weights: near 0, as expected)",
        ],
    }]
    overhead = scored_t[key] / kept_t[key]
    tables[0]["notes"].append(
        f"the scorer over the forward it runs (logits kept from the first completion position): {overhead:.2f}×"
    )
    targets = [target("scoring cost", f"≤ {args.target_ratio}× a plain forward", round(ratio, 3), ratio <= args.target_ratio)]
    plain_t.pop("result", None)
    kept_t.pop("result", None)
    data = {"plain_s": plain_t, "kept_s": kept_t, "overhead": overhead, "scored_s": {k: v for k, v in scored_t.items() if k != "result"}, "ratio": ratio,
            "tokens": tokens, "padded_tokens": padded, "generated": evaluator.generated,
            "loss": tally.loss, "exact_match": tally.primary}
    return finish("causal_scoring", args, tables, targets, data)


if __name__ == "__main__":
    main()
