"""Getting a trained model ready to use: pick the device, find the run, load model and tokenizer.

Shared by chat.py, `python -m hamner.eval` and `python -m hamner.use.export`, so they all accept the
same paths and report the same one-line errors (as `InferenceError`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from hamner.data.tokenizer import load_tokenizer
from hamner.device import pick_device as resolve_device
from hamner.errors import CheckpointError, DataError, InferenceError
from hamner.run.checkpoint import load_model

RUNS_DIR = Path("runs")


def pick_device(name: str = "auto") -> torch.device:
    """The device `name` names (see `hamner.device.pick_device`); a bad one is an InferenceError."""
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None


def newest_run(root: Path = RUNS_DIR) -> Path:
    """The run directory under `root` whose latest checkpoint was written last."""
    runs = [p for p in root.glob("*") if (p / "checkpoints" / "latest").is_file()] if root.is_dir() else []
    if not runs:
        raise InferenceError(f"no trained run under {root}/; pass a checkpoint (train one with python train.py)")
    return max(runs, key=lambda p: (p / "checkpoints" / "latest").stat().st_mtime)


def load_for_inference(path: str | Path | None, device: torch.device | str = "cpu"):
    """(model in eval mode, config, tokenizer) from a run or checkpoint directory (None: the newest run)."""
    path = Path(path) if path is not None else newest_run()
    try:
        model, config = load_model(path, device=device)
        tokenizer = load_tokenizer(config.tokenizer)
    except (CheckpointError, DataError, OSError) as exc:
        raise InferenceError(str(exc)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise InferenceError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens; "
                             f"the model's vocabulary has only {config.vocab_size}")
    return model.eval(), config, tokenizer
