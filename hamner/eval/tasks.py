"""Exact-match accuracy of a model on the synthetic tasks, on held-out samples.

Each sample is cut by `data.synthetic.split_answer` into a prompt and its answer; the model decodes
greedily after the prompt (preceded by end-of-text, as every sample is in training) until it emits
end-of-text, and scores 1 when the text it wrote is exactly the answer. Held-out samples come from
seeds of 2**32 and above, which training never uses: its generator seeds are 32-bit draws.
The training loop scores this at every stage end; `hamner eval` reports the same numbers.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from hamner.data.synthetic import TASKS, sample_texts, split_answer
from hamner.data.tokenizer import Tokenizer
from hamner.errors import EvalError
from hamner.use.generate import generate

HELD_OUT_SEED_BASE = 1 << 32


def held_out_seed(seed: int) -> int:
    """A synthetic-generator seed outside the 32-bit range the training sampler draws from."""
    return HELD_OUT_SEED_BASE + int(seed)


@torch.no_grad()
def task_accuracy(model: torch.nn.Module, tokenizer: Tokenizer, difficulty: float, n: int, seed: int = 0,
                  tasks: Sequence[str] = TASKS) -> dict[str, float]:
    """Task -> fraction of `n` held-out samples (at `difficulty`) answered exactly, greedy decoding."""
    if n < 1:
        raise EvalError(f"task accuracy needs at least one sample per task, got n={n}")
    scores: dict[str, float] = {}
    for task in tasks:
        pairs = [split_answer(text) for text in sample_texts(task, difficulty, n, held_out_seed(seed))]
        prompts = [[tokenizer.eos_id] + tokenizer.encode(prompt) for prompt, _ in pairs]
        longest = max(len(tokenizer.encode(answer)) for _, answer in pairs)
        # One token more than the longest answer: room for the answer and its end-of-text.
        outs = generate(model, prompts, longest + 1, temperature=0.0, eos_id=tokenizer.eos_id)
        scores[task] = sum(tokenizer.decode(out) == answer for out, (_, answer) in zip(outs, pairs)) / n
    return scores


def format_table(results: dict[str, dict[float, float]]) -> str:
    """A plain-text table: one row per task, one column per difficulty, accuracy in percent."""
    levels = sorted({d for per_task in results.values() for d in per_task})
    width = max(len("task"), *(len(t) for t in results))
    lines = ["task".ljust(width) + "".join(f"  d={d:g}".rjust(8) for d in levels)]
    for task, per_task in results.items():
        cells = "".join((f"{100 * per_task[d]:.0f}%" if d in per_task else "-").rjust(8) for d in levels)
        lines.append(task.ljust(width) + cells)
    return "\n".join(lines)
