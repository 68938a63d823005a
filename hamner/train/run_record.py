"""What a run records about itself, so it can be told apart from others and repeated exactly.

config.json gets `environment()`: the git commit of the Hamner checkout that ran and whether it had
uncommitted changes (None outside a git checkout, e.g. an installed package), and the Python, torch,
triton and numba versions. The curriculum file's text is copied to RUN/curriculum/<name>.toml, and
`--resume` trains on that copy, so editing the original between stop and resume changes nothing.
"""
from __future__ import annotations

import json
import platform
import subprocess
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from hamner.errors import CurriculumError
from hamner.model.transformer import HamnerModel
from hamner.run.directory import CONFIG, replace_bytes
from hamner.run.status import RunStatus, StagePlan, read_status
from hamner.train.curriculum.spec import RECIPE_KEYS, Curriculum, Stage, load_curriculum

CURRICULUM_DIR = "curriculum"
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding the hamner package
LIBRARIES = ("torch", "triton", "numba", "numpy")


def new_run_id() -> str:
    """A fresh id for a run (also its W&B run id): 16 lowercase hex digits."""
    return uuid.uuid4().hex[:16]


def git_state(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the git checkout whose top level is `root`."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():  # not ours (e.g. a venv inside some repo)
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def environment() -> dict[str, Any]:
    """Code and library versions of this process, for config.json."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    git = git_state()
    return {"git_commit": git["commit"], "git_dirty": git["dirty"], "python": platform.python_version(),
            **versions}


def fresh_record(run_dir: Path, given: dict[str, Any], resolved: dict[str, Any], curriculum: Curriculum,
                 model: HamnerModel, validation_difficulty: Any, world_size: int, device: str,
                 dtype: str) -> dict[str, Any]:
    """config.json of a fresh run: a new run id, the settings as given and as resolved, the model, the
    curriculum (copied into `run_dir` here), what validation and the hardware were, and `environment()`."""
    return {
        "run_id": new_run_id(),
        "settings": given,
        "resolved": resolved,
        "model": model.config.to_dict(),
        "curriculum": curriculum.name,
        "curriculum_path": str(curriculum.path),
        "curriculum_copy": str(copy_curriculum(run_dir, curriculum.path).relative_to(run_dir)),
        "validation_difficulty": validation_difficulty,
        "parameters": model.num_parameters(),
        "active_parameters": model.num_parameters(active=True),
        "world_size": world_size,
        "device": device,
        "dtype": dtype,
        "environment": environment(),
    }


def copy_curriculum(run_dir: Path, source: Path) -> Path:
    """Write the curriculum file's text into the run directory (atomically); returns the copy's path."""
    folder = Path(run_dir) / CURRICULUM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.toml"):  # a fresh run reusing a directory keeps one copy only
        old.unlink()
    target = folder / Path(source).name
    replace_bytes(target, Path(source).read_bytes())
    return target


def recorded_curriculum(run_dir: Path) -> Path | None:
    """The curriculum copy a run recorded (None for runs from before copies were kept)."""
    copies = sorted((Path(run_dir) / CURRICULUM_DIR).glob("*.toml"))
    return copies[0] if copies else None


def stage_plan(curriculum: Curriculum, record: dict[str, Any] | None = None) -> list[StagePlan]:
    """The curriculum's stages as `hamner.run.status` reads a run against them; with the run's `record`
    (config.json: the settings given and resolved, the world size) also each stage's tokens per step at its
    first and last step, as the trainer's stage recipes make them."""
    given = (record or {}).get("settings") or {}
    resolved = (record or {}).get("resolved") or {}
    overrides = {name: given[name] for name in RECIPE_KEYS if given.get(name) is not None}
    if overrides:  # the command line's recipe, as the trainer applied it
        curriculum = curriculum.with_recipe(**overrides)

    def tokens_per_step(stage: Stage) -> tuple[int, int] | None:
        recipe = {name: getattr(stage, name) or resolved.get(name) for name in RECIPE_KEYS}
        if record is None or not all(isinstance(v, int) for v in recipe.values()):
            return None
        rows = recipe["batch_size"] * recipe["grad_accum"] * int(record.get("world_size") or 1)
        return rows * (stage.seq_len_start or recipe["seq_len"]), rows * recipe["seq_len"]

    return [StagePlan(stage.name, stage.steps, stage.until_step, stage.max_steps,
                      stage.plateau.strikes if stage.plateau else None, tokens_per_step(stage))
            for stage in curriculum.stages]


def run_status(run_dir: Path) -> RunStatus:
    """Where the run in `run_dir` stands, measured against its own curriculum copy and recipe (read-only; see
    hamner.run.status). A run without a readable copy gets a status without stage lengths or ETAs."""
    copy = recorded_curriculum(run_dir)
    try:
        record = json.loads((Path(run_dir) / CONFIG).read_text())
    except (OSError, ValueError):
        record = None
    try:
        stages = stage_plan(load_curriculum(copy), record if isinstance(record, dict) else None) if copy else None
    except CurriculumError:
        stages = None
    return read_status(run_dir, stages)
