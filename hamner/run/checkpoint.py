"""Checkpoints: weights as safetensors beside the trainer state, written so a crash never breaks `latest`.

Layout of a run directory:

    RUN/checkpoints/<name>/model.safetensors   weights
    RUN/checkpoints/<name>/config.json         model config (with its tokenizer spec), curriculum, step, stage
    RUN/checkpoints/<name>/trainer.pt          optimizer, scaler, controller, sampler, step, every RNG state
    RUN/checkpoints/latest                     text file naming the newest complete checkpoint

trainer.pt is read with `torch.load(weights_only=True)`: tensors, numbers, strings and containers, plus
the NumPy array that checkpoints before format 3 held for NumPy's generator, and nothing that runs code,
so a crafted or foreign checkpoint is refused rather than executed when a run is resumed.

Each checkpoint is written to a temporary directory `.tmp-NAME-PID`, every file fsync'ed, then
renamed to its name and the parent fsync'ed; only then is `latest` rewritten (temp file + fsync +
rename), so at every instant it names a complete checkpoint. The checkpoint `latest` names is
never replaced or deleted, and one step is never saved twice. Periodic `step-*` checkpoints are
pruned to the newest few; stage ends (`stage-N-end`) and `best` are kept. Temporaries a killed
process left behind are cleared by `remove_temporaries` when a run (re)opens its directory.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hamner.errors import CheckpointError, one_line
from hamner.model.mixers.attention import Attention
from hamner.run.directory import CHECKPOINTS, CONFIG, LATEST, check_name, checkpoints_dir
from hamner.run.durable import fsync_path, replace_atomically

FORMAT = "hamner-checkpoint"
# 2: the optimizer state of attention's q/k rows is in the parameter's pair order (hamner.model.mixers.attention);
# version 1 held it in rotate-half order, and `upgrade_optimizer_state` converts it on resume.
# 3: trainer.pt holds only tensors and plain values (NumPy's generator state as a tensor, not an ndarray).
VERSION = 3
# The only globals trainer.pt may name besides torch's own: a NumPy array (versions 1 and 2 stored NumPy's
# generator state as one, of uint32). Rebuilding such an array runs no code of the file's choosing.
_SAFE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]
WEIGHTS = "model.safetensors"
TRAINER = "trainer.pt"
BEST = "best"
INITIAL = "initial"  # the untrained model at step 0 (save_initial_checkpoint); never pruned


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
    config under "model" and the step under "step"); `trainer_state` into trainer.pt (None for
    weights-only checkpoints).

    No step is saved twice: when `latest` already names a complete checkpoint of the same step and this
    save is that name or a periodic `step-*` one (a signal landing on a save step or a stage end), that
    checkpoint is returned as it is. The checkpoint `latest`
    names is never replaced. A failed write (a full disk) leaves no temporary behind, keeps every
    earlier checkpoint and `latest`, and raises a one-line CheckpointError."""
    root = checkpoints_dir(run_dir)
    latest = _read_latest_name(root)
    same_step = latest is not None and meta.get("step") is not None and _saved_step(root / latest) == meta["step"]
    if same_step and (names[0] == latest or (trainer_state is not None and names[0].startswith("step-"))):
        return root / latest  # nothing trained since `latest`: a periodic copy of it would be a second save
    try:
        root.mkdir(parents=True, exist_ok=True)
        primary = _write_dir(root, names[0], latest, lambda tmp: _write_files(tmp, model, meta, trainer_state))
        for name in names[1:]:
            _write_dir(root, name, latest, lambda tmp: _link_files(primary, tmp))
        if make_latest:
            replace_atomically(root / LATEST, [(names[0] + "\n").encode()],
                               temp=root / f".tmp-{LATEST}-{os.getpid()}")
    except (OSError, SafetensorError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        kept = f"the last good checkpoint ({latest}) is kept" if latest else "no earlier checkpoint exists"
        raise CheckpointError(f"cannot write checkpoint {names[0]} in {root}: {_reason(exc, root)}; {kept}") from None
    return primary


def prune_periodic(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` periodic checkpoints (never the one `latest` names); returns the removed.

    Each is first renamed to a `.del-*` temporary, so a crash never leaves a half-deleted checkpoint
    under a real name."""
    root = checkpoints_dir(run_dir)
    latest = _read_latest_name(root)
    periodic = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != latest)
    doomed = periodic[: max(0, len(periodic) - keep)] if keep > 0 else periodic
    for path in doomed:
        trash = root / f".del-{path.name}-{os.getpid()}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def has_complete_checkpoint(run_dir: Path) -> bool:
    """True when the run directory holds any checkpoint that can be resumed (the one `latest` names or another)."""
    root = checkpoints_dir(run_dir)
    return root.is_dir() and any(_saved_step(path) is not None for path in root.iterdir() if _is_checkpoint(path))


def resume_target(run_dir: Path) -> tuple[Path, str | None]:
    """The checkpoint a resume of `run_dir` starts from, and a one-line note when it is not the one
    `latest` names: when that one is damaged (missing, partial, unreadable, or `latest` empty or naming
    something outside the run), the newest complete checkpoint is used and the note says which and why."""
    root = checkpoints_dir(run_dir)
    damage = _latest_damage(root)
    if damage is None:
        return root / _read_latest_name(root), None
    complete = [(step, path) for path in root.iterdir() if _is_checkpoint(path)
                and (step := _saved_step(path)) is not None] if root.is_dir() else []
    if not complete:
        raise CheckpointError(f"{run_dir} holds no complete checkpoint ({damage})")
    step, path = max(complete, key=lambda item: (item[0], item[1].name.startswith("step-")))
    return path, f"{damage}; resuming from the newest complete checkpoint {path.name} (step {step})"


def repoint_latest(run_dir: Path, name: str) -> None:
    """Point `latest` at checkpoint `name` durably: a resume that fell back past a damaged checkpoint moves
    `latest` to where it resumed from, so later saves may replace the damaged one."""
    root = checkpoints_dir(run_dir)
    replace_atomically(root / LATEST, [(check_name(name, "checkpoint", CheckpointError) + "\n").encode()],
                       temp=root / f".tmp-{LATEST}-{os.getpid()}")


def remove_temporaries(run_dir: Path) -> list[str]:
    """Clear what killed processes left in RUN/checkpoints; returns the names handled.

    `.tmp-*` (unfinished writes) and `.del-*` (half-pruned checkpoints) are removed. An `.old-NAME-*`
    is a complete checkpoint that was being replaced: it is renamed back to NAME when NAME is
    missing, and removed otherwise. Only the process holding the run directory's lock may call this."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    handled = []
    for item in sorted(root.iterdir()):
        if not item.name.startswith((".tmp-", ".old-", ".del-")):
            continue
        handled.append(item.name)
        if item.name.startswith(".old-"):
            name = item.name.removeprefix(".old-").rsplit("-", 1)[0]
            if not (root / name).exists():
                os.rename(item, root / name)
                continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    if handled:
        fsync_path(root)
    return handled


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory that `path` names: a run directory (the checkpoint its `latest` names), a
    checkpoint directory, or a file inside one. (`hamner.use.load` also reads Hugging Face directories.)"""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if path.is_file():
        path = path.parent
    if (path / CONFIG).is_file() and (path / WEIGHTS).is_file():
        return path
    root = checkpoints_dir(path)
    if root.is_dir():
        name = _read_latest_name(root)
        if name is None:
            raise CheckpointError(f"run directory {path} has no complete checkpoint ({_latest_damage(root)})")
        target = root / name
        if not (target / WEIGHTS).is_file():
            raise CheckpointError(f"checkpoint {target} named by {root / LATEST} is missing")
        return target
    raise CheckpointError(f"{path} is neither a Hamner run directory nor a checkpoint directory "
                          f"(expected {WEIGHTS} and {CONFIG}, or {CHECKPOINTS}/{LATEST})")


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
        raise CheckpointError(f"unreadable weights {Path(ckpt_dir) / WEIGHTS}: {one_line(exc)}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"it lacks tensor {missing[0]}" if missing else f"it holds an unknown tensor {unexpected[0]}"
        more = len(missing) + len(unexpected) - 1
        raise CheckpointError(f"weights in {ckpt_dir} do not fit the model: {what}"
                              + (f" (and {more} more differences)" if more else ""))
    for name, wanted in expected.items():  # the model's order: the first layer that differs is named
        if state[name].shape != wanted.shape:
            raise CheckpointError(f"weights in {ckpt_dir} do not fit the model: tensor {name} has shape "
                                  f"{tuple(state[name].shape)} in the checkpoint but {tuple(wanted.shape)} "
                                  "in the model")
    model.load_state_dict(state, strict=True)


def upgrade_optimizer_state(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], version: int) -> None:
    """Bring optimizer state restored from a checkpoint of format `version` to this one's layout:
    before version 2, attention's q/k rows were held (and their moments saved) in rotate-half order."""
    if version >= 2:
        return
    for module in model.modules():
        if isinstance(module, Attention):
            weight = module.qkv.weight
            for optimizer in optimizers:
                for value in optimizer.state.get(weight, {}).values():
                    if torch.is_tensor(value) and value.shape == weight.shape:
                        value.copy_(module.to_pair_order(value))


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    """The trainer state saved beside the weights, read without running any code it might hold: a file
    naming anything beyond tensors, plain values and NumPy arrays is refused with a one-line CheckpointError."""
    path = Path(ckpt_dir) / TRAINER
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {TRAINER}: it cannot be resumed (weights-only checkpoint)")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "Unsupported operand" in str(exc):
            raise CheckpointError(f"refusing {path}: it asks to run code (a crafted or foreign file, not a Hamner "
                                  "checkpoint); nothing in it was run") from None
        raise CheckpointError(f"unreadable trainer state {path}: {one_line(exc)}") from None
    except Exception as exc:  # a truncated file raises anything from EOFError to RuntimeError
        raise CheckpointError(f"unreadable trainer state {path}: {one_line(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"unreadable trainer state {path}: it holds a {type(state).__name__}, not a table")
    return state


def _write_files(tmp: Path, model: torch.nn.Module, meta: dict[str, Any],
                 trainer_state: dict[str, Any] | None) -> None:
    """The checkpoint's files, each fsync'ed as soon as it is written."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
    fsync_path(tmp / WEIGHTS)
    (tmp / CONFIG).write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=2) + "\n")
    fsync_path(tmp / CONFIG)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER)
        fsync_path(tmp / TRAINER)


def _link_files(source: Path, tmp: Path) -> None:
    for item in source.iterdir():
        try:
            os.link(item, tmp / item.name)
        except OSError:
            shutil.copy2(item, tmp / item.name)
            fsync_path(tmp / item.name)


def _write_dir(root: Path, name: str, latest: str | None, fill: Callable[[Path], None]) -> Path:
    """Fill a fresh temporary directory, fsync it, then rename it to root/name.

    An existing root/name (never the one `latest` names) is first moved to `.old-NAME-PID` and
    removed once the new one is in place; `remove_temporaries` renames it back after a crash
    between the two renames."""
    final = root / name
    if name == latest and final.exists():
        raise CheckpointError(f"refusing to replace {final}: {root / LATEST} names it and it holds step "
                              f"{_saved_step(final)}, not this save's step")
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        fsync_path(tmp)
        if final.exists():
            old = root / f".old-{name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            fsync_path(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
            fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _saved_step(ckpt_dir: Path) -> int | None:
    """The step a complete, resumable checkpoint directory records; None when it is missing or partial."""
    if not all((ckpt_dir / f).is_file() for f in (WEIGHTS, CONFIG, TRAINER)):
        return None
    try:
        step = json.loads((ckpt_dir / CONFIG).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _read_latest_name(root: Path) -> str | None:
    """The name `latest` holds; None when it is missing, empty or not a plain name inside root."""
    try:
        name = (root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return check_name(name, "checkpoints/latest", CheckpointError)
    except CheckpointError:
        return None


def _latest_damage(root: Path) -> str | None:
    """Why the checkpoint `latest` names cannot be resumed, in a few words; None when it can."""
    try:
        text = (root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return f"{root / LATEST} is missing or unreadable"
    name = _read_latest_name(root)
    if name is None:
        return f"{root / LATEST} is empty" if not text else f"{root / LATEST} names {text!r}, not a checkpoint here"
    if not (root / name).is_dir():
        return f"{root / LATEST} names {name}, which does not exist"
    missing = [f for f in (WEIGHTS, CONFIG, TRAINER) if not (root / name / f).is_file()]
    if missing:
        return f"checkpoint {name} that {root / LATEST} names lacks {', '.join(missing)}"
    if _saved_step(root / name) is None:
        return f"checkpoint {name} that {root / LATEST} names has an unreadable {CONFIG}"
    return None


def _is_checkpoint(path: Path) -> bool:
    """A checkpoint directory under its real name (not a temporary, not `latest`)."""
    return path.is_dir() and not path.is_symlink() and not path.name.startswith(".")


def _reason(exc: BaseException, root: Path) -> str:
    """Why a write failed, in a few words ("No space left on device" rather than a Rust debug dump, or
    torch's `[enforce fail at inline_container.cc]`, which says neither what failed nor why)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    for errno_name in ("No space left on device", "Disk quota exceeded", "Permission denied",
                       "Read-only file system"):
        if errno_name in text:
            return errno_name
    if "enforce fail" in text or "PytorchStreamWriter" in text:
        try:
            free = shutil.disk_usage(root).free
        except OSError:
            return "writing trainer.pt failed"
        return f"writing trainer.pt failed with {free:,} bytes free on its disk" + (
            " (No space left on device)" if free < 1 << 20 else "")
    return one_line(exc)

