"""Tournament specs as data: the TOML format, its checks, and the frozen objects the runner reads.

A spec names the base model (a preset), what "the same size" means (`measure`, `knob`,
`tolerance`), the data (a one-stage mix or a curriculum), the rounds with their token budgets,
the seeds, an optional learning-rate sweep and the entrants (a preset and/or model overrides,
any `HamnerConfig` field). Every problem is a `TournamentError` whose one-line message names
the file and the field. See hamner/tournaments/demo.toml for a commented example.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hamner.errors import HamnerError
from hamner.model.config import PRESETS, HamnerConfig, model_config

TOURNAMENTS_DIR = Path(__file__).resolve().parent.parent / "tournaments"
MEASURES = ("non_embedding", "active", "flops_per_token")
KNOBS = ("intermediate_size", "n_layers")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

_TOP_KEYS = {"name", "description", "base", "model", "baseline", "measure", "knob", "tolerance", "seeds", "batch_size",
             "seq_len", "lr", "warmup", "min_lr_ratio", "evals", "eval_batches", "task_samples", "threads", "device",
             "curriculum", "data", "rounds", "lr_sweep", "entrants"}
_DATA_KEYS = {"weights", "difficulty"}
_ROUND_KEYS = {"tokens", "entrants", "seeds"}
_SWEEP_KEYS = {"factors", "tokens"}
_ENTRANT_KEYS = {"name", "preset", "model", "knob", "resize"}


class TournamentError(HamnerError):
    """A bad spec or a tournament that cannot go on; the message is one line for the user."""


@dataclass(frozen=True)
class Entrant:
    """One contestant: its model before resizing, and whether/how it is resized to the base."""

    name: str
    preset: str
    config: HamnerConfig
    knob: str
    resize: bool


@dataclass(frozen=True)
class Round:
    """One elimination round: how many entrants take part, on how many tokens, with which seeds."""

    tokens: int
    entrants: int
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class LrSweep:
    """Short runs at `factors` x the spec's LR for each finalist before the final round."""

    factors: tuple[float, ...]
    tokens: int


@dataclass(frozen=True)
class TournamentSpec:
    """A whole tournament, every default filled in."""

    name: str
    description: str
    base: HamnerConfig
    base_name: str
    baseline: str  # the entrant other entrants' validation loss is compared with
    measure: str
    tolerance: float
    seeds: tuple[int, ...]
    batch_size: int
    seq_len: int
    lr: float
    warmup: float  # fraction of a run's steps
    min_lr_ratio: float
    evals: int  # validation points per run
    eval_batches: int  # batches per validation
    task_samples: int
    threads: int | None
    device: str
    curriculum: str | None  # a curriculum name or path; None means the one-stage `data` mix
    weights: dict[str, float]
    difficulty: float
    rounds: tuple[Round, ...]
    lr_sweep: LrSweep | None
    entrants: tuple[Entrant, ...]
    path: Path

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def entrant(self, name: str) -> Entrant:
        return next(e for e in self.entrants if e.name == name)


def available_tournaments() -> list[str]:
    """Names of the specs shipped in hamner/tournaments/."""
    return sorted(p.stem for p in TOURNAMENTS_DIR.glob("*.toml"))


def load_spec(name_or_path: str | Path) -> TournamentSpec:
    """Load and check a spec by shipped name (e.g. "demo") or by file path."""
    text = str(name_or_path)
    path = Path(text) if ("/" in text or text.endswith(".toml")) else TOURNAMENTS_DIR / f"{text}.toml"
    if not path.is_file():
        raise TournamentError(f"no tournament spec {text}; shipped: {', '.join(available_tournaments())} "
                              "(or give a path to a .toml file)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TournamentError(f"{path}: not valid TOML: {exc}") from None
    return _parse(raw, path)


class _Table:
    """Typed access to one TOML table; every failure names `where.key`."""

    def __init__(self, table: Any, where: str, allowed: set[str]) -> None:
        if not isinstance(table, dict):
            raise TournamentError(f"{where}: must be a table, got {table!r}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise TournamentError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        self.table, self.where = table, where

    def fail(self, key: str, problem: str) -> TournamentError:
        return TournamentError(f"{self.where}.{key}: {problem}")

    def integer(self, key: str, default: int | None = None, minimum: int = 1) -> int | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, default: float | None, low: float, high: float = math.inf,
               low_open: bool = False) -> float | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or value < low or value > high or (low_open and value == low):
            bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high < math.inf else "")
            raise self.fail(key, f"must be a number {bound}, got {value!r}")
        return float(value)

    def text(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def int_list(self, key: str, default: tuple[int, ...] | None) -> tuple[int, ...] | None:
        value = self.table.get(key, default)
        if value is None or isinstance(value, tuple):
            return value
        if (not isinstance(value, list) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)):
            raise self.fail(key, f"must be a non-empty list of whole numbers >= 0, got {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(key, f"repeats a value: {value}")
        return tuple(value)


def _parse(raw: dict[str, Any], path: Path) -> TournamentSpec:
    where = path.name
    top = _Table(raw, where, _TOP_KEYS)
    for key in ("base", "rounds", "entrants"):
        if key not in raw:
            raise TournamentError(f"{where}: missing required key {key!r}")
    base_name = top.text("base")
    base = apply_overrides(_preset(base_name, f"{where}.base"), raw.get("model", {}), f"{where}.model")
    seeds = top.int_list("seeds", (1337,))
    curriculum = top.text("curriculum")
    if curriculum is None and "data" not in raw:
        raise TournamentError(f"{where}: give a [data] table (one-stage mix) or curriculum = NAME")
    if curriculum is not None and "data" in raw:
        raise TournamentError(f"{where}: give either [data] or curriculum, not both")
    weights, difficulty = _parse_data(raw.get("data"), f"{where}.data") if curriculum is None else ({}, 1.0)
    entrants = _parse_entrants(raw["entrants"], f"{where}.entrants", base, base_name,
                               top.text("knob", "intermediate_size", KNOBS))
    names = [e.name for e in entrants]
    baseline = top.text("baseline", names[0])
    if baseline not in names:
        raise top.fail("baseline", f"names no entrant ({', '.join(names)}), got {baseline!r}")
    rounds = _parse_rounds(raw["rounds"], f"{where}.rounds", len(entrants), seeds)
    return TournamentSpec(
        name=top.text("name", path.stem),
        description=top.text("description") or "",
        base=base, base_name=base_name, baseline=baseline,
        measure=top.text("measure", "non_embedding", MEASURES),
        tolerance=top.number("tolerance", 0.02, 0.0, 1.0, low_open=True),
        seeds=seeds,
        batch_size=top.integer("batch_size", 8),
        seq_len=top.integer("seq_len", min(256, base.max_seq_len)),
        lr=top.number("lr", 3e-3, 0.0, low_open=True),
        warmup=top.number("warmup", 0.02, 0.0, 1.0),
        min_lr_ratio=top.number("min_lr_ratio", 0.1, 0.0, 1.0),
        evals=top.integer("evals", 4),
        eval_batches=top.integer("eval_batches", 4),
        task_samples=top.integer("task_samples", 20, minimum=0),
        threads=top.integer("threads"),
        device=top.text("device", "auto"),
        curriculum=curriculum,
        weights=weights, difficulty=difficulty,
        rounds=rounds,
        lr_sweep=_parse_sweep(raw["lr_sweep"], f"{where}.lr_sweep") if "lr_sweep" in raw else None,
        entrants=entrants,
        path=path,
    )


def _preset(name: str, where: str) -> HamnerConfig:
    if name not in PRESETS:
        raise TournamentError(f"{where}: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return model_config(name)


def _parse_data(table: Any, where: str) -> tuple[dict[str, float], float]:
    t = _Table(table, where, _DATA_KEYS)
    weights = table.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise t.fail("weights", "must be a non-empty table of source = weight")
    w = _Table(weights, f"{where}.weights", set(weights))
    parsed = {name: w.number(name, None, 0.0) for name in weights}
    if sum(parsed.values()) <= 0:
        raise t.fail("weights", "all weights are zero")
    return parsed, t.number("difficulty", 1.0, 1.0, 5.0)


def _parse_rounds(tables: Any, where: str, n_entrants: int, seeds: tuple[int, ...]) -> tuple[Round, ...]:
    if not isinstance(tables, list) or not tables:
        raise TournamentError(f"{where}: must be a non-empty array of [[rounds]] tables")
    rounds: list[Round] = []
    previous = n_entrants
    for i, table in enumerate(tables):
        t = _Table(table, f"{where}[{i}]", _ROUND_KEYS)
        last = i == len(tables) - 1
        default = n_entrants if i == 0 else (min(2, previous) if last else max(1, math.ceil(previous / 2)))
        count = t.integer("entrants", default)
        if count > previous:
            raise t.fail("entrants", f"cannot exceed the {previous} entrants of the round before, got {count}")
        round_seeds = t.int_list("seeds", seeds if last else seeds[:1])
        if "tokens" not in table:
            raise TournamentError(f"{where}[{i}]: missing required key 'tokens'")
        rounds.append(Round(tokens=t.integer("tokens"), entrants=count, seeds=round_seeds))
        previous = count
    return tuple(rounds)


def _parse_sweep(table: Any, where: str) -> LrSweep:
    t = _Table(table, where, _SWEEP_KEYS)
    factors = table.get("factors")
    if (not isinstance(factors, list) or len(factors) < 2
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0 for f in factors)):
        raise t.fail("factors", f"must be a list of at least two positive numbers, got {factors!r}")
    if "tokens" not in table:
        raise TournamentError(f"{where}: missing required key 'tokens'")
    return LrSweep(factors=tuple(sorted(float(f) for f in set(factors))), tokens=t.integer("tokens"))


def _parse_entrants(tables: Any, where: str, base: HamnerConfig, base_name: str, knob: str) -> tuple[Entrant, ...]:
    if not isinstance(tables, list) or not tables:
        raise TournamentError(f"{where}: must be a non-empty array of [[entrants]] tables")
    entrants: list[Entrant] = []
    for i, table in enumerate(tables):
        t = _Table(table, f"{where}[{i}]", _ENTRANT_KEYS)
        name = t.text("name")
        if name is None or not _NAME.match(name):
            raise t.fail("name", f"must be a name of letters, digits, _ . - (it names run directories), got {name!r}")
        if name in (e.name for e in entrants):
            raise t.fail("name", f"{name!r} is used twice")
        preset = t.text("preset", base_name)
        start = _preset(preset, f"{t.where}.preset") if "preset" in table else base
        resize = table.get("resize", True)
        if not isinstance(resize, bool):
            raise t.fail("resize", f"must be true or false, got {resize!r}")
        config = apply_overrides(start, table.get("model", {}), f"{t.where}.model")
        entrants.append(Entrant(name=name, preset=preset, config=config, knob=t.text("knob", knob, KNOBS),
                                resize=resize))
    return tuple(entrants)


def apply_overrides(config: HamnerConfig, overrides: Any, where: str) -> HamnerConfig:
    """`config` with `overrides` (any HamnerConfig fields) applied; a bad field or value names `where.field`."""
    if not isinstance(overrides, dict):
        raise TournamentError(f"{where}: must be a table of model fields, got {overrides!r}")
    known = {f.name for f in dataclasses.fields(HamnerConfig)}
    for key in overrides:
        if key not in known:
            raise TournamentError(f"{where}.{key}: not a model field (fields: {', '.join(sorted(known))})")
    try:
        return dataclasses.replace(config, **overrides)
    except (ValueError, TypeError) as exc:
        raise TournamentError(f"{where}: {exc}") from None
