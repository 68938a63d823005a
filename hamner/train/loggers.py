"""Where a run reports: the CSV files of its run directory, and TensorBoard or Weights & Biases on request.

Every logger gets the same calls: each metrics.csv row, each validation (mean and per source),
each stage end, each table of task accuracies and the scalar metrics of each evaluation step (the CSV
logger writes those to evals.csv). `--report-to tensorboard wandb` adds loggers
beside the CSV one; their packages are optional extras (`pip install -e ".[tensorboard,wandb]"`).
TensorBoard event files go to RUN/tensorboard/; W&B keeps its files under RUN/wandb/ and resumes the
same W&B run when the training run is resumed (its id is the run id recorded in config.json).
Only rank 0 reports.
"""
from __future__ import annotations

import importlib.util
import os
from numbers import Number
from pathlib import Path
from typing import Any

from hamner.errors import HamnerError
from hamner.run.directory import RunDir

# --report-to name -> the package it needs (also the name of its pip extra).
REPORTERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb"}
TENSORBOARD_DIR = "tensorboard"
WANDB_PROJECT = "hamner"  # W&B project unless WANDB_PROJECT says otherwise


class ReportError(HamnerError):
    """A reporter that cannot start (e.g. W&B without a login); the message is one line for the user."""


def missing_packages(names: list[str]) -> list[str]:
    """The packages the named reporters need that are not installed."""
    return [REPORTERS[n] for n in names if n in REPORTERS and importlib.util.find_spec(REPORTERS[n]) is None]


class Logger:
    """One destination for what a run reports; each method does nothing unless overridden."""

    def metrics(self, row: dict[str, Any]) -> None:
        """A metrics.csv row (step, stage, loss, val_loss, lr, grad_norm, tokens, ...; None = empty)."""

    def validation(self, step: int, loss: float, per_source: dict[str, float]) -> None:
        """The mean validation loss and each source's."""

    def stage_end(self, step: int, stage: str, reason: str) -> None:
        """Stage `stage` ended after `step` steps, for `reason` (steps, plateau, early_stop, ...)."""

    def task_accuracy(self, step: int, stage: str, results: dict[str, dict[float, float]]) -> None:
        """Exact-match accuracy: task -> difficulty -> fraction correct."""

    def evaluation(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        """The scalar metrics of one evaluation step (val_loss, val_bpc, length_ppl@1W, task_accuracy, ...)."""

    def close(self) -> None:
        """Flush and let go."""


class CsvLogger(Logger):
    """metrics.csv and task_accuracy.csv of the run directory."""

    def __init__(self, rundir: RunDir) -> None:
        self.rundir = rundir

    def metrics(self, row: dict[str, Any]) -> None:
        self.rundir.metrics.write(row)

    def task_accuracy(self, step: int, stage: str, results: dict[str, dict[float, float]]) -> None:
        for task, by_difficulty in results.items():
            for difficulty, accuracy in by_difficulty.items():
                self.rundir.task_accuracy.write({"step": step, "stage": stage, "task": task,
                                                 "difficulty": difficulty, "accuracy": accuracy})

    def evaluation(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.rundir.evals.write({"step": step, "stage": stage, "metric": name, "value": value})


def _numbers(prefix: str, row: dict[str, Any]) -> dict[str, float]:
    # val_loss is left to validation(), which reports it with each source's loss.
    return {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k not in ("step", "val_loss") and isinstance(v, Number) and not isinstance(v, bool)}


def _accuracies(results: dict[str, dict[float, float]]) -> dict[str, float]:
    return {f"tasks/{task}/difficulty-{d:g}": acc for task, by in results.items() for d, acc in by.items()}


class TensorBoardLogger(Logger):
    """Scalars train/*, val/*, tasks/* and a text entry per stage end in RUN/tensorboard/."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run hides the events the interrupted run wrote after its checkpoint.
        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), flush_secs=30,
                                    purge_step=start_step + 1 if start_step else None)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def metrics(self, row: dict[str, Any]) -> None:
        self._scalars(_numbers("train", row), row["step"])

    def validation(self, step: int, loss: float, per_source: dict[str, float]) -> None:
        self._scalars({"val/loss": loss, **{f"val/{n}": v for n, v in per_source.items()}}, step)

    def stage_end(self, step: int, stage: str, reason: str) -> None:
        self.writer.add_text("stages", f"stage {stage} ended at step {step} ({reason})", step)

    def task_accuracy(self, step: int, stage: str, results: dict[str, dict[float, float]]) -> None:
        self._scalars(_accuracies(results), step)

    def evaluation(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        self._scalars({f"eval/{name}": value for name, value in metrics.items()}, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """A W&B run with the same id as the training run (so --resume continues it); honours WANDB_MODE."""

    def __init__(self, run_dir: Path, run_id: str, config: dict[str, Any]) -> None:
        import wandb

        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), id=run_id,
                                  name=Path(run_dir).name, dir=str(run_dir), config=config, resume="allow",
                                  settings=wandb.Settings(console="off"))
        except wandb.errors.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ReportError(f"--report-to wandb: {first} (or set WANDB_MODE=offline)") from None

    def metrics(self, row: dict[str, Any]) -> None:
        self.run.log(_numbers("train", row), step=row["step"])

    def validation(self, step: int, loss: float, per_source: dict[str, float]) -> None:
        self.run.log({"val/loss": loss, **{f"val/{n}": v for n, v in per_source.items()}}, step=step)

    def stage_end(self, step: int, stage: str, reason: str) -> None:
        self.run.summary[f"stage_end/{stage}"] = {"step": step, "reason": reason}

    def task_accuracy(self, step: int, stage: str, results: dict[str, dict[float, float]]) -> None:
        self.run.log(_accuracies(results), step=step)

    def evaluation(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        self.run.log({f"eval/{name}": value for name, value in metrics.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class Loggers(Logger):
    """Every logger of a run, called in turn."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def metrics(self, row: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.metrics(row)

    def validation(self, step: int, loss: float, per_source: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.validation(step, loss, per_source)

    def stage_end(self, step: int, stage: str, reason: str) -> None:
        for logger in self.loggers:
            logger.stage_end(step, stage, reason)

    def task_accuracy(self, step: int, stage: str, results: dict[str, dict[float, float]]) -> None:
        for logger in self.loggers:
            logger.task_accuracy(step, stage, results)

    def evaluation(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.evaluation(step, stage, metrics)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_loggers(report_to: list[str], rundir: RunDir, start_step: int, run_id: str,
                 config: dict[str, Any]) -> Loggers:
    """The CSV logger plus the named ones (only where `rundir` writes, i.e. on rank 0)."""
    loggers: list[Logger] = [CsvLogger(rundir)]
    if rundir.enabled:
        if "tensorboard" in report_to:
            loggers.append(TensorBoardLogger(rundir.path, start_step))
        if "wandb" in report_to:
            loggers.append(WandbLogger(rundir.path, run_id, config))
    return Loggers(loggers)
