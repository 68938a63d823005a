"""`hamner eval RUN --memory`: the Hebbian memory's dynamics on held-out text (see `hamner.eval.memory`).

Per memory layer and head: the effective decay λ, the memory's norm along the text and the memory's
share of the layer's output; for every checkpoint with --all-checkpoints (how they moved across the
stages). Writes memory.json and PNGs (default RUN/memory) and prints a table.
"""
from __future__ import annotations

import time
from pathlib import Path

from hamner.commands.parsing import ArgumentParser, command
from hamner.device import pick_device
from hamner.eval.memory import format_memory, study_memory


@command()
def main(argv: list[str] | None = None, prog: str = "hamner eval RUN --memory") -> int:
    """Measure the memory of the run the flags name, write the figures and print the table."""
    parser = ArgumentParser(
        prog=prog,
        description="The Hebbian memory over real validation text: per layer and head the effective decay, "
        "the memory's norm and the share of the layer's output from the memory (agiformer-shaped models).")
    parser.add_argument("run", type=Path, help="run directory or checkpoint directory")
    parser.add_argument("--all-checkpoints", action="store_true", help="measure every checkpoint saved in RUN")
    parser.add_argument("--sequences", type=int, default=4, help="rows of held-out text averaged (default 4)")
    parser.add_argument("--length", type=int, help="tokens per row (default: the model's context)")
    parser.add_argument("--source", help="prepared source directory whose val split is read "
                        "(default: built-in stories)")
    parser.add_argument("--out", type=Path, help="output directory (default: RUN/memory)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = parser.parse_args(argv)
    for name in ("sequences", "length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    started = time.perf_counter()
    report, written = study_memory(args.run, args.out, all_checkpoints=args.all_checkpoints,
                                   sequences=args.sequences, length=args.length, source=args.source,
                                   device=pick_device(args.device))
    print(format_memory(report))
    print(f"\nwritten: {', '.join(str(p) for p in written)} ({time.perf_counter() - started:.1f}s)")
    return 0
