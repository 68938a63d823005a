"""Evaluate a trained model: `python -m hamner.eval RUN_OR_CHECKPOINT [--data DIR --sources a,b] [--quick]`.

Writes a JSON report and prints it as tables:
  validation   loss, perplexity and bits per byte on the val split of each named shard source
               (`hamner.eval_loss`);
  synthetic    exact-match accuracy per task and difficulty, greedy answers on held-out seeds
               (`hamner.task_accuracy`, the same scoring the training loop logs);
  needle       recall of a planted fact per prompt length and depth (`hamner.eval_needle`);
  length       loss and perplexity of W-token chunks at k x W positions, k up to 20, read in one
               pass past the training context (`hamner.eval_length`).
The pieces are plain functions of (model, tokenizer, ...) so the training loop's periodic
evaluation calls the same code.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from hamner.data.errors import DataError
from hamner.data.tokenizer import Tokenizer
from hamner.checkpoint import resolve_checkpoint
from hamner.eval_length import MULTIPLES, length_generalisation
from hamner.eval_loss import read_split, source_val_metrics
from hamner.eval_needle import DEPTHS, default_lengths, needle_recall
from hamner.inference import InferenceError, load_for_inference, pick_device
from hamner.model import HamnerModel
from hamner.task_accuracy import format_table, held_out_seed, task_accuracy

REPORT_NAME = "eval.json"
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
        lines.append(f"{str(row['multiple']) + ' x W':<20}{row['start']:>10,}{row['loss']:>9.4f}{row['perplexity']:>11.2f}")
    choice = report.get("multiple_choice")
    if choice:
        lines += ["", f"multiple choice ({choice['file']}, {choice['items']} items): accuracy "
                  f"{100 * choice['accuracy']:.1f}%, length-normalised {100 * choice['accuracy_norm']:.1f}%"]
    return "\n".join(lines)


def _sources(data: str | None, names: str | None) -> dict[str, Path]:
    if names and not data:
        raise DataError("--sources needs --data DIR (the directory holding one folder per source)")
    if not data:
        return {}
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"no such data directory: {root}")
    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else sorted(
        p.name for p in root.iterdir() if p.is_dir() and list(p.glob("*val_*.bin")))
    if not chosen:
        raise DataError(f"{root} holds no source directories with val shards")
    missing = [n for n in chosen if not (root / n).is_dir()]
    if missing:
        raise DataError(f"source {missing[0]!r} not found under {root}")
    return {n: root / n for n in chosen}


def _difficulties(parser: argparse.ArgumentParser, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        levels = tuple(int(d) for d in text.split(","))
    except ValueError:
        levels = ()
    if not levels or not all(1 <= d <= 5 for d in levels):
        parser.error(f"--difficulties must be comma-separated whole numbers from 1 to 5, got {text!r}")
    return levels


def _finite(value):
    """JSON has no NaN/inf: write them as strings so the report stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--length-gen" in argv:  # the length-generalisation study has flags of its own
        from hamner.studies.length_gen import main as length_gen

        return length_gen([a for a in argv if a != "--length-gen"], prog="python -m hamner.eval RUN --length-gen")
    parser = argparse.ArgumentParser(
        prog="python -m hamner.eval",
        description="Evaluate a Hamner model: validation loss/perplexity/bits per byte, synthetic-task accuracy, "
        "needle in a haystack and length generalisation. Writes a JSON report and prints tables.")
    parser.add_argument("checkpoint", help="run directory (its latest checkpoint), checkpoint directory "
                        "or Hugging Face Llama directory")
    parser.add_argument("--data", help="data root holding one prepared shard directory per source")
    parser.add_argument("--sources", help="comma-separated source names under --data (default: all with val shards)")
    parser.add_argument("--out", help=f"report path (default: {REPORT_NAME} in the checkpoint directory)")
    parser.add_argument("--quick", action="store_true", help="fewer tokens, samples and needles: a fast smoke check")
    parser.add_argument("--samples", type=int, help="synthetic samples per task and difficulty (default 50, quick 10)")
    parser.add_argument("--difficulties", help="synthetic difficulties, comma-separated (default 1,2,3,4,5; quick 1,3)")
    parser.add_argument("--window", type=int, help="length-generalisation window W (default: the model's context)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out samples and needles (default 0)")
    parser.add_argument("--hellaswag", metavar="FILE.jsonl", help="also score multiple choice from a local "
                        "HellaSwag-format file (ctx, endings, label per line)")
    parser.add_argument("--hellaswag-limit", type=int, metavar="N", help="score only the first N items")
    parser.add_argument("--length-gen", action="store_true", help="run the length-generalisation study instead "
                        "(chunk perplexity at 1x..20x W; see --length-gen --help)")
    args = parser.parse_args(argv)
    for name in ("window", "samples", "hellaswag_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    difficulties = _difficulties(parser, args.difficulties)
    start = time.perf_counter()
    try:
        sources = _sources(args.data, args.sources)
        device = pick_device(args.device)
        model, config, tokenizer = load_for_inference(args.checkpoint, device)
        report = {"checkpoint": str(resolve_checkpoint(args.checkpoint)), "model": config.to_dict(),
                  "parameters": model.num_parameters(), "device": str(device), "quick": args.quick}
        report.update(evaluate(model, tokenizer, sources=sources, quick=args.quick, window=args.window,
                               samples=args.samples, difficulties=difficulties, seed=args.seed))
        if args.hellaswag:
            from hamner.studies.multiple_choice import load_items, multiple_choice_accuracy

            report["multiple_choice"] = {"file": args.hellaswag, **multiple_choice_accuracy(
                model, tokenizer, load_items(args.hellaswag, args.hellaswag_limit))}
        report["elapsed_s"] = time.perf_counter() - start
        out = Path(args.out) if args.out else Path(report["checkpoint"]) / REPORT_NAME
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_finite(report), indent=2) + "\n")
    except (InferenceError, ValueError, OSError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"\nreport written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
