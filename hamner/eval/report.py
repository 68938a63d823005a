"""The evaluation report: every section for one model, and its plain-text tables.

Sections:
  validation   loss, perplexity and bits per byte on the val split of each named shard source
               (`hamner.eval.loss`);
  synthetic    exact-match accuracy per task and difficulty, greedy answers on held-out seeds
               (`hamner.eval.tasks`, the same scoring the training loop logs);
  needle       recall of a planted fact per prompt length and depth (`hamner.eval.needle`);
  length       loss and perplexity of W-token chunks at k x W positions, k up to 20, read in one
               pass past the training context (`hamner.eval.length`).
The pieces are plain functions of (model, tokenizer, ...) so the training loop's periodic
evaluation calls the same code. `hamner eval` (`hamner.commands.eval`) writes the report as JSON.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hamner.data.tokenizer import Tokenizer
from hamner.eval.length import MULTIPLES, length_generalisation
from hamner.eval.loss import read_split, source_val_metrics
from hamner.eval.needle import DEPTHS, default_lengths, needle_recall
from hamner.eval.tasks import format_table, held_out_seed, task_accuracy
from hamner.model.transformer import HamnerModel

QUICK_DIFFICULTIES: tuple[int, ...] = (1, 3)
DIFFICULTIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def story_stream(tokenizer: Tokenizer, n_tokens: int, seed: int = 0) -> np.ndarray:
    """`n_tokens` tokens of built-in procedural stories (end-of-text between them), on a held-out seed."""
    from hamner.data.stories import StorySource

    return StorySource(tokenizer).rows(1, n_tokens, held_out_seed(seed))[0].astype(np.int64)


def synthetic_section(model: HamnerModel, tokenizer: Tokenizer, difficulties: tuple[int, ...], samples: int,
                      seed: int) -> dict:
    """Exact-match accuracy per task and difficulty ({"samples": n, "accuracy": {task: {difficulty: acc}}})."""
    accuracy: dict[str, dict[str, float]] = {}
    for difficulty in difficulties:
        for task, acc in task_accuracy(model, tokenizer, difficulty, samples, seed=seed).items():
            accuracy.setdefault(task, {})[str(difficulty)] = acc
    return {"samples": samples, "accuracy": accuracy}


def length_section(model: HamnerModel, tokenizer: Tokenizer, sources: dict[str, Path], window: int,
                   multiples: tuple[int, ...], sequences: int) -> dict:
    """Length generalisation on the first named source's val split, or on built-in stories without one."""
    needed = sequences * (max(multiples) + 1) * window + 1
    if sources:
        name, directory = next(iter(sources.items()))
        tokens, stream = read_split(directory, tokenizer, "val", needed), f"{name} (val)"
    else:
        tokens, stream = story_stream(tokenizer, needed), "built-in stories (held-out seed)"
    rows = length_generalisation(model, tokens, window=window, multiples=multiples, sequences=sequences)
    return {"stream": stream, "window": window, "trained_context": model.config.max_seq_len, "rows": rows}


def evaluate(model: HamnerModel, tokenizer: Tokenizer, *, sources: dict[str, Path], quick: bool = False,
             window: int | None = None, samples: int | None = None, difficulties: tuple[int, ...] | None = None,
             seed: int = 0) -> dict:
    """Every section of the report for `model` (see the module docstring); `quick` shrinks each one.

    `samples` (per task and difficulty) and `difficulties` override the synthetic section's size.
    """
    context = model.config.max_seq_len
    report: dict = {"validation": {}}
    for name, directory in sources.items():
        report["validation"][name] = source_val_metrics(
            model, directory, tokenizer, max_tokens=50_000 if quick else 1_000_000)
    report["synthetic"] = synthetic_section(model, tokenizer,
                                            difficulties or (QUICK_DIFFICULTIES if quick else DIFFICULTIES),
                                            samples=samples or (10 if quick else 50), seed=seed)
    lengths = default_lengths(context, tokenizer)  # empty when the context is too short for a haystack
    report["needle"] = needle_recall(model, tokenizer, lengths=lengths[-1:] if quick else lengths,
                                     depths=(0.0, 0.5, 1.0) if quick else DEPTHS, trials=2 if quick else 5,
                                     seed=seed)
    report["length_generalisation"] = length_section(
        model, tokenizer, sources, window or context,
        multiples=tuple(k for k in MULTIPLES if k <= 5) if quick else MULTIPLES, sequences=1 if quick else 4)
    return report


def format_report(report: dict) -> str:
    """The report as plain-text tables."""
    lines = [f"checkpoint {report['checkpoint']} ({report['parameters']:,} parameters, "
             f"context {report['model']['max_seq_len']}, {report['device']}, {report['elapsed_s']:.1f}s)"]
    if "synthetic" not in report:  # `--hellaswag FILE` alone: no evaluation sections
        return "\n".join(lines + ["", format_multiple_choice(report["multiple_choice"])])
    if report["validation"]:
        lines += ["", f"{'validation':<20}{'loss':>9}{'ppl':>11}{'bits/byte':>11}{'tokens':>11}"]
        for name, m in report["validation"].items():
            lines.append(f"{name:<20}{m['loss']:>9.4f}{m['perplexity']:>11.2f}{m['bits_per_byte']:>11.4f}"
                         f"{m['tokens']:>11,}")
    synthetic = report["synthetic"]
    lines += ["", f"synthetic tasks: exact match on {synthetic['samples']} held-out samples per task and difficulty",
              format_table({task: {float(d): acc for d, acc in per_task.items()}
                            for task, per_task in synthetic["accuracy"].items()})]
    lines += ["", f"{'needle: length':<20}{'depth':>7}{'recall':>9}{'prompt tokens':>15}"]
    if not report["needle"]:
        lines.append("(the model's context is too short to hold a haystack)")
    for row in report["needle"]:
        lines.append(f"{row['length']:<20}{row['depth']:>7.2f}{row['recall']:>9.0%}{row['prompt_tokens']:>15.0f}")
    length = report["length_generalisation"]
    lines += ["", f"length generalisation on {length['stream']}: W = {length['window']} tokens, "
              f"trained context {length['trained_context']}",
              f"{'chunk at':<20}{'position':>10}{'loss':>9}{'ppl':>11}"]
    for row in length["rows"]:
        lines.append(f"{str(row['multiple']) + ' x W':<20}{row['start']:>10,}{row['loss']:>9.4f}"
                     f"{row['perplexity']:>11.2f}")
    if report.get("multiple_choice"):
        lines += ["", format_multiple_choice(report["multiple_choice"])]
    return "\n".join(lines)


def format_multiple_choice(choice: dict) -> str:
    """The multiple-choice section (`hamner eval --hellaswag`) as one line."""
    return (f"multiple choice ({choice['file']}, {choice['items']} items): accuracy "
            f"{100 * choice['accuracy']:.1f}%, length-normalised {100 * choice['accuracy_norm']:.1f}%")
