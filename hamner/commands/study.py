"""`hamner study SPEC`: train every arm of a study (length or probe) on one curriculum and write the comparison."""
from __future__ import annotations

import time
from pathlib import Path

from hamner.commands.parsing import ArgumentParser, command
from hamner.run.directory import RUNS_DIR
from hamner.tournament.study import available_studies, load_study, run_study


@command(interrupted="interrupted; rerun the same command to continue the study")
def main(argv: list[str] | None = None, prog: str = "hamner study") -> int:
    """Run the study the spec names and print its table; 2 on bad input, 130 when interrupted."""
    parser = ArgumentParser(
        prog=prog,
        description="Study: train each arm (a preset, with model overrides and source renames) on the spec's "
        "curriculum, then write report.md and report.json comparing the arms: a length study (the curriculum's "
        "evaluations measure chunk perplexity at multiples of a window W; plots too) at their best checkpoints, "
        "a probe study (the curriculum names a probe) at their last probe, with the knee. Rerunning the same "
        "command skips finished arms and resumes an interrupted one.")
    parser.add_argument("spec", help=f"spec file or shipped name ({', '.join(available_studies())})")
    parser.add_argument("--data", help="directory holding the prepared sources the curriculum names")
    parser.add_argument("--out", help="study directory (default: runs/study-NAME)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    spec = load_study(args.spec)
    out = Path(args.out) if args.out else RUNS_DIR / f"study-{spec.name}"
    table, written = run_study(spec, out, data=args.data)
    print(table)
    print(f"\nwritten: {', '.join(str(p) for p in written)} ({time.perf_counter() - started:.0f}s)")
    return 0
