"""`hamner status [RUN ...] [--watch [SECONDS]] [--json]`: where runs stand, read without disturbing them.

One panel per run (see `hamner.run.status` for what is read and how): alive or not and who holds the
lock, step and total, stage and its progress, plateau strikes, loss and validation with their trend,
tokens/s and MFU, ETAs to the stage's end and the run's, the last checkpoint and its age, peak GPU
memory, the last task and probe accuracy. Without RUN: every run under runs/ that is training now, or
the newest one. `--watch` redraws in place (with `rich`) until Ctrl-C; `--json` prints the same
fields for scripts (one JSON line per refresh under --watch).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hamner.commands.parsing import ArgumentParser, command
from hamner.run.directory import RUNS_DIR
from hamner.run.status import RunStatus, newest_runs
from hamner.train.run_record import run_status

STATE_STYLES = {"running": "bold green", "finished": "bold blue", "stopped": "bold yellow", "failed": "bold red",
                "crashed": "bold red", "not started": "dim"}
LISTED_RUNS = 20  # how many of the newest runs are looked at for live ones when no RUN is named


@command()
def main(argv: list[str] | None = None, prog: str = "hamner status") -> int:
    """Print (or keep redrawing) the status of the runs the arguments name."""
    parser = ArgumentParser(prog=prog, description="Where training runs stand: state, step, stage, losses, "
                            "speed, ETAs, checkpoint, accuracy. Reading never disturbs a run.")
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                        help=f"run directories (default: the runs under {RUNS_DIR}/ training now, else the newest)")
    parser.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 5) until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print the fields as JSON instead of panels")
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch takes a positive number of seconds")
    if args.watch is None:
        show(args.runs, args.json, Console())
        return 0
    try:
        watch(args.runs, args.json, args.watch)
    except KeyboardInterrupt:
        pass  # the way to leave --watch
    return 0


def statuses(runs: list[Path]) -> list[RunStatus]:
    """The status of each named run; without names, the live runs under runs/ (else the newest one)."""
    if runs:
        return [run_status(run) for run in runs]
    found = [run_status(run) for run in newest_runs(RUNS_DIR, LISTED_RUNS)]
    return [s for s in found if s.state == "running"] or found[:1]


def show(runs: list[Path], as_json: bool, console: Console) -> None:
    """Print the statuses once."""
    found = statuses(runs)
    if as_json:
        print(json.dumps([s.to_dict() for s in found]), flush=True)
    else:
        console.print(render(found))


def watch(runs: list[Path], as_json: bool, seconds: float) -> None:
    """Redraw the statuses every `seconds` until Ctrl-C (JSON: one line per refresh)."""
    if as_json:
        while True:
            show(runs, True, Console())
            time.sleep(seconds)
    with Live(render(statuses(runs)), auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(seconds)
            live.update(render(statuses(runs)), refresh=True)


def render(found: list[RunStatus]) -> Group:
    """One panel per run, and the time of the look."""
    return Group(*(panel(s) for s in found), Text(f"as of {time.strftime('%H:%M:%S')}", style="dim"))


def panel(s: RunStatus) -> Panel:
    """The screen of one run."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    state = Text(s.state, style=STATE_STYLES.get(s.state, ""))
    if s.detail:
        state.append(f"  {s.detail}", style="default")
    grid.add_row("state", state)
    total = f" / {s.total_steps:,} ({s.step / s.total_steps:.0%})" if s.total_steps else ""
    extras = [f"{s.tokens:,} tokens" if s.tokens is not None else None,
              f"{duration(s.elapsed_s)} trained" if s.elapsed_s is not None else None,
              f"last row {duration(s.updated_s)} ago" if s.updated_s is not None else None]
    grid.add_row("step", f"{s.step:,}{total}" + "".join(f" · {e}" for e in extras if e))
    if s.stage:
        grid.add_row("stage", stage_line(s))
    if s.loss is not None:
        loss = Text(f"{s.loss:.4f}") + trend(s.loss_trend)
        if s.val_loss is not None:
            loss += Text(f"   validation {s.val_loss:.4f} (step {s.val_step:,})") + trend(s.val_trend)
        for name, value in s.extra_metrics.items():
            loss += Text(f"   {name} {value:.4g}")
        grid.add_row("loss", loss)
    if s.tokens_per_s is not None:
        mfu = f" · MFU {100 * s.mfu:.1f} %" if s.mfu is not None else ""
        rate = f" · {s.steps_per_s:.2f} steps/s" if s.steps_per_s else ""
        grid.add_row("speed", f"{s.tokens_per_s:,.0f} tokens/s{mfu}{rate}")
    if s.eta_run_s is not None:
        bound = "at most " if s.stage.get("open_ended") else ""
        grid.add_row("ETA", f"stage end {bound}{duration(s.eta_stage_s)} · run end {duration(s.eta_run_s)}")
    if s.checkpoint:
        step = f" (step {s.checkpoint['step']:,})" if s.checkpoint.get("step") is not None else ""
        grid.add_row("checkpoint", f"{s.checkpoint['name']}{step}, {duration(s.checkpoint['age_s'])} ago")
    if s.gpu_memory_gib is not None:
        grid.add_row("GPU memory", f"{s.gpu_memory_gib:.1f} GiB peak")
    if s.task_accuracy and s.task_accuracy["mean"] is not None:
        tasks = ", ".join(f"{t} {a:.0%}" for t, a in sorted(s.task_accuracy["per_task"].items()))
        grid.add_row("tasks", f"{s.task_accuracy['mean']:.0%} mean at step {s.task_accuracy['step']:,} ({tasks})")
    if s.probe:
        splits = " · ".join(f"{split} {a:.0%}" for split, a in s.probe["accuracy"].items() if a is not None)
        grid.add_row("probe", f"{splits} at step {s.probe['step']:,}")
    if s.evals:
        values = ", ".join(f"{k} {v:.4g}" for k, v in list(s.evals["values"].items())[:6])
        grid.add_row("evals", f"{s.evals['file']}: {values}" if values else s.evals["file"])
    return Panel(grid, title=f"[bold]{Path(s.run).name}[/]", subtitle=s.run, subtitle_align="right",
                 border_style=STATE_STYLES.get(s.state, "").replace("bold ", "") or "white")


def stage_line(s: RunStatus) -> Table | str:
    """Stage name, its place, its progress as a bar, and the plateau strikes."""
    st = s.stage
    place = f" ({st['index'] + 1}/{st['count']})" if st.get("index") is not None and st.get("count") else ""
    text = f"{st['name']}{place}"
    if st.get("length"):
        cap = " (cap)" if st.get("open_ended") else ""
        text += f"  step {st['step_in_stage']:,} / {st['length']:,}{cap}"
    if "plateau_strikes" in st:
        text += f"  plateau strikes {st['plateau_strikes']}/{st['plateau_strikes_to_end']}"
    if st.get("ended"):
        text += f"  ended ({st['ended']})"
    if st.get("progress") is None:
        return text
    row = Table.grid(padding=(0, 1))
    row.add_row(ProgressBar(total=1.0, completed=st["progress"], width=20), f"{st['progress']:.0%}", text)
    return row


def trend(change: float | None) -> Text:
    """An arrow and the relative change (green when a loss goes down)."""
    if change is None:
        return Text("")
    arrow, style = ("↓", "green") if change < -0.001 else ("↑", "red") if change > 0.001 else ("→", "dim")
    return Text(f" {arrow} {abs(change):.1%}", style=style)


def duration(seconds: float | None) -> str:
    """3h 05m, 4m 10s, 12s."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"
