"""Checkpoints: weights as safetensors beside the trainer state, written so a crash never breaks `latest`.

Layout of a run directory:

    RUN/checkpoints/<name>/model.safetensors   weights
    RUN/checkpoints/<name>/config.json         model config (with its tokenizer spec), curriculum, step, stage
    RUN/checkpoints/<name>/trainer.pt          optimizer, scaler, controller, sampler, step, every RNG state
    RUN/checkpoints/latest                     text file naming the newest complete checkpoint

Each checkpoint is written to a temporary directory, every file fsync'ed, then renamed into place;
`latest` is rewritten the same way (temp file + fsync + rename), so it always names a complete
checkpoint. Periodic `step-*` checkpoints are pruned to the newest few; stage ends (`stage-N-end`)
and `best` are kept.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hamner.config import HamnerConfig
from hamner.errors import CheckpointError
from hamner.hf import is_hf_dir, load_hf_model
from hamner.model import HamnerModel

FORMAT = "hamner-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER = "trainer.pt"
LATEST = "latest"
BEST = "best"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    """Name of the periodic checkpoint taken after `step` optimizer steps."""
    return f"step-{step:08d}"


def stage_end_name(stage: int) -> str:
    """Name of the checkpoint taken when stage `stage` (0-based) ends."""
    return f"stage-{stage}-end"


def save_checkpoint(run_dir: Path, names: list[str], model: torch.nn.Module, meta: dict[str, Any],
                    trainer_state: dict[str, Any] | None, make_latest: bool = True) -> Path:
    """Write one checkpoint under every name in `names` (the first is the real copy, the others hard
    links), then point `latest` at the first. `meta` goes into config.json (it must hold the model
    config under "model"); `trainer_state` into trainer.pt (None for weights-only checkpoints)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    primary = _write_dir(root, names[0], lambda tmp: _write_files(tmp, model, meta, trainer_state))
    for name in names[1:]:
        _write_dir(root, name, lambda tmp: _link_files(primary, tmp))
    if make_latest:
        _atomic_write_text(root / LATEST, names[0] + "\n")
    return primary


def prune_periodic(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` periodic checkpoints (never the one `latest` names); returns the removed."""
    root = checkpoints_dir(run_dir)
    latest = _read_latest_name(root)
    periodic = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != latest)
    doomed = periodic[: max(0, len(periodic) - keep)] if keep > 0 else periodic
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory that `path` names: a run directory (its latest), a checkpoint
    directory, a Hugging Face Llama directory (one weights file or shards), or a file inside one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if path.is_file():
        path = path.parent
    if is_hf_dir(path) or ((path / CONFIG).is_file() and (path / WEIGHTS).is_file()):
        return path
    root = checkpoints_dir(path)
    if root.is_dir():
        name = _read_latest_name(root)
        if name is None:
            raise CheckpointError(f"run directory {path} has no complete checkpoint (checkpoints/latest is missing)")
        target = root / name
        if not (target / WEIGHTS).is_file():
            raise CheckpointError(f"checkpoint {target} named by {root / LATEST} is missing")
        return target
    raise CheckpointError(f"{path} is neither a Hamner run directory nor a checkpoint directory "
                          f"(expected {WEIGHTS} and {CONFIG}, or checkpoints/latest)")


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    """The checkpoint's config.json, checked to be a Hamner checkpoint."""
    try:
        meta = json.loads((Path(ckpt_dir) / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable {Path(ckpt_dir) / CONFIG}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{ckpt_dir} is not a Hamner checkpoint (config.json lacks format={FORMAT!r})")
    return meta


def load_weights(model: torch.nn.Module, ckpt_dir: Path, device: str | torch.device = "cpu") -> None:
    """Load the checkpoint's weights into `model` (shapes and names must match exactly)."""
    try:
        state = load_file(str(Path(ckpt_dir) / WEIGHTS), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"unreadable weights {Path(ckpt_dir) / WEIGHTS}: {_one_line(exc)}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {ckpt_dir} do not fit the model: {_one_line(exc)}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[HamnerModel, HamnerConfig]:
    """(model, config) from a run directory (its latest checkpoint), a checkpoint directory, or a
    Hugging Face Llama directory (see `hamner.hf`).

    This is the one entry point for reading trained models (chat, eval, export, --init-from): other
    formats are recognised here, before the Hamner layout."""
    if is_hf_dir(path):
        try:
            return load_hf_model(path, device)
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise CheckpointError(f"cannot import Hugging Face directory {path}: {_one_line(exc)}") from None
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    try:
        config = HamnerConfig.from_dict(meta["model"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"model config in {ckpt / CONFIG} is invalid: {_one_line(exc)}") from None
    model = HamnerModel(config)
    load_weights(model, ckpt, device="cpu")
    return model.to(device), config


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    """The trainer state saved beside the weights (our own file: it holds optimizer and RNG objects)."""
    path = Path(ckpt_dir) / TRAINER
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {TRAINER}: it cannot be resumed (weights-only checkpoint)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated pickle raises anything from EOFError to UnpicklingError
        raise CheckpointError(f"unreadable trainer state {path}: {_one_line(exc)}") from None


def _write_files(tmp: Path, model: torch.nn.Module, meta: dict[str, Any],
                 trainer_state: dict[str, Any] | None) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
    (tmp / CONFIG).write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=2) + "\n")
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER)


def _link_files(source: Path, tmp: Path) -> None:
    for item in source.iterdir():
        try:
            os.link(item, tmp / item.name)
        except OSError:
            shutil.copy2(item, tmp / item.name)


def _write_dir(root: Path, name: str, fill) -> Path:
    """Fill a fresh temporary directory, fsync it, then swap it in as root/name."""
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    for item in tmp.iterdir():
        _fsync_file(item)
    _fsync_file(tmp)
    if final.exists():
        old = root / f".old-{name}-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_file(root)
    return final


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_file(path.parent)


def _read_latest_name(root: Path) -> str | None:
    try:
        name = (root / LATEST).read_text().strip()
    except OSError:
        return None
    return name or None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
