"""The run directory's text outputs: config.json, metrics.csv, task_accuracy.csv, samples.jsonl, train.log,
and probe.csv for runs whose curriculum names a probe.

Only rank 0 writes (a RunDir built with `enabled=False` does nothing). Files are appended to and
flushed line by line so a crash loses at most the line being written. On resume, rows past the
checkpoint's step (written by the interrupted run after its last checkpoint) are dropped so the
CSVs read as one continuous run.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

METRICS_COLUMNS: tuple[str, ...] = (
    "step", "stage", "loss", "val_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "elapsed_s",
)
TASK_COLUMNS: tuple[str, ...] = ("step", "stage", "task", "difficulty", "accuracy")
PROBE_COLUMNS: tuple[str, ...] = ("step", "stage", "kind", "split", "correct", "total", "accuracy")


class CsvLog:
    """An append-only CSV with a fixed header; missing values are written as empty cells."""

    def __init__(self, path: Path, columns: tuple[str, ...], enabled: bool = True) -> None:
        self.path = Path(path)
        self.columns = columns
        self.enabled = enabled
        if enabled and not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(columns)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path.name} has no column(s) {sorted(unknown)}")
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else _fmt(row[c]) for c in self.columns])

    def truncate_after(self, step: int) -> None:
        """Drop rows whose step is greater than `step` (used when resuming from that step)."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and _step_of(r) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(kept)


class RunDir:
    """All text outputs of one training run."""

    def __init__(self, path: Path, enabled: bool = True, probe: bool = False) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)
        self.metrics = CsvLog(self.path / "metrics.csv", METRICS_COLUMNS, enabled)
        self.task_accuracy = CsvLog(self.path / "task_accuracy.csv", TASK_COLUMNS, enabled)
        self.probe = CsvLog(self.path / "probe.csv", PROBE_COLUMNS, enabled and probe)

    def write_config(self, config: dict[str, Any]) -> None:
        """The run's full settings (model, tokenizer, curriculum, CLI) as config.json."""
        if self.enabled:
            (self.path / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    def log(self, message: str) -> None:
        """One timestamped line in train.log."""
        if self.enabled:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.path / "train.log", "a") as f:
                f.write(f"{stamp} {message}\n")

    def add_sample(self, record: dict[str, Any]) -> None:
        """One generated sample (step, stage, prompt, completion) as a line of samples.jsonl."""
        if self.enabled:
            with open(self.path / "samples.jsonl", "a") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def resume_at(self, step: int) -> None:
        """Forget CSV rows written after `step` by an interrupted run."""
        self.metrics.truncate_after(step)
        self.task_accuracy.truncate_after(step)
        self.probe.truncate_after(step)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _step_of(row: list[str]) -> int:
    try:
        return int(row[0])
    except (ValueError, IndexError):
        return -1
