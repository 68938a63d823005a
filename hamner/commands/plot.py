"""`hamner plot RUN_DIR [--out DIR]`: draw a run's curves to PNG files (see `hamner.run.plot`)."""
from __future__ import annotations

from pathlib import Path

from hamner.commands.parsing import ArgumentParser, command
from hamner.run.plot import plot_run


@command()
def main(argv: list[str] | None = None, prog: str = "hamner plot") -> int:
    """Write the PNGs of the run the flags name and print their paths."""
    parser = ArgumentParser(
        prog=prog,
        description="Draw loss, LR, throughput and synthetic-task accuracy of a run to PNG files.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by hamner train")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write the PNGs (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
