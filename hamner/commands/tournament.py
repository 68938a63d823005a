"""`hamner tournament SPEC.toml` (or `python -m hamner.tournament SPEC.toml`): run a tournament, write its report."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hamner.commands.parsing import ArgumentParser, command
from hamner.run.directory import RUNS_DIR, lock_directory
from hamner.tournament.report import write_report
from hamner.tournament.rounds import run_tournament, size_entrants
from hamner.tournament.runs import Interrupted
from hamner.tournament.spec import available_tournaments, load_spec


@command()
def main(argv: list[str] | None = None, prog: str = "hamner tournament") -> int:
    """Run the tournament the spec names and write its report; 2 on bad input, 130 when interrupted."""
    parser = ArgumentParser(
        prog=prog,
        description="Architecture tournament: entrants resized to the base's size, trained on the same data in "
        "elimination rounds (optional LR sweep, several seeds in the final), then report.md, report.json and "
        "plots. Rerunning the same command skips finished runs and resumes interrupted ones.")
    parser.add_argument("spec", help=f"spec file or shipped name ({', '.join(available_tournaments())})")
    parser.add_argument("--data", metavar="DIR", help="directory holding the prepared shard sources the spec's data "
                        "names (made by hamner prepare), as for train.py --data; built-in sources need none")
    parser.add_argument("--out", help="tournament directory (default: runs/tournament-NAME)")
    parser.add_argument("--sizes", action="store_true", help="only print each entrant's size after resizing")
    parser.add_argument("--restart-changed", action="store_true",
                        help="retrain the runs whose part of the spec (model, data, budget, LR, seed) changed since "
                        "they were trained (without it such runs are refused)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        spec = load_spec(args.spec)
        if args.sizes:
            for name, sized in size_entrants(spec).items():
                r = sized.resized
                print(f"{name:<20} {r.knob} = {r.value:<6} {r.size.parameters:>13,} parameters  "
                      f"{spec.measure} {r.size.measure(spec.measure):>15,.0f} ({100 * r.error:+.2f}% from base)")
            return 0
        out = Path(args.out) if args.out else RUNS_DIR / f"tournament-{spec.name}"
        lock = lock_directory(out, "tournament directory")  # one process at a time trains in OUT
        try:
            outcome = run_tournament(spec, out, restart_changed=args.restart_changed, data=args.data)
            report = write_report(outcome, out)
        finally:
            os.close(lock)
    except (Interrupted, KeyboardInterrupt):
        print("tournament stopped; finished runs are kept and the interrupted one has a checkpoint: "
              "rerun the same command to continue", file=sys.stderr)
        return 130
    final = report["final"]
    if final and final["winner"] is None:
        print(f"no winner: {final['no_result']}; report in {out / 'report.md'}")
    elif final:
        verdict = (f"tie between {final['winner']} and {final['runner_up']}" if final["tie"]
                   else f"winner {final['winner']}")
        print(f"{verdict}; report in {out / 'report.md'} ({time.perf_counter() - started:.0f}s)")
    return 0
