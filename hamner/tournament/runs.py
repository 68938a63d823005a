"""One tournament run: an ordinary Hamner run directory, trained, resumed or skipped, then read back.

The only coupling to the trainer is `train_model`: it calls `hamner.train.trainer.train` with the
entrant's preset and a model file (`write_model_file`) holding the fields that differ from it, so
each run directory resumes by hand too (`python train.py --resume DIR`). A run counts as finished when
it holds `tournament.json` (written atomically after training) or its latest checkpoint has
reached the planned step; one with checkpoints short of that is resumed with `--resume`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hamner.errors import TournamentError
from hamner.model.config import HamnerConfig, model_config
from hamner.run import checkpoint as ckpt
from hamner.run.directory import METRICS, TASK_ACCURACY, checkpoints_dir
from hamner.run.durable import write_text
from hamner.train.settings import TrainSettings

MARKER = "tournament.json"


class Interrupted(Exception):
    """A signal stopped a run; its checkpoint is saved and a rerun resumes it."""


@dataclass(frozen=True)
class RunPlan:
    """What one run trains: model, data (a curriculum file or name), length, LR and seed."""

    directory: Path
    preset: str
    model_file: Path  # the fields of the entrant's config that differ from the preset's
    curriculum: str
    steps: int
    eval_interval: int
    lr: float
    seed: int
    batch_size: int
    seq_len: int
    eval_batches: int
    task_samples: int
    threads: int | None
    device: str


@dataclass
class RunResult:
    """What one finished run's directory says."""

    directory: str
    steps: int
    tokens: int
    lr: float
    seed: int
    val_loss: float  # at the last validation; NaN when the run never validated or diverged
    curve: list[tuple[float, float, float]] = field(default_factory=list)  # (tokens, elapsed_s, val_loss)
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory: int | None = None  # bytes, CUDA only
    skipped_steps: int = 0
    task_accuracy: float | None = None  # mean over tasks and difficulties at the last scoring
    wall_s: float | None = None


def write_model_file(path: Path, config: HamnerConfig, preset: str) -> Path:
    """A TOML model file that turns preset `preset` into `config` (rewritten only when it changes)."""
    base = model_config(preset)
    lines = [f"# {path.stem}: the fields that differ from preset {preset!r}"]
    for f in dataclasses.fields(HamnerConfig):
        value, default = getattr(config, f.name), getattr(base, f.name)
        if value == default:
            continue
        if value is None:
            raise TournamentError(f"{path.stem}: {f.name} cannot be unset from the preset's {default!r} "
                                  "in a model file")
        lines.append(f"{f.name} = {json.dumps(value)}")
    return write_if_changed(path, "\n".join(lines) + "\n")


def train_model(plan: RunPlan, resume: bool) -> str:
    """Train (or resume) the run `plan` describes in-process; returns the trainer's end reason."""
    from hamner.train.trainer import train

    settings = TrainSettings(
        preset=plan.preset, model=str(plan.model_file), curriculum=plan.curriculum, out=str(plan.directory),
        max_steps=plan.steps, batch_size=plan.batch_size, seq_len=plan.seq_len, lr=plan.lr, seed=plan.seed,
        device=plan.device, log_interval=max(1, plan.eval_interval // 2), eval_interval=plan.eval_interval,
        eval_batches=plan.eval_batches, save_interval=plan.eval_interval, keep_checkpoints=1,
        task_samples=plan.task_samples, sample_tokens=0, threads=plan.threads,
        resume=str(plan.directory) if resume else None)
    return train(settings).reason


def checkpoint_step(directory: Path) -> int | None:
    """The step of the run's latest checkpoint, None without one."""
    try:
        return int(ckpt.read_meta(ckpt.resolve_checkpoint(directory))["step"])
    except (ckpt.CheckpointError, KeyError, ValueError, OSError):
        return None


def is_finished(plan: RunPlan) -> bool:
    """Whether the run needs no more training."""
    if (plan.directory / MARKER).is_file():
        return True
    step = checkpoint_step(plan.directory)
    return step is not None and step >= plan.steps


def ensure_run(plan: RunPlan, say: Callable[[str], None] = print) -> RunResult:
    """Train the run unless it is finished (resuming it when interrupted), then read its results."""
    if not is_finished(plan):
        resume = checkpoint_step(plan.directory) is not None
        if not resume:  # killed before its first complete checkpoint: nothing there to keep
            shutil.rmtree(checkpoints_dir(plan.directory), ignore_errors=True)
        say(f"{'resuming' if resume else 'training'} {plan.directory} ({plan.steps} steps, lr {plan.lr:.3g}, "
            f"seed {plan.seed})")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        reason = train_model(plan, resume)
        if reason == "signal":
            raise Interrupted(str(plan.directory))
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        write_text(plan.directory / MARKER, json.dumps(
            {"reason": reason, "peak_memory": peak, "wall_s": time.perf_counter() - started}) + "\n")
    return read_run(plan)


def read_run(plan: RunPlan) -> RunResult:
    """The results of a finished run, from metrics.csv, task_accuracy.csv, the marker and the checkpoint."""
    d = plan.directory
    rows = _rows(d / METRICS)
    curve = [(_num(r["tokens"]), _num(r["elapsed_s"]), _num(r["val_loss"])) for r in rows if r["val_loss"]]
    rates = [_num(r["tokens_per_s"]) for r in rows if r["tokens_per_s"]]
    mfus = [_num(r["mfu"]) for r in rows if r["mfu"]]
    marker = json.loads((d / MARKER).read_text()) if (d / MARKER).is_file() else {}
    diverged = marker.get("reason") == "non_finite"  # stopped by non-finite losses: no result to rank
    try:
        skipped = int(ckpt.load_trainer_state(ckpt.resolve_checkpoint(d)).get("bad_total", 0))
    except ckpt.CheckpointError:
        skipped = 0
    return RunResult(
        directory=str(d), steps=plan.steps, tokens=int(_num(rows[-1]["tokens"])) if rows else 0, lr=plan.lr,
        seed=plan.seed, val_loss=curve[-1][2] if curve and not diverged else math.nan, curve=curve,
        tokens_per_s=sum(rates) / len(rates) if rates else None, mfu=sum(mfus) / len(mfus) if mfus else None,
        peak_memory=marker.get("peak_memory"), skipped_steps=skipped,
        task_accuracy=_final_task_accuracy(d / TASK_ACCURACY), wall_s=marker.get("wall_s"))


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(text: str) -> float:
    return float(text) if text else math.nan


def _final_task_accuracy(path: Path) -> float | None:
    rows = _rows(path)
    if not rows:
        return None
    last = max(int(r["step"]) for r in rows)
    scores = [_num(r["accuracy"]) for r in rows if int(r["step"]) == last]
    return sum(scores) / len(scores)


def write_if_changed(path: Path, text: str) -> Path:
    """`path` holding `text`, written (atomically, with its folder) only when it holds something else."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    return path

