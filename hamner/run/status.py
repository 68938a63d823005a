"""Where a run stands, read from its directory without touching it (the logic behind `hamner status`).

Everything is read, nothing written or locked: metrics.csv (a torn last line, which a live trainer may
be in the middle of writing, is skipped), the tail of train.log, task_accuracy.csv, probe.csv,
checkpoints/latest and the holder named in RUN/.lock. Whether the holder is alive is read from
/proc/locks (Linux), so a look never takes the lock, not even for an instant; elsewhere a shared
non-blocking `flock` probe stands in.

The run's state:
    running      a live process holds the lock
    finished     train.log's last word is "done: ..." (the curriculum ended, or --max-steps was reached)
    stopped      stopped by a signal after saving ("stopped by SIGTERM at step N; ...")
    failed       ended on an `error: ...` line (non-finite losses, a full disk)
    crashed      no process holds the lock and train.log has no last word (killed, power lost)
    not started  no metrics row yet and no process holds the lock

Stage lengths come from the curriculum, which this room cannot parse (hamner.train can):
callers pass the stages as `StagePlan`s (hamner.train.run_record.stage_plan builds them).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hamner.errors import RunDirError
from hamner.run.directory import CONFIG, LOCK, LOG, METRICS, PROBE, RUNS_DIR, TASK_ACCURACY, latest_pointer, read_rows

LOG_TAIL_BYTES = 256 * 1024  # how much of train.log's end is read: its last words and the newest log lines
TREND_ROWS = 10  # the loss trend compares the mean of the last this-many rows with the this-many before
RATE_ROWS = 20  # steps per second (for the ETAs) over the last this-many rows

_STAGE_END = re.compile(r"stage (\d+) \((.*)\) ended at step (\d+) \((\w+)\)")
_STRIKES = re.compile(r"plateau strikes (\d+)/(\d+) in stage (\d+) at step (\d+)")
_MEMORY = re.compile(r"\| peak mem ([\d.]+) GiB")
_LAST_WORDS = (("done: ", "finished"), ("stopped by ", "stopped"), ("error: ", "failed"))
_BEGINNINGS = ("start: ", "resumed from ")


@dataclass(frozen=True)
class StagePlan:
    """One stage as the curriculum plans it: exactly one of `steps`, `until_step` (an absolute step)
    or `max_steps` (a cap for stages that end on a plateau or early stop); `plateau_strikes` is the
    plateau rule's strike count (None without a rule); `tokens_per_step` the tokens of its first and
    last step (they differ under a seq_len ramp, growing linearly between; None: not known)."""

    name: str
    steps: int | None = None
    until_step: int | None = None
    max_steps: int | None = None
    plateau_strikes: int | None = None
    tokens_per_step: tuple[int, int] | None = None

    def tokens(self, first: int, last: int, length: int) -> float:
        """Planned tokens of stage steps first .. last - 1 of this stage when it is `length` steps long
        (the linear ramp between the ends of `tokens_per_step`, an arithmetic series)."""
        start, end = self.tokens_per_step
        if length <= 1:
            return float((last - first) * end)
        steps = last - first
        return steps * start + (end - start) * (first + last - 1) * steps / 2 / (length - 1)

    def length(self, start: int) -> int:
        """Planned steps of the stage when it starts at global step `start` (the cap for open-ended ones)."""
        if self.steps is not None:
            return self.steps
        if self.until_step is not None:
            return max(0, self.until_step - start)
        return self.max_steps or 0

    @property
    def open_ended(self) -> bool:
        """True when the stage may end before its length (on a plateau or an early stop)."""
        return self.steps is None and self.until_step is None


@dataclass
class RunStatus:
    """Where one run stands; `to_dict()` is what `hamner status --json` prints."""

    run: str
    state: str
    detail: str = ""  # the last word (stop, error) or who holds the lock
    lock_holder: str | None = None  # "pid N on HOST since ..." as RUN/.lock names the last holder
    step: int = 0
    total_steps: int | None = None
    tokens: int | None = None
    elapsed_s: float | None = None
    updated_s: float | None = None  # seconds since metrics.csv last changed
    stage: dict[str, Any] = field(default_factory=dict)
    loss: float | None = None
    loss_trend: float | None = None  # relative change of the mean loss over the last rows (-0.05: 5 % lower)
    val_loss: float | None = None
    val_step: int | None = None
    val_trend: float | None = None  # relative change from the previous validation
    extra_metrics: dict[str, float] = field(default_factory=dict)  # other metrics.csv columns (e.g. val_bpc)
    tokens_per_s: float | None = None
    mfu: float | None = None
    steps_per_s: float | None = None
    eta_stage_s: float | None = None
    eta_run_s: float | None = None
    checkpoint: dict[str, Any] | None = None  # name, step, age_s
    gpu_memory_gib: float | None = None  # peak, as the trainer logged it (CUDA runs)
    task_accuracy: dict[str, Any] | None = None  # step, mean, per task (mean over difficulties)
    probe: dict[str, Any] | None = None  # step, accuracy per split
    evals: dict[str, Any] | None = None  # the newest summary in RUN/evals/, when the run writes them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def newest_runs(root: Path = RUNS_DIR, count: int = 1) -> list[Path]:
    """The `count` run directories under `root` whose metrics or log changed last (newest first)."""
    runs = [p for p in root.iterdir() if (p / CONFIG).is_file()] if root.is_dir() else []
    if not runs:
        raise RunDirError(f"no runs under {root}/; name a run directory")
    return sorted(runs, key=_last_change, reverse=True)[:count]


def read_status(run_dir: Path, stages: list[StagePlan] | None = None, now: float | None = None) -> RunStatus:
    """The status of `run_dir`; `stages` (the curriculum's plan) adds totals, stage progress and ETAs."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG})")
    now = time.time() if now is None else now
    config = _read_json(run_dir / CONFIG) or {}
    rows = read_rows(run_dir / METRICS)
    log = _log_tail(run_dir / LOG)
    holder = _lock_holder(run_dir)
    alive = is_alive(run_dir)
    status = RunStatus(run=str(run_dir), state="running" if alive else "", lock_holder=holder)
    if alive:
        status.detail = f"held by {holder}"
    else:
        status.state, status.detail = _last_word(log, bool(rows))
    _fill_metrics(status, rows, now, run_dir)
    _fill_stage(status, rows, log, stages or [], (config.get("resolved") or {}).get("max_steps"))
    status.checkpoint = _checkpoint(run_dir, now)
    memory = [float(m.group(1)) for m in map(_MEMORY.search, log) if m]
    status.gpu_memory_gib = memory[-1] if memory else None
    status.task_accuracy = _task_accuracy(run_dir / TASK_ACCURACY)
    status.probe = _probe(run_dir / PROBE)
    status.evals = _evals(run_dir / "evals")
    return status


# ----- the pieces -----

def _fill_metrics(status: RunStatus, rows: list[dict[str, str]], now: float, run_dir: Path) -> None:
    if not rows:
        return
    last = rows[-1]
    status.step = int(_num(last, "step") or 0)
    status.tokens = _int(_num(last, "tokens"))
    status.elapsed_s = _num(last, "elapsed_s")
    status.updated_s = max(0.0, now - (run_dir / METRICS).stat().st_mtime)
    status.loss = _num(last, "loss")
    status.tokens_per_s = _num(last, "tokens_per_s")
    status.mfu = _num(last, "mfu")
    losses = [v for v in (_num(r, "loss") for r in rows[-2 * TREND_ROWS:]) if v is not None]
    if len(losses) >= 4:
        half = len(losses) // 2
        old, new = sum(losses[:half]) / half, sum(losses[half:]) / (len(losses) - half)
        status.loss_trend = (new - old) / old if old else None
    vals = [(r, _num(r, "val_loss")) for r in rows if _num(r, "val_loss") is not None]
    if vals:
        status.val_loss, status.val_step = vals[-1][1], _int(_num(vals[-1][0], "step"))
        if len(vals) >= 2 and vals[-2][1]:
            status.val_trend = (vals[-1][1] - vals[-2][1]) / vals[-2][1]
    known = {"step", "stage", "loss", "val_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "elapsed_s"}
    for column in rows[0]:
        if column not in known:
            values = [v for v in (_num(r, column) for r in rows) if v is not None]
            if values:
                status.extra_metrics[column] = values[-1]
    recent = [(s, e) for s, e in ((_num(r, "step"), _num(r, "elapsed_s")) for r in rows[-RATE_ROWS:])
              if s is not None and e is not None]
    if len(recent) >= 2 and recent[-1][1] > recent[0][1]:
        status.steps_per_s = (recent[-1][0] - recent[0][0]) / (recent[-1][1] - recent[0][1])


def _fill_stage(status: RunStatus, rows: list[dict[str, str]], log: list[str], stages: list[StagePlan],
                max_steps: int | None) -> None:
    """Stage name, index, progress, plateau strikes; the run's total steps and the two ETAs."""
    ends = {int(m.group(1)): int(m.group(3)) for m in map(_STAGE_END.search, log) if m}
    names = [s.name for s in stages]
    name = rows[-1]["stage"] if rows else (names[0] if names else None)
    if name is None:
        return
    index = names.index(name) if name in names else None
    if index is not None and ends.get(index) == status.step and index + 1 < len(stages) \
            and status.state == "running":
        index, name = index + 1, names[index + 1]  # the last row closed a stage: the next one runs now
    start = 0
    if index is not None and index > 0:
        start = ends.get(index - 1) or _first_step_of(rows, name)
    elif index is None:
        start = _first_step_of(rows, name)
    stage: dict[str, Any] = {"name": name, "index": index, "count": len(stages) or None, "start_step": start,
                             "step_in_stage": status.step - start}
    if index is not None:
        plan = stages[index]
        length = plan.length(start)
        stage.update(length=length, open_ended=plan.open_ended,
                     progress=min(1.0, (status.step - start) / length) if length else None)
        if plan.plateau_strikes is not None:
            strikes = [m for m in map(_STRIKES.search, log) if m and int(m.group(3)) == index]
            stage["plateau_strikes"] = int(strikes[-1].group(1)) if strikes else 0
            stage["plateau_strikes_to_end"] = plan.plateau_strikes
        ended = ends.get(index)
        if ended is not None and ended <= status.step:
            stage["ended"] = next((m.group(4) for m in map(_STAGE_END.search, reversed(log))
                                   if m and int(m.group(1)) == index), None)
        total = start + length
        for later in stages[index + 1:]:
            total += later.length(total)
        status.total_steps = min(total, max_steps) if max_steps else total
        stage_end = min(start + length, status.total_steps)
        token_rate = _token_rate(rows)
        if status.state == "running" and token_rate and all(p.tokens_per_step for p in stages[index:]):
            # Steps grow along a seq_len ramp: the tokens still planned at the recent token rate.
            status.eta_stage_s = _planned_tokens(stages[index:], start, status.step, stage_end) / token_rate
            status.eta_run_s = _planned_tokens(stages[index:], start, status.step, status.total_steps) / token_rate
        elif status.state == "running" and status.steps_per_s:
            status.eta_stage_s = max(0, stage_end - status.step) / status.steps_per_s
            status.eta_run_s = max(0, status.total_steps - status.step) / status.steps_per_s
    elif max_steps:
        status.total_steps = max_steps
    status.stage = stage


def _planned_tokens(stages: list[StagePlan], start: int, step: int, end: int) -> float:
    """The tokens the steps from global `step` to `end` train on, the first of `stages` having begun at `start`."""
    tokens = 0.0
    for plan in stages:
        length = plan.length(start)
        first, last = max(0, step - start), min(length, end - start)
        if last > first:
            tokens += plan.tokens(first, last, length)
        start += length
    return tokens


def _token_rate(rows: list[dict[str, str]]) -> float | None:
    """Tokens per second of training over the last RATE_ROWS rows (None when they do not tell)."""
    recent = [(t, e) for t, e in ((_num(r, "tokens"), _num(r, "elapsed_s")) for r in rows[-RATE_ROWS:])
              if t is not None and e is not None]
    if len(recent) >= 2 and recent[-1][1] > recent[0][1] and recent[-1][0] > recent[0][0]:
        return (recent[-1][0] - recent[0][0]) / (recent[-1][1] - recent[0][1])
    return None


def _first_step_of(rows: list[dict[str, str]], name: str) -> int:
    """The step before the stage's first row (its start), from the rows alone."""
    previous = 0
    for row in rows:
        if row["stage"] == name:
            return previous
        previous = int(_num(row, "step") or 0)
    return previous


def _last_word(log: list[str], has_rows: bool) -> tuple[str, str]:
    """(state, detail) of a run no process holds, from the last lines train.log has."""
    for line in reversed(log):
        text = line[20:] if len(line) > 20 and line[4] == "-" else line  # without the timestamp
        for prefix, state in _LAST_WORDS:
            if text.startswith(prefix):
                return state, text
        if text.startswith(_BEGINNINGS):
            break  # the last process began and left no last word
    return ("crashed", "no process holds the run and train.log has no last word (killed?)") if has_rows \
        else ("not started", "no metrics yet")


def is_alive(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (is training it now); never takes the lock itself."""
    holder = _lock_holder(Path(run_dir))
    return holder is not None and _lock_held(Path(run_dir) / LOCK, holder)


def _lock_holder(run_dir: Path) -> str | None:
    try:
        text = (run_dir / LOCK).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    return text or None


def _lock_held(lock: Path, holder: str) -> bool:
    """Whether a live process holds the lock, without taking it where /proc/locks can tell."""
    try:
        st = lock.stat()
        table = Path("/proc/locks").read_text()
    except OSError:  # no /proc/locks (not Linux), or the lock file went away
        return _probe_lock(lock)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pid = holder.split()[1] if holder.startswith("pid ") else None
    for line in table.splitlines():
        cells = line.replace("->", "").split()
        if len(cells) >= 6 and cells[1] == "FLOCK" and cells[5].endswith(f":{st.st_ino}") \
                and (cells[5] == device or cells[4] == pid):
            return True
    return False


def _probe_lock(lock: Path) -> bool:
    """The fallback without /proc/locks: a shared non-blocking flock fails while a writer holds it."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock we got
    return False


def _checkpoint(run_dir: Path, now: float) -> dict[str, Any] | None:
    pointer = latest_pointer(run_dir)
    try:
        name = pointer.read_text().strip()
        changed = pointer.stat().st_mtime
    except FileNotFoundError:
        return None
    meta = _read_json(pointer.parent / name / CONFIG) or {}
    return {"name": name, "step": meta.get("step"), "age_s": max(0.0, now - changed)}


def _task_accuracy(path: Path) -> dict[str, Any] | None:
    """The last evaluation of task_accuracy.csv: mean accuracy overall and per task (over difficulties)."""
    rows = read_rows(path)
    if not rows:
        return None
    step = rows[-1]["step"]
    per_task: dict[str, list[float]] = {}
    for row in rows:
        if row["step"] == step and _num(row, "accuracy") is not None:
            per_task.setdefault(row["task"], []).append(_num(row, "accuracy"))
    scores = {task: sum(v) / len(v) for task, v in per_task.items()}
    return {"step": int(step), "mean": sum(scores.values()) / len(scores) if scores else None, "per_task": scores}


def _probe(path: Path) -> dict[str, Any] | None:
    """The last probe of probe.csv: accuracy per split (trained, held-out) over every kind."""
    rows = read_rows(path)
    if not rows:
        return None
    step = rows[-1]["step"]
    counts: dict[str, list[int]] = {}
    for row in rows:
        if row["step"] == step:
            correct, total = counts.setdefault(row["split"], [0, 0])
            counts[row["split"]] = [correct + int(_num(row, "correct") or 0), total + int(_num(row, "total") or 0)]
    return {"step": int(step), "accuracy": {split: c / t if t else None for split, (c, t) in counts.items()}}


def _evals(folder: Path) -> dict[str, Any] | None:
    """The newest JSON summary in RUN/evals/ (when the run writes them): its name and its numbers."""
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    summary = _read_json(files[-1]) if files else None
    if not isinstance(summary, dict):
        return None
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"file": files[-1].name, "values": numbers}


def _log_tail(path: Path) -> list[str]:
    """The complete lines among the last LOG_TAIL_BYTES of train.log."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").split("\n")[:-1]
    return lines[1:] if size > LOG_TAIL_BYTES else lines  # the first may be cut


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _num(row: dict[str, str], key: str) -> float | None:
    try:
        value = float(row.get(key) or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _last_change(run_dir: Path) -> float:
    times = [p.stat().st_mtime for p in (run_dir / METRICS, run_dir / LOG, run_dir / CONFIG) if p.is_file()]
    return max(times, default=0.0)
