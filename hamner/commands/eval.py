"""`hamner eval RUN_OR_CHECKPOINT [--data DIR --sources a,b] [--quick]`: evaluate a model, write eval.json.

The sections are described in `hamner.eval.report`; this module reads the command line, loads the
model, writes the JSON report (NaN and infinity as strings, so it stays valid JSON) and prints its tables.
With `--probe FILE_OR_NAME` it scores only that probe (`hamner.eval.probe`): exact-match accuracy
on prompt/answer pairs, trained and held-out items apart; `--hellaswag FILE` alone scores only that file
(with --probe or the report's own flags it is scored beside them). With `--length-gen` the whole command line
goes to the length-generalisation study instead (`hamner.commands.length_study`), which has flags of its own;
with `--memory`, to the Hebbian memory study (`hamner.commands.memory_study`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from hamner.commands import length_study, memory_study
from hamner.commands.parsing import ArgumentParser, command
from hamner.device import pick_device
from hamner.errors import DataError
from hamner.eval.multiple_choice import load_items, multiple_choice_accuracy
from hamner.eval.probe import format_probe, load_probe, score_probe
from hamner.eval.report import evaluate, format_multiple_choice, format_report
from hamner.run.durable import write_text
from hamner.use.load import load_for_inference, model_dir

REPORT_NAME = "eval.json"


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


# Flags only the full report reads: `--hellaswag FILE` alone scores just the file (like `--probe`), with any of
# these it is added to the full report.
REPORT_FLAGS = ("data", "sources", "quick", "samples", "difficulties", "window")
LENGTH_GEN = "--length-gen"  # `hamner eval RUN --length-gen ...`: the length study, with flags of its own
MEMORY = "--memory"  # `hamner eval RUN --memory ...`: the Hebbian memory's dynamics, with flags of its own


def main(argv: list[str] | None = None, prog: str = "hamner eval") -> int:
    """`hamner eval`: the evaluation report, or with --length-gen the length-generalisation study, or with
    --memory the Hebbian memory's dynamics."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if LENGTH_GEN in argv:
        return length_study.main([a for a in argv if a != LENGTH_GEN], prog=f"{prog} RUN {LENGTH_GEN}")
    if MEMORY in argv:
        return memory_study.main([a for a in argv if a != MEMORY], prog=f"{prog} RUN {MEMORY}")
    return report_main(argv, prog)


@command()
def report_main(argv: list[str], prog: str) -> int:
    """Evaluate the checkpoint the flags name, write the JSON report and print its tables."""
    parser = ArgumentParser(
        prog=prog,
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
    parser.add_argument("--probe", metavar="FILE_OR_NAME", help="score only this probe, trained and held-out items "
                        "apart: a JSONL file of {prompt, answer, trained[, kind]} or concepts, concepts/<kind>")
    parser.add_argument("--document-start", action="store_true", help="probe prompts start a document, with no "
                        "end-of-text before them (for models trained with packing = \"document\")")
    parser.add_argument("--hellaswag", metavar="FILE.jsonl", help="score multiple choice from a local "
                        "HellaSwag-format file (ctx, endings, label per line): alone, only that; with --probe or the "
                        "report's flags (--data, --quick, ...), beside them")
    parser.add_argument("--hellaswag-limit", type=int, metavar="N", help="score only the first N items")
    parser.add_argument(LENGTH_GEN, action="store_true", help="run the length-generalisation study instead "
                        "(chunk perplexity at 1x..20x W; see --length-gen --help)")
    parser.add_argument(MEMORY, action="store_true", help="study the Hebbian memory instead: decay, norm and "
                        "share of the output per layer and head (see --memory --help)")
    args = parser.parse_args(argv)
    for name in ("window", "samples", "hellaswag_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    difficulties = _difficulties(parser, args.difficulties)
    start = time.perf_counter()
    sources = _sources(args.data, args.sources)
    # read before the model and the evaluation: a bad file fails in a second, not after the whole run
    choices = load_items(args.hellaswag, args.hellaswag_limit) if args.hellaswag else None
    device = pick_device(args.device)
    model, config, tokenizer = load_for_inference(args.checkpoint, device)
    report = {"checkpoint": str(model_dir(args.checkpoint)), "model": config.to_dict(),
              "parameters": model.num_parameters(), "device": str(device), "quick": args.quick}
    if args.probe:
        rows = score_probe(model, tokenizer, load_probe(args.probe), document_start=args.document_start)
        report["probe"] = {"name": args.probe, "rows": rows}
    elif not args.hellaswag or any(getattr(args, name) not in (None, False) for name in REPORT_FLAGS):
        report.update(evaluate(model, tokenizer, sources=sources, quick=args.quick, window=args.window,
                               samples=args.samples, difficulties=difficulties, seed=args.seed))
    if args.hellaswag:
        report["multiple_choice"] = {"file": args.hellaswag, **multiple_choice_accuracy(model, tokenizer, choices)}
    report["elapsed_s"] = time.perf_counter() - start
    out = Path(args.out) if args.out else Path(report["checkpoint"]) / REPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(_finite(report), indent=2) + "\n")  # durable: a full disk keeps the old report
    print(format_probe(report["probe"]["rows"]) if args.probe else format_report(report))
    if args.probe and args.hellaswag:
        print(format_multiple_choice(report["multiple_choice"]))
    print(f"\nreport written to {out}")
    return 0
