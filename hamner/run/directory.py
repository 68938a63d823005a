"""The run directory: its layout (the one place its file names are spelled), its text outputs
(config.json, metrics.csv, task_accuracy.csv, evals.csv, samples.jsonl, train.log, and probe.csv for runs
whose curriculum names a probe) and the lock that lets one process at a time use it.

Only rank 0 writes (a RunDir built with `enabled=False` does nothing). Nothing is created on disk
before `open()`, which the trainer calls once a run really starts, so a failed start leaves no
directory behind. `open()` takes an exclusive `flock` on RUN/.lock for the life of the process (the
kernel drops it when the process dies, so a stale lock never blocks) and writes the holder's pid
and host into it, so a second process is refused with a line naming the first.

Logs are appended and flushed line by line, so a kill loses at most the line being written. On
resume, rows past the checkpoint's step (written by the interrupted run after its last checkpoint)
and a torn last line are dropped, each file rewritten through a temporary file, fsync and rename:
a kill during the trim leaves either the old or the new file, never an empty one.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hamner.errors import HamnerError, RunDirError
from hamner.run.durable import replace_atomically

# The layout of a run directory (checkpoints/ holds one directory per checkpoint; see hamner.run.checkpoint).
RUNS_DIR = Path("runs")  # where runs go by default, and where chat looks for the newest one
CONFIG = "config.json"  # the run's settings; each checkpoint holds its own config.json too
METRICS = "metrics.csv"
TASK_ACCURACY = "task_accuracy.csv"
PROBE = "probe.csv"
SAMPLES = "samples.jsonl"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
LATEST = "latest"  # checkpoints/latest: a text file naming the newest complete checkpoint
EVALS = "evals"  # evals/step-N.json per evaluation step, evals/all_summaries.json, evals/metadata.json
EVALS_CSV = "evals.csv"  # every scalar an evaluation reports, one row per step and metric

METRICS_COLUMNS: tuple[str, ...] = (
    "step", "stage", "loss", "val_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "elapsed_s", "bpc",
)
# Columns a run written before they existed lacks (bpc: training bits per byte, when the curriculum reports it).
LATER_METRICS_COLUMNS: tuple[str, ...] = ("bpc",)
TASK_COLUMNS: tuple[str, ...] = ("step", "stage", "task", "difficulty", "accuracy")
EVAL_COLUMNS: tuple[str, ...] = ("step", "stage", "metric", "value")
LOCK = ".lock"
TEMP_SUFFIX = ".tmp"
PROBE_COLUMNS: tuple[str, ...] = ("step", "stage", "kind", "split", "correct", "total", "accuracy")


# A name that becomes one path component: no separator, no leading dot (so never "." or ".."), no leading dash.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def check_name(name: object, what: str, error: type[HamnerError] = RunDirError) -> str:
    """`name` when it can name a file or folder inside another (1-128 letters, digits, `_ . -`, not starting
    with `.` or `-`), else a one-line `error` naming `what`. The one check for every name that becomes a path."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise error(f"{what} must be a name of letters, digits, _ . - (it names a folder or file), got {name!r}")
    return name


def inside(root: Path, relative: str, what: str, error: type[HamnerError] = RunDirError) -> Path:
    """root/relative, refused with a one-line `error` naming `what` when it leads out of `root`
    (an absolute path, `..`, or a symbolic link pointing elsewhere)."""
    root = Path(root)
    target = root / relative
    if not target.resolve().is_relative_to(root.resolve()):
        raise error(f"{what} {relative!r} points outside {root}")
    return target


def lock_directory(path: Path, what: str) -> int:
    """Create `path` if needed and take an exclusive `flock` on PATH/.lock for the life of the process (the
    kernel drops it when the process dies); returns its descriptor. Another live holder is a RunDirError
    naming it (pid, host, since when), which the lock file holds."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(path) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot use {path} as a {what}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 256).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise RunDirError(f"{what} {path} is in use by {holder}; wait for it to finish "
                          "or pick another directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
             .encode())
    return fd


def checkpoints_dir(run_dir: Path) -> Path:
    """RUN/checkpoints: one directory per checkpoint, and the `latest` pointer."""
    return Path(run_dir) / CHECKPOINTS


def latest_pointer(run_dir: Path) -> Path:
    """RUN/checkpoints/latest, the file naming the run's newest complete checkpoint."""
    return checkpoints_dir(run_dir) / LATEST


class CsvLog:
    """An append-only CSV with a fixed header (written with the first row); missing values are empty cells."""

    def __init__(self, path: Path, columns: tuple[str, ...], enabled: bool = True) -> None:
        self.path = Path(path)
        self.columns = columns
        self.enabled = enabled
        self._header_checked = False

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path.name} has no column(s) {sorted(unknown)}")
        if not self._header_checked:
            self._adopt_columns()
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if f.tell() == 0:
                writer.writerow(self.columns)
            writer.writerow(["" if row.get(c) is None else _fmt(row[c]) for c in self.columns])

    def _adopt_columns(self) -> None:
        """A file written by an older Hamner with other columns (a resumed run) is rewritten, durably, under
        today's header, each old value under its own column name, so appended rows line up with the header."""
        self._header_checked = True
        try:
            with open(self.path, newline="") as f:
                text = f.read()
        except FileNotFoundError:
            return
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or tuple(rows[0]) == self.columns:
            return
        old = rows[0]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.columns)
        for values in rows[1:]:
            record = dict(zip(old, values))
            writer.writerow([record.get(c, "") for c in self.columns])
        replace_bytes(self.path, out.getvalue().encode())

    def truncate_after(self, step: int) -> None:
        """Drop rows whose step is greater than `step` (used when resuming from that step)."""
        if self.enabled:
            trim_lines(self.path, lambda line: _csv_step(line) <= step, header_lines=1)


class RunDir:
    """All text outputs of one training run, and its lock."""

    def __init__(self, path: Path, enabled: bool = True, probe: bool = False) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.metrics = CsvLog(self.path / METRICS, METRICS_COLUMNS, enabled)
        self.task_accuracy = CsvLog(self.path / TASK_ACCURACY, TASK_COLUMNS, enabled)
        self.probe = CsvLog(self.path / PROBE, PROBE_COLUMNS, enabled and probe)
        self.evals = CsvLog(self.path / EVALS_CSV, EVAL_COLUMNS, enabled)
        self.samples = self.path / SAMPLES
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directory if needed and lock it until `close()` or the end of the process.

        Raises RunDirError naming the holder when another live process has the lock. Clears the
        temporary files of atomic rewrites (here and one folder down) that a killed process left."""
        if not self.enabled or self._lock_fd is not None:
            return
        fd = lock_directory(self.path, "run directory")
        self._lock_fd = fd
        for leftover in [*self.path.glob(f".*{TEMP_SUFFIX}"), *self.path.glob(f"*/.*{TEMP_SUFFIX}")]:
            leftover.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the lock (the kernel does the same when the process dies)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_config(self, config: dict[str, Any]) -> None:
        """The run's full settings (model, tokenizer, curriculum, CLI) as config.json."""
        if self.enabled:
            replace_bytes(self.path / CONFIG, (json.dumps(config, indent=2, default=str) + "\n").encode())

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG).read_text())

    def log(self, message: str) -> None:
        """One timestamped line in train.log."""
        if self.enabled:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.path / LOG, "a") as f:
                f.write(f"{stamp} {message}\n")

    def add_sample(self, record: dict[str, Any]) -> None:
        """One generated sample (step, stage, prompt, completion) as a line of samples.jsonl."""
        if self.enabled:
            with open(self.samples, "a") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def resume_at(self, step: int) -> None:
        """Forget log rows written after `step` by an interrupted run (metrics, task accuracy, samples)."""
        if not self.enabled:
            return
        self.metrics.truncate_after(step)
        self.task_accuracy.truncate_after(step)
        self.probe.truncate_after(step)
        self.evals.truncate_after(step)
        trim_lines(self.samples, lambda line: _json_step(line) <= step, header_lines=0)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of a CSV that a live process may be appending to: a last line without its
    newline (half written) is left out, and so is a row with more or fewer cells than the header."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").split("\n")[:-1]  # the piece after the last newline is torn
    if not lines:
        return []
    parsed = list(csv.reader(lines))
    header = parsed[0]
    return [dict(zip(header, cells)) for cells in parsed[1:] if len(cells) == len(header)]


def trim_lines(path: Path, keep: Callable[[bytes], bool], header_lines: int) -> bool:
    """Rewrite `path` without the lines after its header that `keep` rejects, and without a last line
    that lacks its newline (torn by a kill). The new file goes to a temporary beside it, is fsync'ed
    and renamed over the old one. A missing, empty or already clean file is left alone. Returns
    whether the file was rewritten."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    *lines, torn = data.split(b"\n")
    kept = lines[:header_lines] + [line for line in lines[header_lines:] if keep(line)]
    if len(kept) == len(lines) and not torn:
        return False
    replace_bytes(path, b"".join(line + b"\n" for line in kept))
    return True


def replace_bytes(path: Path, data: bytes) -> None:
    """Replace `path` by `data` durably (a temporary `.NAME.tmp` beside it, fsync, rename)."""
    replace_atomically(path, [data], temp=path.with_name(f".{path.name}{TEMP_SUFFIX}"))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _csv_step(line: bytes) -> int:
    """The step in the first cell of a CSV row; rows that are not ours count as past every step."""
    try:
        return int(next(csv.reader(io.StringIO(line.decode("utf-8"))))[0])
    except (ValueError, IndexError, StopIteration, UnicodeDecodeError):
        return 1 << 62


def _json_step(line: bytes) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
