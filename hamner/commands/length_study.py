"""`hamner eval RUN [OTHER_RUN] --length-gen`: the length-generalisation study (see `hamner.eval.length_study`).

Chunk perplexity at 1x..20x a window W for the latest checkpoint of RUN (every checkpoint with
--all-checkpoints), optionally compared with OTHER_RUN; writes JSON, CSV and plots and prints the tables.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from hamner.commands.parsing import ArgumentParser, command
from hamner.device import pick_device
from hamner.eval.length_study import MODES, ChunkGrid, format_comparison, format_study, run_labels, run_study


def _multiples(parser: argparse.ArgumentParser, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        parser.error(f"--multiples must be comma-separated whole numbers >= 1, got {text!r}")
    return values


@command()
def main(argv: list[str] | None = None, prog: str = "hamner eval RUN --length-gen") -> int:
    """Run the study on the run(s) the flags name; 2 on bad input."""
    parser = ArgumentParser(
        prog=prog,
        description="Length generalisation: chunk perplexity at 1x..20x a window W, for a checkpoint or every "
        "checkpoint of a run, optionally compared with a second run (ratio RUN / OTHER per position).")
    parser.add_argument("run", help="run directory or checkpoint directory")
    parser.add_argument("other", nargs="?", help="a second run to compare with (its last checkpoint)")
    parser.add_argument("--window", type=int, default=64, help="window W (default 64)")
    parser.add_argument("--chunk", type=int, default=16, help="predictions per chunk K (default 16)")
    parser.add_argument("--stride", type=int, default=16, help="stride S between chunks (default 16)")
    parser.add_argument("--multiples", default="1,2,5,10,20", help="positions as multiples of W (default 1,2,5,10,20)")
    parser.add_argument("--sequences", type=int, default=16, help="validation sequences averaged (default 16)")
    parser.add_argument("--mode", choices=MODES, default="single", help="single pass (default) or sliding window")
    parser.add_argument("--context", type=int, help="sliding mode: tokens each pass reads "
                        "(default: the model's context)")
    parser.add_argument("--all-checkpoints", action="store_true", help="evaluate every checkpoint saved in RUN")
    parser.add_argument("--source", help="prepared source directory whose val split is read "
                        "(default: built-in stories)")
    parser.add_argument("--out", help="output directory (default: RUN/length-gen)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = parser.parse_args(argv)
    for name in ("window", "chunk", "stride", "sequences", "context"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be positive, got {value}")
    started = time.perf_counter()
    grid = ChunkGrid(args.window, args.chunk, args.stride, _multiples(parser, args.multiples))
    out = Path(args.out) if args.out else Path(args.run) / "length-gen"
    report, written = run_study(args.run, args.other, grid, out, all_checkpoints=args.all_checkpoints,
                                mode=args.mode, context=args.context, sequences=args.sequences,
                                source=args.source, device=pick_device(args.device))
    print(format_study(report["study"]))
    if args.other:
        print(format_study(report["other"]))
        print(format_comparison(report["comparison"], run_labels(Path(args.run), Path(args.other))))
    print(f"\nwritten: {', '.join(str(p) for p in written)} ({time.perf_counter() - started:.1f}s)")
    return 0
