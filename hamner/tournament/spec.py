"""Tournament specs as data: the TOML format, its checks, and the frozen objects the runner reads.

A spec names the base model (a preset), what "the same size" means (`measure`, `knob`,
`tolerance`), the data (a one-stage mix or a curriculum), the rounds with their token budgets,
the seeds, an optional learning-rate sweep and the entrants (a preset and/or model overrides,
any `HamnerConfig` field, and optionally a curriculum of their own, which must draw the same
data as every other entrant's: see hamner.tournament.fitting). Every problem is a `TournamentError`
whose one-line message names the file and the field. See hamner/tournaments/demo.toml for a
commented example, and hamner/tournaments/plasticity-demo.toml for entrants with curricula of their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hamner.data.mixture import is_builtin_source
from hamner.errors import HamnerError, TournamentError
from hamner.model.config import PRESETS, HamnerConfig, model_config, with_fields
from hamner.run.directory import check_name
from hamner.toml_table import TomlTable, read_toml
from hamner.tournament.fitting import data_plan, fittable, mix_plan
from hamner.train.curriculum.spec import Curriculum, load_curriculum

TOURNAMENTS_DIR = Path(__file__).resolve().parent.parent / "tournaments"
MEASURES = ("non_embedding", "active", "flops_per_token")
KNOBS = ("intermediate_size", "n_layers")

_TOP_KEYS = {"name", "description", "base", "model", "baseline", "measure", "knob", "tolerance", "seeds", "batch_size",
             "seq_len", "lr", "warmup", "min_lr_ratio", "evals", "eval_batches", "task_samples", "threads", "device",
             "curriculum", "data", "rounds", "lr_sweep", "entrants"}
_DATA_KEYS = {"weights", "difficulty"}
_ROUND_KEYS = {"tokens", "entrants", "seeds"}
_SWEEP_KEYS = {"factors", "tokens"}
_ENTRANT_KEYS = {"name", "preset", "model", "knob", "resize", "curriculum"}


@dataclass(frozen=True)
class Entrant:
    """One contestant: its model before resizing, and whether/how it is resized to the base."""

    name: str
    preset: str
    config: HamnerConfig
    knob: str
    resize: bool
    curriculum: str | None = None  # a curriculum name or path (its own, else the spec's); None: the `data` mix


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
    data_sources: tuple[str, ...] = ()  # prepared shard sources the runs read (under `hamner tournament --data`)

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
    return _parse(read_toml(path, str(path), TournamentError), path)


def _parse(raw: dict[str, Any], path: Path) -> TournamentSpec:
    where = path.name
    top = TomlTable(raw, where, _TOP_KEYS, TournamentError)
    top.required("base", "rounds", "entrants")
    base_name = top.text("base")
    base = with_fields(_preset(base_name, f"{where}.base"), raw.get("model", {}), f"{where}.model", TournamentError)
    seeds = top.int_list("seeds", (1337,))
    curriculum = top.text("curriculum")
    loaded = {curriculum: _check_curriculum(curriculum, f"{where}.curriculum")} if curriculum is not None else {}
    if curriculum is not None and "data" in raw:
        raise TournamentError(f"{where}: give either [data] or curriculum, not both")
    weights, difficulty = _parse_data(raw["data"], f"{where}.data") if "data" in raw else ({}, 1.0)
    entrants = _parse_entrants(raw["entrants"], f"{where}.entrants", base, base_name,
                               top.text("knob", "intermediate_size", KNOBS), curriculum, loaded)
    if "data" not in raw and any(e.curriculum is None for e in entrants):
        raise TournamentError(f"{where}: give a [data] table (one-stage mix) or curriculum = NAME")
    sources = _same_data(entrants, loaded, weights, difficulty, f"{where}.entrants")
    names = [e.name for e in entrants]
    baseline = top.text("baseline", names[0])
    if baseline not in names:
        raise top.fail("baseline", f"names no entrant ({', '.join(names)}), got {baseline!r}")
    rounds = _parse_rounds(raw["rounds"], f"{where}.rounds", len(entrants), seeds)
    seq_len = top.integer("seq_len", min(256, base.max_seq_len), minimum=1)
    for i, e in enumerate(entrants):  # found here, not when its first run starts training
        if e.config.max_seq_len < seq_len:
            raise TournamentError(f"{where}.entrants[{i}] ({e.name}): max_seq_len {e.config.max_seq_len} is below "
                                  f"the tournament's seq_len {seq_len}")
    return TournamentSpec(
        name=check_name(top.text("name", path.stem), f"{where}.name", TournamentError),
        description=top.text("description") or "",
        base=base, base_name=base_name, baseline=baseline,
        measure=top.text("measure", "non_embedding", MEASURES),
        tolerance=top.number("tolerance", 0.02, 0.0, 1.0, low_open=True),
        seeds=seeds,
        batch_size=top.integer("batch_size", 8, minimum=1),
        seq_len=seq_len,
        lr=top.number("lr", 3e-3, 0.0, low_open=True),
        warmup=top.number("warmup", 0.02, 0.0, 1.0),
        min_lr_ratio=top.number("min_lr_ratio", 0.1, 0.0, 1.0),
        evals=top.integer("evals", 4, minimum=1),
        eval_batches=top.integer("eval_batches", 4, minimum=1),
        task_samples=top.integer("task_samples", 20),
        threads=top.integer("threads", minimum=1),
        device=top.text("device", "auto"),
        curriculum=curriculum,
        weights=weights, difficulty=difficulty,
        rounds=rounds,
        lr_sweep=_parse_sweep(raw["lr_sweep"], f"{where}.lr_sweep") if "lr_sweep" in raw else None,
        entrants=entrants,
        path=path,
        data_sources=tuple(s for s in sources if not is_builtin_source(s)),
    )


def _check_curriculum(name: str, where: str) -> Curriculum:
    """The curriculum `name`, refused when the spec loads if its runs could not train it: one that does not
    load, one that continues a trained model (`requires_init`), which a tournament run, trained from scratch,
    cannot give, or one that cannot be fitted to a round's token budget (see `fitting.fittable`)."""
    try:
        curriculum = load_curriculum(name)
        fittable(curriculum)
    except HamnerError as exc:
        raise TournamentError(f"{where}: {exc}") from None
    if curriculum.requires_init:
        raise TournamentError(f"{where}: curriculum {curriculum.name!r} continues a trained model (requires_init), "
                              "but tournament runs train from scratch; use a curriculum that starts one")
    return curriculum


def _same_data(entrants: tuple[Entrant, ...], loaded: dict[str, Curriculum], weights: dict[str, float],
               difficulty: float, where: str) -> list[str]:
    """Refuse entrants whose curricula would draw other batches than the first entrant's (other stage ends,
    mixes, difficulties, packing or loss masks; learning rates and model knobs may differ); the sources
    they read."""
    plans = [data_plan(loaded[e.curriculum]) if e.curriculum is not None else mix_plan(weights, difficulty)
             for e in entrants]
    first = entrants[0]
    for i, (entrant, plan) in enumerate(zip(entrants, plans)):
        difference = _first_difference(plans[0], plan)
        if difference is not None:
            raise TournamentError(
                f"{where}[{i}] ({entrant.name}).curriculum: {_data_name(entrant)} draws other data than "
                f"{_data_name(first)} of entrant {first.name} ({difference} differ); every entrant of a round "
                "trains on the same batches, so their curricula may differ in learning rates and model knobs only")
    return sorted({s for plan in plans for stage in plan["stages"] for s, w in stage["weights"].items() if w > 0})


def _data_name(entrant: Entrant) -> str:
    return f"curriculum {entrant.curriculum!r}" if entrant.curriculum is not None else "the [data] mix"


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first place (e.g. `stages[1].weights`) where two data plans differ, None if they are equal: a plan
    and its stages are compared part by part, anything else whole."""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a):
        parts = [(f"{path}[{i}]", x, y) for i, (x, y) in enumerate(zip(a, b))]
    elif isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and (not path or path.endswith("]")):
        parts = [(f"{path}.{k}" if path else k, a[k], b[k]) for k in a]
    else:
        return None if a == b else path
    return next((d for p, x, y in parts if (d := _first_difference(x, y, p)) is not None), None)


def _preset(name: str, where: str) -> HamnerConfig:
    if name not in PRESETS:
        raise TournamentError(f"{where}: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return model_config(name)


def _parse_data(table: Any, where: str) -> tuple[dict[str, float], float]:
    t = TomlTable(table, where, _DATA_KEYS, TournamentError)
    weights = table.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise t.fail("weights", "must be a non-empty table of source = weight")
    w = TomlTable(weights, f"{where}.weights", None, TournamentError)
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
        t = TomlTable(table, f"{where}[{i}]", _ROUND_KEYS, TournamentError)
        last = i == len(tables) - 1
        default = n_entrants if i == 0 else (min(2, previous) if last else max(1, math.ceil(previous / 2)))
        count = t.integer("entrants", default, minimum=1)
        if count > previous:
            raise t.fail("entrants", f"cannot exceed the {previous} entrants of the round before, got {count}")
        round_seeds = t.int_list("seeds", seeds if last else seeds[:1])
        t.required("tokens")
        rounds.append(Round(tokens=t.integer("tokens", minimum=1), entrants=count, seeds=round_seeds))
        previous = count
    return tuple(rounds)


def _parse_sweep(table: Any, where: str) -> LrSweep:
    t = TomlTable(table, where, _SWEEP_KEYS, TournamentError)
    factors = table.get("factors")
    if (not isinstance(factors, list) or len(factors) < 2
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < math.inf for f in factors)):
        raise t.fail("factors", f"must be a list of at least two positive, finite numbers, got {factors!r}")
    t.required("tokens")
    return LrSweep(factors=tuple(sorted(float(f) for f in set(factors))), tokens=t.integer("tokens", minimum=1))


def _parse_entrants(tables: Any, where: str, base: HamnerConfig, base_name: str, knob: str, curriculum: str | None,
                    loaded: dict[str, Curriculum]) -> tuple[Entrant, ...]:
    """The [[entrants]] tables; each entrant's own curriculum is checked and added to `loaded`."""
    if not isinstance(tables, list) or not tables:
        raise TournamentError(f"{where}: must be a non-empty array of [[entrants]] tables")
    entrants: list[Entrant] = []
    for i, table in enumerate(tables):
        t = TomlTable(table, f"{where}[{i}]", _ENTRANT_KEYS, TournamentError)
        name = t.text("name")
        check_name(name, f"{t.where}.name", TournamentError)
        if name in (e.name for e in entrants):
            raise t.fail("name", f"{name!r} is used twice")
        preset = t.text("preset", base_name)
        start = _preset(preset, f"{t.where}.preset") if "preset" in table else base
        config = with_fields(start, table.get("model", {}), f"{t.where}.model", TournamentError)
        own = t.text("curriculum")
        if own is not None and own not in loaded:
            loaded[own] = _check_curriculum(own, f"{t.where} ({name}).curriculum")
        entrants.append(Entrant(name=name, preset=preset, config=config, knob=t.text("knob", knob, KNOBS),
                                resize=t.flag("resize", True), curriculum=own or curriculum))
    return tuple(entrants)


def check_data(spec: TournamentSpec, data: str | None) -> None:
    """Refuse, before anything trains, a spec whose prepared sources `data` (`--data DIR`, the directory
    `hamner prepare` wrote them under, as for `train.py --data`) does not hold."""
    if not spec.data_sources:
        return
    if data is None:
        raise TournamentError(f"{spec.path.name}: its runs read prepared sources ({', '.join(spec.data_sources)}); "
                              "give --data DIR, the directory holding them (made by hamner prepare)")
    missing = [name for name in spec.data_sources if not (Path(data) / name).is_dir()]
    if missing:
        raise TournamentError(f"--data {data}: no prepared source {missing[0]} ({Path(data) / missing[0]} does not "
                              f"exist); make it with `hamner prepare FILES --out {Path(data) / missing[0]}`")
