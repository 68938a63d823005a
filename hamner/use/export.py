"""Where `hamner export` may write: never into a run or checkpoint directory (its config.json would
replace the one the run resumes from) nor, without --force, into any other non-empty directory; a
GGUF file never into a run or checkpoint directory either, nor over an existing file without --force.

The formats themselves live in `hamner.use.hf` and `hamner.use.gguf_file`; the command around them
in `hamner.commands.export`.
"""
from __future__ import annotations

import json
from pathlib import Path

from hamner.run.checkpoint import TRAINER
from hamner.run.directory import CHECKPOINTS, CONFIG, LATEST, LOG, METRICS

# Files only Hamner writes: a run directory, its checkpoints folder, or one checkpoint.
HAMNER_MARKERS = (CHECKPOINTS, LATEST, TRAINER, METRICS, LOG)


def check_export_target(out_dir: str | Path, force: bool = False) -> None:
    """Refuse to export into a non-empty directory unless `force`, and into a Hamner run or checkpoint
    directory even then. Raises FileExistsError with a one-line message."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if _is_hamner_dir(out):
        raise FileExistsError(f"{out} is a Hamner run or checkpoint directory; exporting there would overwrite "
                              "its files (pick another OUT_DIR)")
    if not force:
        raise FileExistsError(f"{out} is not empty; pass --force to write the export into it")


def check_export_file(out_file: str | Path, force: bool = False) -> None:
    """Refuse to write the one-file export `out_file` over an existing file unless `force`, over a
    directory, or into a Hamner run or checkpoint directory even with `force`. Raises FileExistsError
    with a one-line message."""
    out = Path(out_file)
    if out.is_dir():
        raise FileExistsError(f"{out} is a directory; name the file to write (e.g. {out / 'model.gguf'})")
    if out.parent.is_dir() and _is_hamner_dir(out.parent):
        raise FileExistsError(f"{out.parent} is a Hamner run or checkpoint directory; exporting into it could "
                              "overwrite its files (pick a path outside it)")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")


def _is_hamner_dir(path: Path) -> bool:
    if any((path / marker).exists() for marker in HAMNER_MARKERS):
        return True
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("settings" in config or str(config.get("format", "")).startswith("hamner"))
