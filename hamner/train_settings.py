"""What `python train.py` accepts: the settings, their preset-dependent defaults and their checks.

The defaults reproduce Hamner V3.1 on one GPU; `--preset demo` swaps in the CPU-sized demo setup.
Resuming reads the settings a run was started with from its config.json and lets only a few
(steps, device, intervals) change.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from hamner.curriculum import OPTIMIZERS
from hamner.device import pick_device as resolve_device
from hamner.run_dir import RunDir

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class TrainError(Exception):
    """A bad setting or a run that cannot go on; the message is one line for the user."""


@dataclass
class TrainSettings:
    """Everything `python train.py` accepts; None means "the preset's or curriculum's default"."""

    preset: str = "v3-50m"
    curriculum: str | None = None
    tokenizer: str | None = None
    data: str | None = None
    out: str | None = None
    resume: str | None = None
    stage: int | None = None
    init_from: str | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    seq_len: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    dtype: str | None = None
    compile: bool = False
    device: str = "auto"
    seed: int = 1337
    log_interval: int | None = None
    eval_interval: int | None = None
    eval_batches: int | None = None
    save_interval: int = 1000
    keep_checkpoints: int = 3
    max_bad_steps: int = 5
    task_samples: int | None = None
    sample_tokens: int = 64
    threads: int | None = None


@dataclass(frozen=True)
class PresetDefaults:
    """Defaults that depend on the preset: the GPU setup of Hamner V3.1, or the CPU-sized demo."""

    curriculum: str
    batch_size: int
    seq_len: int
    log_interval: int
    eval_batches: int
    task_samples: int


GPU_DEFAULTS = PresetDefaults(curriculum="hamner-v3.1", batch_size=24, seq_len=1024, log_interval=10,
                              eval_batches=20, task_samples=50)
PRESET_DEFAULTS: dict[str, PresetDefaults] = {
    "demo": PresetDefaults(curriculum="demo", batch_size=12, seq_len=128, log_interval=100,
                           eval_batches=2, task_samples=100),
}
# Flags that may differ from the original run when resuming it.
RESUMABLE_OVERRIDES = {"max_steps", "device", "compile", "log_interval", "eval_interval", "eval_batches",
                       "save_interval", "keep_checkpoints", "max_bad_steps", "task_samples", "sample_tokens",
                       "threads"}


def fill_defaults(settings: TrainSettings) -> TrainSettings:
    """A copy of `settings` with every None filled from the preset's defaults."""
    base = PRESET_DEFAULTS.get(settings.preset, GPU_DEFAULTS)
    out = copy.copy(settings)
    for name in ("curriculum", "batch_size", "seq_len", "log_interval", "eval_batches", "task_samples"):
        if getattr(out, name) is None:
            setattr(out, name, getattr(base, name))
    return out


def pick_device(name: str = "auto") -> torch.device:
    """The device `name` names (see `hamner.device.pick_device`); a bad one is a TrainError."""
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def validate(settings: TrainSettings) -> None:
    """Reject impossible numbers before anything is built."""
    positive = ("max_steps", "batch_size", "grad_accum", "seq_len", "log_interval", "eval_interval",
                "eval_batches", "save_interval", "max_bad_steps", "threads")
    for name in positive:
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("keep_checkpoints", "task_samples", "sample_tokens", "stage"):
        value = getattr(settings, name)
        if value is not None and value < 0:
            raise TrainError(f"--{name.replace('_', '-')} must not be negative, got {value}")
    if settings.lr is not None and not (math.isfinite(settings.lr) and settings.lr > 0):
        raise TrainError(f"--lr must be a positive number, got {settings.lr}")
    if settings.optimizer is not None and settings.optimizer not in OPTIMIZERS:
        raise TrainError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings.optimizer!r}")
    if settings.dtype is not None and settings.dtype not in DTYPES:
        raise TrainError(f"--dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")


def resume_settings(run_dir: Path, given: dict[str, Any]) -> TrainSettings:
    """The settings a run was started with (its config.json), with the allowed overrides applied."""
    config = run_dir / "config.json"
    if not config.is_file():
        raise TrainError(f"cannot resume {run_dir}: it has no config.json (is it a Hamner run directory?)")
    try:
        saved = RunDir(run_dir, enabled=False).read_config()["settings"]
        settings = TrainSettings(**{f.name: saved[f.name] for f in fields(TrainSettings) if f.name in saved})
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainError(f"cannot resume {run_dir}: unreadable config.json ({exc})") from None
    for name, value in given.items():
        if name in ("resume", "out"):
            continue
        if name not in RESUMABLE_OVERRIDES:
            if value != getattr(settings, name):
                raise TrainError(f"--{name.replace('_', '-')} cannot change when resuming "
                                 f"(the run used {getattr(settings, name)!r})")
            continue
        setattr(settings, name, value)
    settings.resume = str(run_dir)
    settings.out = str(run_dir)
    return settings
