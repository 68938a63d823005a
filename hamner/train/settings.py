"""What `python train.py` accepts: the settings, their defaults, their checks, and how they resolve.

`TrainSettings` is the one list of settings: each field carries its flag's help text, group and
metavar in its metadata, and `train.py` builds its argument parser from these fields, so a
setting, its flag and its help cannot drift apart. None means "the preset's, device's or
curriculum's default"; `resolve` fills every such default in and returns a `RunSettings`, whose
fields are concrete (only settings that may truly be absent, such as --resume, stay optional).

The defaults reproduce Hamner V3.1 on one GPU; `--preset demo` swaps in the CPU-sized demo setup.
Resuming reads the settings a run was started with from its config.json and lets only a few
(steps, device, intervals, reporting) change; the curriculum is the copy recorded in the run.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

import torch

from hamner.device import pick_device
from hamner.errors import TrainError
from hamner.model.config import PRESETS
from hamner.run.directory import CONFIG, RUNS_DIR, RunDir
from hamner.train.curriculum.budget import parse_duration
from hamner.train.curriculum.spec import OPTIMIZERS, RECIPE_KEYS, Curriculum, Stage, load_curriculum
from hamner.train.loggers import REPORTERS, missing_packages
from hamner.train.run_record import recorded_curriculum

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Flag groups of `train.py --help`, in order.
WHAT, WHERE, HOW, LOGGING = "what to train", "where", "how", "logging, evaluation, checkpoints"


def setting(default: Any, help_text: str, group: str, metavar: str | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A TrainSettings field with what its command-line flag needs (help text, group, metavar, choices)."""
    metadata = {"help": help_text, "group": group, "metavar": metavar, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainSettings:
    """Everything `python train.py` accepts; None means "the preset's or curriculum's default"."""

    preset: str = setting("v3-50m", f"model preset: {', '.join(PRESETS)}; demo is CPU-sized and byte-level, and "
                          "also picks the demo curriculum and CPU-sized defaults", WHAT)
    model: str | None = setting(None, "model file: HamnerConfig fields (e.g. mixer = \"swa\", window = 64, "
                                "mlp = \"moe\") that override the preset's; see README, Model file", WHAT,
                                metavar="FILE.toml")
    curriculum: str | None = setting(None, "curriculum name from hamner/curricula/ or a path to a .toml file",
                                     WHAT)
    tokenizer: str | None = setting(None, "tokenizer instead of the preset's: a tokenizer.json path or bytes; "
                                    "the model's vocabulary is sized to it (--preset v3-50m --tokenizer bytes: a "
                                    "byte-level model of v3-50m's shape)", WHAT, metavar="SPEC")
    data: str | None = setting(None, "directory holding the prepared shard sources the curriculum names (made "
                               "by hamner prepare); built-in sources need none", WHAT, metavar="DIR")
    stage: int | None = setting(None, "start at stage N (0-based) of the curriculum (default 0)", WHAT, metavar="N")
    init_from: str | None = setting(None, "start from these weights: a run directory, a checkpoint directory, "
                                    "a Hugging Face Llama directory or a Llama-style state-dict file (.pt, .pth, "
                                    ".safetensors; read without running code)", WHAT, metavar="CKPT")
    out: str | None = setting(None, "run directory (default runs/<preset>-<timestamp>)", WHERE, metavar="RUN_DIR")
    resume: str | None = setting(None, "continue an interrupted run in RUN_DIR from its latest checkpoint (model, "
                                 "optimizer, curriculum as recorded in the run, data and RNG state); not with --out",
                                 WHERE, metavar="RUN_DIR")
    device: str = setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", WHERE)
    max_steps: int | None = setting(None, "stop after N optimizer steps in all (default: when the curriculum "
                                    "ends)", HOW, metavar="N")
    batch_size: int | None = setting(None, "rows per micro-batch per process, in every stage (default: the "
                                     "curriculum's, else the preset's)", HOW, metavar="B")
    grad_accum: int | None = setting(None, "micro-batches per optimizer step, in every stage (default: the "
                                     "curriculum's, else 1)", HOW, metavar="K")
    seq_len: int | None = setting(None, "tokens per row, in every stage (default: the curriculum's, else the "
                                  "preset's)", HOW, metavar="T")
    time_budget: str | None = setting(None, "stop at this wall-clock time (e.g. 90m, 3h, 2h30m or seconds), "
                                      "saving a checkpoint as on SIGTERM; a resumed run counts the time it already "
                                      "used; with fit_schedule = true in the curriculum the last stage's decay ends "
                                      "there (default: the curriculum's time_budget, else none)", HOW,
                                      metavar="DURATION")
    lr: float | None = setting(None, "peak learning rate of the first stage; later stages keep their ratio to it "
                               "(default: the curriculum's)", HOW)
    optimizer: str | None = setting(None, "adamw, or muon for the hidden matrices (AdamW for embeddings, norms, "
                                    "the head and MoE experts), in every stage (default: the curriculum's, else "
                                    "adamw)", HOW, choices=OPTIMIZERS)
    dtype: str | None = setting(None, "bf16 autocast (default on GPUs), fp16 with a gradient scaler, or fp32 "
                                "(default on CPU)", HOW, choices=tuple(DTYPES))
    compile: bool = setting(False, "torch.compile the model", HOW)
    seed: int = setting(1337, "seed of model init and data order", HOW)
    threads: int | None = setting(None, "CPU threads for torch (default: torch's choice)", HOW, metavar="N")
    log_interval: int | None = setting(None, "steps between metric lines", LOGGING, metavar="N")
    eval_interval: int | None = setting(None, "steps between validation runs (default: the curriculum's "
                                        "eval_interval)", LOGGING, metavar="N")
    eval_batches: int | None = setting(None, "batches per validation source", LOGGING, metavar="N")
    save_interval: int = setting(1000, "steps between periodic checkpoints", LOGGING, metavar="N")
    keep_checkpoints: int = setting(3, "periodic checkpoints kept; stage ends, latest and best (when the "
                                    "curriculum sets keep_best) are always kept",
                                    LOGGING, metavar="N")
    task_samples: int | None = setting(None, "held-out samples per synthetic task scored at stage ends; 0 = off",
                                       LOGGING, metavar="N")
    sample_tokens: int = setting(64, "tokens generated for each fixed prompt into samples.jsonl at stage ends; "
                                 "0 = off", LOGGING, metavar="N")
    max_bad_steps: int = setting(5, "stop after K non-finite losses in a row; their updates are skipped",
                                 LOGGING, metavar="K")
    report_to: list[str] = setting([], "also report metrics, validation, stage ends and task accuracy to these "
                                   "(the CSV files are always written; each needs its pip extra)", LOGGING,
                                   choices=tuple(REPORTERS))


# The fields `resolve` fills in, with their concrete types in RunSettings; every other field of
# RunSettings keeps its TrainSettings type (None there means really absent, e.g. --resume).
RESOLVED_TYPES: dict[str, Any] = {
    "curriculum": str, "stage": int, "out": str, "batch_size": int, "grad_accum": int, "seq_len": int,
    "lr": float,  # the first stage's peak rate (--lr is folded into the curriculum, see resolve_run)
    "dtype": str, "log_interval": int, "eval_interval": int, "eval_batches": int, "task_samples": int,
    "report_to": tuple[str, ...],
    "time_budget": float | None,  # seconds
}
RunSettings = make_dataclass(
    "RunSettings",
    [(name, RESOLVED_TYPES.get(name, kind)) for name, kind in get_type_hints(TrainSettings).items()],
    frozen=True,
    namespace={"__module__": __name__,
               "__doc__": "TrainSettings of one run with every default resolved (see `resolve`): one field per "
                          "TrainSettings field, in its order, typed as TrainSettings or RESOLVED_TYPES says."},
)


@dataclass(frozen=True)
class Recipe:
    """The shape of one stage's optimizer steps: rows per micro-batch, micro-batches per step, tokens per row."""

    batch_size: int
    grad_accum: int
    seq_len: int


def stage_recipe(s: RunSettings, stage: Stage) -> Recipe:
    """A stage's recipe: its own batch_size / grad_accum / seq_len, else the run's (the command line's, else the
    curriculum's top level, else the preset's; a value given on the command line has cleared the stages')."""
    return Recipe(*(getattr(stage, name) or getattr(s, name) for name in RECIPE_KEYS))


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
# Presets whose setup differs from GPU_DEFAULTS. Presets without a curriculum of their own train the
# built-in sources (any tokenizer, no --data), so `python train.py --preset NAME` runs as it is.
PRESET_DEFAULTS: dict[str, PresetDefaults] = {
    "demo": PresetDefaults(curriculum="demo", batch_size=12, seq_len=128, log_interval=100,
                           eval_batches=2, task_samples=100),
    **{name: replace(GPU_DEFAULTS, curriculum="builtin")
       for name in ("swa-125m", "diffattn-50m", "moe-50m", "agiformer-31m", "ttt-125m")},
    "speedrun": replace(GPU_DEFAULTS, curriculum="speedrun"),  # batch and rows: in the curriculum
    "speedrun-demo": PresetDefaults(curriculum="speedrun-demo", batch_size=16, seq_len=128, log_interval=50,
                                    eval_batches=4, task_samples=0),
    # tiny_gpt's plan: TinyStories (prepared with --tokenizer gpt2), batch 192 x 512 tokens.
    "tinygpt-50m": replace(GPU_DEFAULTS, curriculum="tinygpt-cosine"),  # batch 192 x 512: in the curriculum
}
# Flags that may differ from the original run when resuming it.
RESUMABLE_OVERRIDES = {"max_steps", "device", "compile", "log_interval", "eval_interval", "eval_batches",
                       "save_interval", "keep_checkpoints", "max_bad_steps", "task_samples", "sample_tokens",
                       "threads", "report_to", "time_budget"}


def flag(name: str) -> str:
    """The command-line flag of a TrainSettings field."""
    return "--" + name.replace("_", "-")


def default_text(name: str) -> str | None:
    """How `--help` states a field's default (None when its help text says it, or it has none)."""
    if name in {f.name for f in fields(PresetDefaults)}:
        presets_by_value: dict[Any, list[str]] = {}
        for preset, defaults in PRESET_DEFAULTS.items():
            if getattr(defaults, name) != getattr(GPU_DEFAULTS, name):
                presets_by_value.setdefault(getattr(defaults, name), []).append(preset)
        return f"default {getattr(GPU_DEFAULTS, name)}" + "".join(
            f"; {value} for --preset {', '.join(presets)}" for value, presets in presets_by_value.items())
    default = next(f.default for f in fields(TrainSettings) if f.name == name)
    return None if default in (None, False) or not isinstance(default, (int, float, str)) else f"default {default}"


def preset_curriculum(preset: str) -> str:
    """The curriculum a preset trains when --curriculum is not given."""
    return PRESET_DEFAULTS.get(preset, GPU_DEFAULTS).curriculum


def validate(settings: TrainSettings) -> None:
    """Reject impossible numbers and unavailable reporters before anything is built."""
    for f in fields(TrainSettings):  # a run's config.json edited by hand can hold any JSON value
        value, kind = getattr(settings, f.name), str(f.type)
        numeric = kind.startswith(("int", "float"))
        if numeric and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TrainError(f"{flag(f.name)} must be a number, got {value!r}")
    positive = ("max_steps", "batch_size", "grad_accum", "seq_len", "log_interval", "eval_interval",
                "eval_batches", "save_interval", "max_bad_steps", "threads")
    for name in positive:
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise TrainError(f"{flag(name)} must be at least 1, got {value}")
    for name in ("keep_checkpoints", "task_samples", "sample_tokens", "stage", "seed"):
        value = getattr(settings, name)
        if value is not None and value < 0:
            raise TrainError(f"{flag(name)} must not be negative, got {value}")
    if settings.lr is not None and not (math.isfinite(settings.lr) and settings.lr > 0):
        raise TrainError(f"--lr must be a positive number, got {settings.lr}")
    if settings.optimizer is not None and settings.optimizer not in OPTIMIZERS:
        raise TrainError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings.optimizer!r}")
    if settings.dtype is not None and settings.dtype not in DTYPES:
        raise TrainError(f"--dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
    if settings.out is not None and Path(settings.out).exists() and not Path(settings.out).is_dir():
        raise TrainError(f"--out {settings.out} is a file; the run needs a directory there")
    unknown = [n for n in settings.report_to if n not in REPORTERS]
    if unknown:
        raise TrainError(f"--report-to must name {' or '.join(REPORTERS)}, got {', '.join(unknown)}")
    missing = missing_packages(settings.report_to)
    if missing:
        raise TrainError(f"--report-to {' '.join(settings.report_to)} needs {', '.join(missing)}: "
                         f"pip install {' '.join(missing)}")


def resolve_run(settings: TrainSettings) -> tuple[RunSettings, Curriculum, torch.device]:
    """Check `settings`, pick the device, load the curriculum (with --lr folded into its rates) and
    resolve every default."""
    validate(settings)
    device = pick_device(settings.device)
    curriculum = load_curriculum(settings.curriculum or preset_curriculum(settings.preset))
    if settings.lr is not None:
        curriculum = curriculum.with_first_lr(settings.lr)
    given = {name: getattr(settings, name) for name in RECIPE_KEYS if getattr(settings, name) is not None}
    if given:
        curriculum = curriculum.with_recipe(**given)
    return resolve(settings, device, curriculum), curriculum, device


def resolve(settings: TrainSettings, device: torch.device, curriculum: Curriculum) -> RunSettings:
    """Every default filled in: from the preset, the device (dtype) and the curriculum (LR, eval interval,
    batch size, gradient accumulation, sequence length)."""
    base = PRESET_DEFAULTS.get(settings.preset, GPU_DEFAULTS)
    given = asdict(settings)
    for name in RECIPE_KEYS:
        if given[name] is None:
            given[name] = getattr(curriculum, name)
    given["grad_accum"] = given["grad_accum"] or 1
    filled = {name: getattr(base, name) if given[name] is None else given[name]
              for name in ("curriculum", "batch_size", "seq_len", "log_interval", "eval_batches", "task_samples")}
    return RunSettings(**{
        **given, **filled,
        "stage": settings.stage or 0,
        "out": settings.out or str(RUNS_DIR / f"{settings.preset}-{time.strftime('%Y%m%d-%H%M%S')}"),
        "lr": settings.lr if settings.lr is not None else curriculum.stages[0].lr,
        "dtype": settings.dtype or ("bf16" if device.type == "cuda" else "fp32"),
        "eval_interval": settings.eval_interval or curriculum.eval_interval,
        "report_to": tuple(dict.fromkeys(settings.report_to)),
        "time_budget": time_budget_seconds(settings.time_budget, curriculum),
    })


def time_budget_seconds(given: str | None, curriculum: Curriculum) -> float | None:
    """The run's time budget in seconds: --time-budget, else the curriculum's, else None. A curriculum that
    fits its schedule to the budget needs one."""
    if given is not None:
        try:
            return parse_duration(given)
        except ValueError as exc:
            raise TrainError(f"--time-budget: {exc}") from None
    if curriculum.time_budget is None and curriculum.fit_schedule:
        raise TrainError(f"curriculum {curriculum.name} sets fit_schedule = true, which needs a time budget: "
                         "give --time-budget (e.g. --time-budget 3h) or time_budget in the curriculum")
    return curriculum.time_budget


def resume_settings(run_dir: Path, given: dict[str, Any]) -> TrainSettings:
    """The settings a run was started with (its config.json), with the allowed overrides applied and
    its recorded curriculum copy in place of the curriculum it named."""
    config = run_dir / CONFIG
    if not config.is_file():
        raise TrainError(f"cannot resume {run_dir}: it has no config.json (is it a Hamner run directory?)")
    if given.get("out") is not None:
        raise TrainError(f"cannot resume {run_dir}: --resume continues the run in its own directory, so "
                         "--out must not be given")
    try:
        saved = RunDir(run_dir, enabled=False).read_config()["settings"]
        settings = TrainSettings(**{f.name: saved[f.name] for f in fields(TrainSettings) if f.name in saved})
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainError(f"cannot resume {run_dir}: unreadable config.json ({exc})") from None
    for name, value in given.items():
        if name == "resume":
            continue
        if name not in RESUMABLE_OVERRIDES:
            if value != getattr(settings, name):
                raise TrainError(f"{flag(name)} cannot change when resuming "
                                 f"(the run used {getattr(settings, name)!r})")
            continue
        setattr(settings, name, value)
    copy = recorded_curriculum(run_dir)
    if copy is not None:
        settings.curriculum = str(copy)
    settings.resume = str(run_dir)
    settings.out = str(run_dir)
    return settings
