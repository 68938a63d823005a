"""One tournament run: an ordinary Hamner run directory, trained, resumed or skipped, then read back.

The only coupling to the trainer is `train_model`: it calls `hamner.train.trainer.train` with the
entrant's preset and a model file (`write_model_file`) holding the fields that differ from it, so
each run directory resumes by hand too (`python train.py --resume DIR`). A run counts as finished when
it holds `tournament.json` (written atomically after training) or its latest checkpoint has
reached the planned step; one with checkpoints short of that is resumed with `--resume`.

Before a run first trains, it records what it is trained from (`plan.json`: model, data, length, LR,
seed, batch shape); a rerun whose spec gives a run a different plan refuses with a line naming the
entrant and the field, or, told to restart changed runs, trains that run afresh. The report reads only
the JSON and CSV files a run wrote, never a checkpoint's pickled state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hamner.errors import TournamentError
from hamner.model.config import HamnerConfig, model_config
from hamner.run import checkpoint as ckpt
from hamner.run.directory import METRICS, TASK_ACCURACY, checkpoints_dir, read_rows
from hamner.run.durable import write_text
from hamner.train.settings import TrainSettings

if TYPE_CHECKING:
    from hamner.train.trainer import TrainResult

MARKER = "tournament.json"
PLAN = "plan.json"  # what the run was trained from: a rerun compares it with what the spec now asks


class Interrupted(Exception):
    """A signal stopped a run; its checkpoint is saved and a rerun resumes it."""


class StaleRun(TournamentError):
    """A run trained from another version of the spec than the one a rerun gives."""


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
    model: dict = field(default_factory=dict)  # the entrant's whole config after resizing (HamnerConfig.to_dict)
    data: str | None = None  # the directory of the prepared sources (train.py --data); where, not what: not recorded


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


def train_model(plan: RunPlan, resume: bool) -> TrainResult:
    """Train (or resume) the run `plan` describes in-process; returns how it ended."""
    from hamner.train.trainer import train

    settings = TrainSettings(
        preset=plan.preset, model=str(plan.model_file), curriculum=plan.curriculum, out=str(plan.directory),
        data=plan.data, max_steps=plan.steps, batch_size=plan.batch_size, grad_accum=1, seq_len=plan.seq_len,
        lr=plan.lr, seed=plan.seed,
        device=plan.device, log_interval=max(1, plan.eval_interval // 2), eval_interval=plan.eval_interval,
        eval_batches=plan.eval_batches, save_interval=plan.eval_interval, keep_checkpoints=1,
        task_samples=plan.task_samples, sample_tokens=0, threads=plan.threads,
        resume=str(plan.directory) if resume else None)
    return train(settings)


def checkpoint_step(directory: Path) -> int | None:
    """The step of the run's latest checkpoint, None without one."""
    try:
        return int(ckpt.read_meta(ckpt.resume_target(directory)[0])["step"])
    except (ckpt.CheckpointError, KeyError, ValueError, OSError):
        return None


def is_finished(plan: RunPlan) -> bool:
    """Whether the run needs no more training."""
    if (plan.directory / MARKER).is_file():
        return True
    step = checkpoint_step(plan.directory)
    return step is not None and step >= plan.steps


def plan_record(plan: RunPlan) -> dict:
    """The spec fragment a run is trained from, as JSON: model fields, data (the curriculum's name and the
    hash of its file), budget, LR, seed and batch shape. Threads, device and the data directory are left out:
    they change speed or where the sources are found, not what is trained."""
    curriculum = Path(plan.curriculum)
    data = {"curriculum": plan.curriculum if not curriculum.is_file() else curriculum.name,
            "sha256": hashlib.sha256(curriculum.read_bytes()).hexdigest() if curriculum.is_file() else None}
    return {"tokens": plan.steps * plan.batch_size * plan.seq_len, "steps": plan.steps, "model": plan.model,
            "preset": plan.preset, "data": data, "lr": plan.lr, "seed": plan.seed, "batch_size": plan.batch_size,
            "seq_len": plan.seq_len, "eval_interval": plan.eval_interval, "eval_batches": plan.eval_batches,
            "task_samples": plan.task_samples}


def changed_field(recorded: dict, wanted: dict) -> str | None:
    """The first field (dotted, e.g. `model.mixer` or `tokens`) where two plan records differ, in `wanted`'s
    order; None if they are equal."""
    for key in [*wanted, *(k for k in recorded if k not in wanted)]:
        a, b = recorded.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = changed_field(a, b)
            if inner is not None:
                return f"{key}.{inner}"
        elif a != b:
            return key
    return None


def check_plan(plan: RunPlan, entrant: str, restart_changed: bool, say: Callable[[str], None] = print) -> None:
    """Refuse (StaleRun) a run directory trained from another plan than `plan`, naming the entrant and the
    field; with `restart_changed`, clear it so it trains afresh. A directory with checkpoints or results but
    no record (written before runs recorded their plan) counts as changed too."""
    d = plan.directory
    wanted = plan_record(plan)
    try:
        recorded = json.loads((d / PLAN).read_text(encoding="utf-8"))
    except FileNotFoundError:
        recorded = None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        recorded = {}
    if recorded is None and not (d / MARKER).exists() and not checkpoints_dir(d).exists():
        return  # never trained
    if recorded is None:
        field_name = f"its record {PLAN} (the run predates it)"
    else:
        field_name = changed_field(recorded, wanted) if isinstance(recorded, dict) else f"its unreadable {PLAN}"
    if field_name is None:
        return
    if not restart_changed:
        was, now = _lookup(recorded, field_name), _lookup(wanted, field_name)
        detail = f" ({was!r} -> {now!r})" if isinstance(now, (int, float, str)) and was is not None else ""
        raise StaleRun(f"entrant {entrant}: {d} was trained from another spec: {field_name} changed{detail}; "
                       "rerun with --restart-changed to retrain the changed runs, or use another --out")
    say(f"restarting {d}: {field_name} changed since it was trained")
    for item in (MARKER, PLAN, METRICS, TASK_ACCURACY):
        (d / item).unlink(missing_ok=True)
    shutil.rmtree(checkpoints_dir(d), ignore_errors=True)


def _lookup(record: object, dotted: str) -> object:
    for key in dotted.split("."):
        record = record.get(key) if isinstance(record, dict) else None
    return record


def ensure_run(plan: RunPlan, say: Callable[[str], None] = print) -> RunResult:
    """Train the run unless it is finished (resuming it when interrupted), then read its results. The caller
    has checked the run's plan (`check_plan`) and holds the tournament's lock."""
    if not (plan.directory / PLAN).is_file():
        plan.directory.mkdir(parents=True, exist_ok=True)
        write_text(plan.directory / PLAN, json.dumps(plan_record(plan), indent=2) + "\n")
    if not is_finished(plan):
        # Without a complete checkpoint (killed before its first) the trainer starts afresh over what is there;
        # nothing is deleted here, outside the run directory's lock.
        resume = checkpoint_step(plan.directory) is not None
        say(f"{'resuming' if resume else 'training'} {plan.directory} ({plan.steps} steps, lr {plan.lr:.3g}, "
            f"seed {plan.seed})")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = train_model(plan, resume)
        if result.reason == "signal":
            raise Interrupted(str(plan.directory))
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        write_text(plan.directory / MARKER, json.dumps(
            {"reason": result.reason, "peak_memory": peak, "wall_s": time.perf_counter() - started,
             "skipped_steps": result.skipped_steps}) + "\n")
    return read_run(plan)


def read_run(plan: RunPlan) -> RunResult:
    """The results of a finished run, from metrics.csv, task_accuracy.csv, the marker and (for a run without a
    marker) its checkpoint's config.json: JSON and CSV only."""
    d = plan.directory
    rows = read_rows(d / METRICS)
    curve = [(_num(r["tokens"]), _num(r["elapsed_s"]), _num(r["val_loss"])) for r in rows if r["val_loss"]]
    rates = [_num(r["tokens_per_s"]) for r in rows if r["tokens_per_s"]]
    mfus = [_num(r["mfu"]) for r in rows if r["mfu"]]
    marker = json.loads((d / MARKER).read_text()) if (d / MARKER).is_file() else {}
    diverged = marker.get("reason") == "non_finite"  # stopped by non-finite losses: no result to rank
    skipped = marker.get("skipped_steps")
    if skipped is None:  # finished by its checkpoint's step, without a marker: the checkpoint's config.json
        try:
            skipped = ckpt.read_meta(ckpt.resume_target(d)[0]).get("skipped_steps", 0)
        except ckpt.CheckpointError:
            skipped = 0
    return RunResult(
        directory=str(d), steps=plan.steps, tokens=int(_num(rows[-1]["tokens"])) if rows else 0, lr=plan.lr,
        seed=plan.seed, val_loss=curve[-1][2] if curve and not diverged else math.nan, curve=curve,
        tokens_per_s=sum(rates) / len(rates) if rates else None, mfu=sum(mfus) / len(mfus) if mfus else None,
        peak_memory=marker.get("peak_memory"), skipped_steps=int(skipped),
        task_accuracy=_final_task_accuracy(d / TASK_ACCURACY), wall_s=marker.get("wall_s"))


def _num(text: str) -> float:
    return float(text) if text else math.nan


def _final_task_accuracy(path: Path) -> float | None:
    rows = read_rows(path)
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

