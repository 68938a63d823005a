"""`hamner plot RUN_DIR [--out DIR] [--dashboard] [--live [SECONDS]]`: draw a run's curves to PNG files
(see `hamner.run.plot`)."""
from __future__ import annotations

from pathlib import Path

from hamner.commands.parsing import ArgumentParser, command
from hamner.run.plot import plot_dashboard, plot_run, watch_run


@command()
def main(argv: list[str] | None = None, prog: str = "hamner plot") -> int:
    """Write the PNGs of the run the flags name and print their paths (under --live, at each redraw)."""
    parser = ArgumentParser(
        prog=prog,
        description="Draw loss, LR, throughput and synthetic-task accuracy of a run to PNG files; --dashboard "
                    "draws every panel in one image, --live redraws as the run writes rows.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by hamner train")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write the PNGs (default: RUN_DIR/plots)")
    parser.add_argument("--dashboard", action="store_true",
                        help="one image, dashboard.png: loss and validation with stage bands, LR, tokens/s, "
                             "accuracy per task, probe and length-generalisation curves when present")
    parser.add_argument("--live", nargs="?", type=float, const=10.0, default=None, metavar="SECONDS",
                        help="redraw whenever new rows arrive (checked every SECONDS, default 10) until the run "
                             "ends or Ctrl-C; each PNG is replaced atomically")
    parser.add_argument("--refreshes", type=int, default=None, metavar="N",
                        help="with --live: stop after N drawings")
    args = parser.parse_args(argv)
    if args.live is not None and args.live <= 0:
        parser.error("--live takes a positive number of seconds")
    if args.refreshes is not None and (args.live is None or args.refreshes < 1):
        parser.error("--refreshes takes a positive count and goes with --live")

    def draw() -> list[Path]:
        return [plot_dashboard(args.run_dir, args.out)] if args.dashboard else plot_run(args.run_dir, args.out)

    if args.live is None:
        show(draw())
        return 0
    try:
        watch_run(args.run_dir, draw, args.live, args.refreshes, on_draw=show)
    except KeyboardInterrupt:
        pass  # the way to leave --live; every PNG on disk is complete
    return 0


def show(paths: list[Path]) -> None:
    """Print the paths written, at once (a script may be reading them as they come)."""
    for path in paths:
        print(path, flush=True)
