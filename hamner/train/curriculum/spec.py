"""Curricula as data: the TOML format, its validation, and the frozen objects the controller reads.

A curriculum is a list of stages. Each stage says which data sources to mix (and how much of
each), the synthetic-task difficulty, its learning-rate schedule and how it ends. Curricula live
as TOML files in hamner/curricula/ so a user can copy one and edit it; every field is checked
on load so that a typo stops the run with a one-line message instead of silently training on
the wrong mixture. See hamner/curricula/hamner-v3.1.toml for a commented example.

Run-level data options: `[sources.NAME]` tables say what a source's loss covers (`loss = "all"`,
the default, or `"assistant"`: only the assistant's replies, from the data's loss masks);
`packing = "document"` keeps attention inside each document of a packed row and restarts
positions per document (default `"stream"`: rows are plain token windows); `probe` names a probe
(a JSONL file or a built-in set, see hamner.eval.probe) scored at every stage end.

The recipe: `batch_size`, `grad_accum` and `seq_len` at the top level or per stage (the command line
overrides them). A stage's `seq_len = [start, end]` warms the sequence length up: it grows linearly over the
stage (like a difficulty ramp) in steps of SEQ_LEN_MULTIPLE tokens, at a fixed batch size, so the tokens of a
step grow with it; `model = { window = [start, end] }` warms a sliding-window model's attention window up
the same way (one token at a time; the model's `window` is the largest it may reach).
`[[evaluations]]` tables name what runs during training (`val_loss`, `length_gen`,
`tasks`, `probe`), each at its `interval` and, with `at_start`, at step 0; without any, validation loss
runs every `eval_interval` steps as it always did. `keep_best` and a stage's `early_stop` follow a
metric those evaluations produce (`val_loss`, `val_bpc`, `length_ppl@{m}W`, `task_accuracy`,
`probe_accuracy`) in the direction `mode` says; `save_initial_checkpoint` keeps the untrained step 0.
Time: `time_budget` ("3h", "90m", "2h30m" or seconds) stops the run at that wall-clock time with a
checkpoint; `fit_schedule = true` fits the last stage's cosine or wsd decay to it (see
hamner.train.curriculum.budget and the controller).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hamner.data.mixture import CONCEPTS_PREFIX, SYNTHETIC_TASK_PREFIX, is_builtin_source, is_synthetic_source
from hamner.errors import CurriculumError
from hamner.toml_table import TomlTable, parse_toml, read_toml
from hamner.train.curriculum.budget import parse_duration

CURRICULA_DIR = Path(__file__).resolve().parents[2] / "curricula"

MIN_DIFFICULTY, MAX_DIFFICULTY = 1, 5
SCHEDULES = ("constant", "cosine", "wsd")
LOSS_MODES = ("all", "assistant")
PACKINGS = ("stream", "document")
DECAY_SHAPES = ("linear", "1-sqrt")  # how a wsd stage's decay falls from the peak to the floor
OPTIMIZERS = ("adamw", "muon")
# Muon's peak LR at the curriculum's reference LR (base_lr, else the first stage's lr). Muon's
# orthogonalised update has unit spectral norm, so its rate lives on another scale from AdamW's;
# 0.02 is the rate of the Muon speedrun records (Keller Jordan's modded-nanogpt).
DEFAULT_MUON_LR = 0.02
DEFAULT_DECAY_FRACTION = 0.2

_SOURCE_NAME = re.compile(rf"^({re.escape(SYNTHETIC_TASK_PREFIX)}|{re.escape(CONCEPTS_PREFIX)})?"
                          r"[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_MIDDLE = re.compile(r"^middle:(\d+)$")

RECIPE_KEYS = ("batch_size", "grad_accum", "seq_len")  # top level or per stage; the command line overrides
# A stage's seq_len ramp moves in steps of this many tokens (and its ends are multiples of it): few distinct
# shapes, each a multiple of the 8 or 16 elements tensor cores want.
SEQ_LEN_MULTIPLE = 16
# Model knobs a stage may ramp (`knob = [start, end]`) instead of setting per layer; their values are whole numbers.
RAMPED_KNOBS = ("window",)
EVALUATION_KINDS = ("val_loss", "length_gen", "tasks", "probe")
MODES = ("min", "max")
DEFAULT_METRIC = "val_loss"

_TOP_KEYS = {
    "name", "description", "tokenizer", "base_lr", "bits_per_byte", "keep_best",
    "requires_init", "eval_interval", "defaults", "stages", "sources", "packing", "probe", "optimizer", "muon_lr",
    "embed_lr", "head_lr",
    "evaluations", "save_initial_checkpoint", *RECIPE_KEYS, "time_budget", "fit_schedule",
}
_SOURCE_KEYS = ("loss",)
_STAGE_KEYS = {
    "name", "weights", "difficulty", "lr", "lr_mult", "warmup_steps", "schedule", "min_lr_ratio",
    "steps", "until_step", "max_steps", "plateau", "early_stop", "fresh_optimizer",
    "layer_lr_scale", "model", "optimizer", "muon_lr", "embed_lr", "head_lr", "decay_fraction", "decay_shape",
    "decay_steps", *RECIPE_KEYS,
}
_PLATEAU_KEYS = ("check_every", "min_steps", "window", "recent", "threshold", "strikes")
_EARLY_STOP_KEYS = ("patience", "min_delta", "metric", "mode")
_KEEP_BEST_KEYS = ("metric", "mode")
_EVALUATION_KEYS = {
    "val_loss": {"kind", "interval", "at_start"},
    "tasks": {"kind", "interval", "at_start"},
    "probe": {"kind", "interval", "at_start"},
    "length_gen": {"kind", "interval", "at_start", "window", "multiples", "chunk", "stride", "tokens"},
}
DEFAULT_LENGTH_SEQUENCES = 8  # length_gen without `tokens`: this many sequences of max(multiples) x window
_LAYER_SCALE_KEYS = ("layers", "scale")


@dataclass(frozen=True)
class PlateauRule:
    """Advance when the loss stops falling.

    Checked every `check_every` steps of the stage once `min_steps` have run. Improvement is
    (mean of the `window` losses before the last `recent` − mean of the last `recent`) divided
    by the former; below `threshold` is a strike, anything else resets the strikes; `strikes`
    consecutive strikes end the stage.
    """

    check_every: int
    min_steps: int
    window: int
    recent: int
    threshold: float
    strikes: int


@dataclass(frozen=True)
class MetricRule:
    """A metric to follow and which way is better: `mode` "min" (a loss, a perplexity) or "max" (an accuracy)."""

    metric: str = DEFAULT_METRIC
    mode: str = "min"

    def better(self, value: float, than: float, margin: float = 0.0) -> bool:
        """Whether `value` beats `than` by more than `margin` (in the metric's units) in this rule's direction."""
        return value < than - margin if self.mode == "min" else value > than + margin


@dataclass(frozen=True)
class EarlyStop(MetricRule):
    """End the stage when `metric` has not improved on the stage's best by `min_delta` for `patience`
    evaluations in a row (evaluations that do not report the metric do not count)."""

    patience: int = 1
    min_delta: float = 0.0


@dataclass(frozen=True)
class Evaluation:
    """One evaluation run during training: `kind`, every `interval` steps (None: the run's eval interval)
    and at step 0 when `at_start`. length_gen reads sequences of max(multiples) x `window` tokens and
    reports chunk perplexity (`chunk` predictions, grid `stride`) at each multiple of the window, over
    `tokens` validation tokens."""

    kind: str
    interval: int | None = None
    at_start: bool = False
    window: int = 64
    multiples: tuple[int, ...] = (1, 2, 5, 10, 20)
    chunk: int = 16
    stride: int = 16
    tokens: int | None = None

    def due(self, step: int, default_interval: int) -> bool:
        """Whether this evaluation runs after `step` optimizer steps (step 0: before the first)."""
        if step == 0:
            return self.at_start
        return step % (self.interval or default_interval) == 0

    @property
    def sequences(self) -> int:
        """length_gen: how many sequences of max(multiples) x window its `tokens` hold."""
        length = max(self.multiples) * self.window
        return DEFAULT_LENGTH_SEQUENCES if self.tokens is None else max(1, self.tokens // length)

    def metrics(self, bits_per_byte: bool) -> list[str]:
        """The names of the metrics this evaluation reports."""
        if self.kind == "val_loss":
            return ["val_loss", "val_bpc"] if bits_per_byte else ["val_loss"]
        if self.kind == "length_gen":
            return [f"length_ppl@{m}W" for m in self.multiples]
        return ["task_accuracy" if self.kind == "tasks" else "probe_accuracy"]


@dataclass(frozen=True)
class LayerLrScale:
    """Scale the learning rate of some transformer layers: "middle:K" or explicit indices."""

    layers: str | tuple[int, ...]
    scale: float

    def resolve(self, n_layers: int) -> dict[int, float]:
        """Layer index -> LR scale for a model with `n_layers` layers; other layers use 1.0."""
        if isinstance(self.layers, str):
            k = int(_MIDDLE.match(self.layers).group(1))
            if k > n_layers:
                raise CurriculumError(f"layer_lr_scale {self.layers!r} needs at least {k} layers, model has {n_layers}")
            start = (n_layers - k) // 2
            indices = range(start, start + k)
        else:
            bad = [i for i in self.layers if i >= n_layers]
            if bad:
                raise CurriculumError(f"layer_lr_scale names layers {bad} but the model has {n_layers} layers")
            indices = self.layers
        return {i: self.scale for i in indices}


@dataclass(frozen=True)
class Stage:
    """One stage of a curriculum, with every default filled in and the peak LR resolved."""

    name: str
    weights: dict[str, float]
    difficulty: tuple[float, float]  # (start, end); equal when the stage has no ramp
    lr: float  # peak learning rate (AdamW's, and of every parameter Muon does not take)
    warmup_steps: int
    schedule: str  # "constant", "cosine" or "wsd"
    min_lr_ratio: float  # cosine / wsd floor as a fraction of the peak
    steps: int | None  # fixed length
    until_step: int | None  # ends at this absolute global step
    max_steps: int | None  # cap for a stage that ends on plateau / early stop
    plateau: PlateauRule | None
    early_stop: EarlyStop | None
    fresh_optimizer: bool
    layer_lr_scale: LayerLrScale | None
    # Model knobs this stage sets (e.g. {"plasticity": 0.1}); they hold until a later stage changes them.
    model_knobs: dict[str, float | tuple[float, ...]]
    optimizer: str = "adamw"  # "adamw", or "muon" for the hidden matrices (AdamW for the rest)
    muon_lr: float = DEFAULT_MUON_LR  # Muon's peak LR; follows the same schedule as `lr`
    # AdamW peaks of their own for the token embedding and an untied output head (None: `lr`, in the
    # groups they share with the rest); they follow the same schedule as `lr`.
    embed_lr: float | None = None
    head_lr: float | None = None
    decay_fraction: float = DEFAULT_DECAY_FRACTION  # wsd: share of the stage spent decaying
    decay_shape: str = "1-sqrt"  # wsd: "linear" or "1-sqrt"
    decay_steps: int | None = None  # cosine: the stage step by which it reaches its floor (None: the stage's end)
    # The recipe of this stage; None: the curriculum's (or the command line's, which overrides both).
    batch_size: int | None = None
    grad_accum: int | None = None
    seq_len: int | None = None  # the fixed length, or the end of a ramp from seq_len_start
    seq_len_start: int | None = None  # a seq_len ramp's first length; None: no ramp
    # Ramped model knobs (RAMPED_KNOBS): name -> (start, end) over the stage, held at end by later stages.
    model_ramps: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Curriculum:
    """A whole curriculum: run-level settings and the ordered stages."""

    name: str
    description: str
    tokenizer: str | None  # required tokenizer spec (e.g. "bytes"), None when any will do
    base_lr: float | None
    bits_per_byte: bool  # report validation bits per byte
    keep_best: MetricRule | None  # keep the checkpoint with the best value of this metric
    requires_init: bool  # a warm start: the trainer refuses to run without --init-from
    eval_interval: int  # optimizer steps between validation evaluations
    stages: tuple[Stage, ...]
    path: Path
    source_loss: dict[str, str]  # source -> "all" | "assistant", for sources with a [sources.NAME] table
    packing: str  # "stream" or "document"
    probe: str | None  # probe file or built-in probe name, scored at every stage end
    time_budget: float | None = None  # seconds of wall-clock time the run may take, None: no limit
    fit_schedule: bool = False  # fit the last stage's decay to the time budget
    # The run's recipe (None: the preset's default); the command line overrides it.
    batch_size: int | None = None
    grad_accum: int | None = None
    seq_len: int | None = None
    # What runs during training; empty: validation loss every eval_interval steps.
    evaluations: tuple[Evaluation, ...] = ()
    save_initial_checkpoint: bool = False  # a checkpoint of the untrained model at step 0

    def scheduled_evaluations(self) -> tuple[Evaluation, ...]:
        """The evaluations a run performs: the [[evaluations]] tables, else validation loss at eval_interval."""
        return self.evaluations or (Evaluation("val_loss"),)

    def metric_names(self) -> list[str]:
        """Every metric the scheduled evaluations report (what keep_best and early_stop may follow)."""
        return list(dict.fromkeys(m for e in self.scheduled_evaluations() for m in e.metrics(self.bits_per_byte)))

    def check_seq_len(self, max_seq_len: int) -> None:
        """Refuse a curriculum whose seq_len (top level or a stage's) exceeds the model's context."""
        places = [("seq_len", self.seq_len)] + [(f"stages[{i}].seq_len", stage.seq_len)
                                                for i, stage in enumerate(self.stages)]
        for where, value in places:
            if value is not None and value > max_seq_len:
                raise CurriculumError(f"{self.path.name}: {where}: {value} exceeds the model's context "
                                      f"(max_seq_len {max_seq_len})")

    def with_first_lr(self, lr: float) -> Curriculum:
        """This curriculum with `lr` as the first stage's peak rate (--lr): every stage's AdamW, Muon,
        embedding and head peaks (and base_lr) are scaled alike, so later stages keep their ratio to the first."""
        ratio = lr / self.stages[0].lr

        def scaled(rate: float | None) -> float | None:
            return None if rate is None else rate * ratio

        stages = tuple(replace(stage, lr=lr if i == 0 else stage.lr * ratio, muon_lr=stage.muon_lr * ratio,
                               embed_lr=scaled(stage.embed_lr), head_lr=scaled(stage.head_lr))
                       for i, stage in enumerate(self.stages))
        return replace(self, stages=stages, base_lr=None if self.base_lr is None else self.base_lr * ratio)

    def check_head_lr(self, tied: bool) -> None:
        """Refuse `head_lr` for a model whose output head is its embedding (that weight's rate is `embed_lr`)."""
        if tied and any(stage.head_lr is not None for stage in self.stages):
            raise CurriculumError(f"{self.path.name}: head_lr: the model ties its output head to the embedding "
                                  "(tie_embeddings = true), so the head's rate is embed_lr")

    def with_recipe(self, **values: int) -> Curriculum:
        """This curriculum with `values` (batch_size, grad_accum, seq_len from the command line) for the whole
        run: set at the top level and cleared from every stage, so the command line overrides both."""
        cleared = {name: None for name in values} | ({"seq_len_start": None} if "seq_len" in values else {})
        stages = tuple(replace(stage, **cleared) for stage in self.stages)
        return replace(self, stages=stages, **values)

    def assistant_only_sources(self) -> list[str]:
        """Sources whose loss counts the assistant's replies only."""
        return sorted(name for name, loss in self.source_loss.items() if loss == "assistant")

    def sources(self) -> list[str]:
        """Every source with a positive weight in some stage, sorted."""
        return sorted({s for stage in self.stages for s, w in stage.weights.items() if w > 0})

    def data_sources(self) -> list[str]:
        """The sources that must exist as prepared shard directories under --data."""
        return [s for s in self.sources() if not is_builtin_source(s)]

    def check_model_knobs(self, check: Callable[[str, float | tuple[float, ...]], None]) -> None:
        """Run `check(knob, value)` (a model's `check_knob`) on every knob a stage sets (both ends of a ramp);
        its CurriculumError comes back naming the field."""
        for i, stage in enumerate(self.stages):
            values = [*stage.model_knobs.items(), *((name, end) for name, ramp in stage.model_ramps.items()
                                                    for end in ramp)]
            for name, value in values:
                try:
                    check(name, value)
                except CurriculumError as exc:
                    raise CurriculumError(f"{self.path.name}: stages[{i}].model.{name}: {exc}") from None

    def uses_synthetic(self) -> bool:
        """Whether any stage draws synthetic-task samples (mixed or of one task)."""
        return any(is_synthetic_source(s) for s in self.sources())


def available_curricula() -> list[str]:
    """Names of the curricula shipped in hamner/curricula/."""
    return sorted(p.stem for p in CURRICULA_DIR.glob("*.toml"))


def load_curriculum(name_or_path: str | Path) -> Curriculum:
    """Load and validate a curriculum by shipped name (e.g. "hamner-v3.1") or by file path.

    Any problem raises CurriculumError with a one-line message naming the file and the field.
    """
    text = str(name_or_path)
    shipped = f"shipped curricula: {', '.join(available_curricula())}"
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        path = Path(name_or_path)
        if not path.is_file():
            raise CurriculumError(f"curriculum file {text} does not exist; {shipped}")
    else:
        path = CURRICULA_DIR / f"{text}.toml"
        if not path.is_file():
            raise CurriculumError(f"unknown curriculum {text!r}; {shipped} (or give a path to a .toml file)")
    return _parse(read_toml(path, str(path), CurriculumError), path)


def parse_curriculum(text: str, path: Path) -> Curriculum:
    """A curriculum from TOML text (one not yet written to `path`, the name its messages give)."""
    return _parse(parse_toml(text, str(path), CurriculumError), path)


def _parse(raw: dict[str, Any], path: Path) -> Curriculum:
    top = TomlTable(raw, path.name, _TOP_KEYS, CurriculumError)
    top.required("stages")
    base_lr = top.number("base_lr", low=0.0, low_open=True)
    optimizer = top.text("optimizer", "adamw", OPTIMIZERS)
    muon_lr = top.number("muon_lr", DEFAULT_MUON_LR, low=0.0, low_open=True)
    embed_lr = top.number("embed_lr", low=0.0, low_open=True)
    head_lr = top.number("head_lr", low=0.0, low_open=True)
    defaults = raw.get("defaults", {})
    TomlTable(defaults, f"{path.name}: defaults", _STAGE_KEYS - {"name"}, CurriculumError)
    stage_tables = raw["stages"]
    if not isinstance(stage_tables, list) or not stage_tables:
        raise top.fail("stages", "must be a non-empty array of [[stages]] tables")
    stages = tuple(
        _parse_stage({**defaults, **table} if isinstance(table, dict) else table,
                     f"{path.name}: stages[{i}]", base_lr, optimizer)
        for i, table in enumerate(stage_tables)
    )
    for key, top_rate in (("muon_lr", muon_lr), ("embed_lr", embed_lr), ("head_lr", head_lr)):
        stages = _resolve_rate(stages, stage_tables, defaults, key, top_rate, base_lr)
    for i in range(1, len(stages)):
        if stages[i].optimizer != stages[i - 1].optimizer and not stages[i].fresh_optimizer:
            raise CurriculumError(f"{path.name}: stages[{i}].optimizer: switching from {stages[i - 1].optimizer!r} "
                             f"to {stages[i].optimizer!r} needs fresh_optimizer = true in that stage")
    last_until = 0
    for i, stage in enumerate(stages):
        if stage.until_step is not None:
            if stage.until_step <= last_until:
                raise CurriculumError(f"{path.name}: stages[{i}].until_step: must be after the previous stage's "
                                 f"until_step {last_until}, got {stage.until_step}")
            last_until = stage.until_step
    names = [s.name for s in stages]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise CurriculumError(f"{path.name}: stage name {duplicate!r} is used twice")
    packing = top.text("packing", "stream", PACKINGS)
    used = {name for stage in stages for name in stage.weights}
    time_budget, fit_schedule = _parse_time(top, stages[-1])
    curriculum = Curriculum(
        name=top.text("name", path.stem),
        description=top.text("description") or "",
        tokenizer=top.text("tokenizer"),
        base_lr=base_lr,
        bits_per_byte=top.flag("bits_per_byte", False),
        keep_best=_parse_keep_best(raw.get("keep_best", False), path.name),
        requires_init=top.flag("requires_init", False),
        eval_interval=top.integer("eval_interval", 500, minimum=1),
        stages=stages,
        path=path,
        source_loss=_parse_sources(raw.get("sources", {}), f"{path.name}: sources", used),
        packing=packing,
        probe=top.text("probe"),
        batch_size=top.integer("batch_size", minimum=1),
        grad_accum=top.integer("grad_accum", minimum=1),
        seq_len=top.integer("seq_len", minimum=1),
        evaluations=_parse_evaluations(raw.get("evaluations", []), f"{path.name}: evaluations"),
        save_initial_checkpoint=top.flag("save_initial_checkpoint", False),
        time_budget=time_budget,
        fit_schedule=fit_schedule,
    )
    _check_metrics(curriculum)
    return curriculum


def _parse_keep_best(value: Any, where: str) -> MetricRule | None:
    """`keep_best = true` (val_loss, min), `false`, or `{ metric = ..., mode = ... }`."""
    if isinstance(value, bool):
        return MetricRule() if value else None
    f = TomlTable(value, f"{where}: keep_best", _KEEP_BEST_KEYS, CurriculumError)
    return MetricRule(metric=f.text("metric", DEFAULT_METRIC), mode=f.text("mode", "min", MODES))


def _parse_evaluations(tables: Any, where: str) -> tuple[Evaluation, ...]:
    """The [[evaluations]] tables, each checked against the keys its kind takes."""
    if not isinstance(tables, list):
        raise CurriculumError(f"{where}: must be an array of [[evaluations]] tables")
    found = []
    for i, table in enumerate(tables):
        here = f"{where}[{i}]"
        kind = TomlTable(table, here, None, CurriculumError).text("kind", None, EVALUATION_KINDS)
        if kind is None:
            raise CurriculumError(f"{here}: missing required key 'kind' ({', '.join(EVALUATION_KINDS)})")
        f = TomlTable(table, here, _EVALUATION_KEYS[kind], CurriculumError)
        common = dict(kind=kind, interval=f.integer("interval", minimum=1), at_start=f.flag("at_start", False))
        if kind != "length_gen":
            found.append(Evaluation(**common))
            continue
        window, chunk = f.integer("window", 64, minimum=1), f.integer("chunk", 16, minimum=1)
        if chunk > window:
            raise f.fail("chunk", f"must not exceed the window ({window}), got {chunk}")
        multiples = f.int_list("multiples", (1, 2, 5, 10, 20))
        if 0 in multiples:
            raise f.fail("multiples", f"must be whole numbers >= 1, got {list(multiples)}")
        evaluation = Evaluation(**common, window=window, multiples=tuple(sorted(multiples)), chunk=chunk,
                                stride=f.integer("stride", 16, minimum=1), tokens=f.integer("tokens", minimum=1))
        length = max(multiples) * window
        if evaluation.tokens is not None and evaluation.tokens < length:
            raise f.fail("tokens", f"must hold at least one sequence of max(multiples) x window = {length} tokens, "
                                   f"got {evaluation.tokens}")
        found.append(evaluation)
    kinds = [e.kind for e in found]
    repeated = next((k for k in kinds if kinds.count(k) > 1), None)
    if repeated:
        raise CurriculumError(f"{where}: kind {repeated!r} is listed twice; give one table per kind")
    return tuple(found)


def _check_metrics(curriculum: Curriculum) -> None:
    """keep_best and every early_stop must follow a metric the scheduled evaluations report."""
    available = curriculum.metric_names()
    rules = [("keep_best.metric", curriculum.keep_best)] + [
        (f"stages[{i}].early_stop.metric", stage.early_stop) for i, stage in enumerate(curriculum.stages)]
    for where, rule in rules:
        if rule is not None and rule.metric not in available:
            raise CurriculumError(f"{curriculum.path.name}: {where}: {rule.metric!r} is not reported by the "
                                  f"curriculum's evaluations (available: {', '.join(available)})")


def _parse_time(top: TomlTable, last: Stage) -> tuple[float | None, bool]:
    """`time_budget` in seconds (None when unset) and `fit_schedule`, which fits the last stage's decay to it:
    that stage must decay (cosine or wsd) over its whole length (no decay_steps). The budget may also come
    from --time-budget, so fit_schedule does not need one here."""
    time_budget = None
    if top.has("time_budget"):
        try:
            time_budget = parse_duration(top.table["time_budget"])
        except ValueError as exc:
            raise top.fail("time_budget", str(exc)) from None
    fit = top.flag("fit_schedule", False)
    if fit and last.schedule not in ("cosine", "wsd"):
        raise top.fail("fit_schedule", f"fits the last stage's decay to the time budget, but stage {last.name!r} "
                                       f"has schedule {last.schedule!r}; use \"cosine\" or \"wsd\"")
    if fit and last.decay_steps is not None:
        raise top.fail("fit_schedule", f"fits the last stage's whole cosine to the time budget; stage "
                                       f"{last.name!r} must not set decay_steps")
    return time_budget, fit


def _resolve_rate(stages: tuple[Stage, ...], tables: list[Any], defaults: dict[str, Any], key: str,
                  top_rate: float | None, base_lr: float | None) -> tuple[Stage, ...]:
    """Each stage's peak `key` ("muon_lr", "embed_lr", "head_lr"): its own (or the defaults'), else the
    curriculum's `top_rate` scaled like the stage's AdamW peak is to the reference rate (base_lr, else the
    first stage's lr), so an `lr_mult` scales every rate alike. Without a top-level rate, a stage that sets
    none takes its AdamW peak when another stage sets one (the group keeps its own rate all run long, so
    the optimizer's groups never change shape), and None when no stage does."""
    reference = base_lr if base_lr is not None else stages[0].lr
    own = [key in {**defaults, **table} for table in tables]

    def rate(stage: Stage) -> float | None:
        if top_rate is not None:
            return top_rate * stage.lr / reference
        return stage.lr if any(own) else None

    return tuple(stage if set_here else replace(stage, **{key: rate(stage)}) for stage, set_here in zip(stages, own))


def _parse_sources(table: Any, where: str, used: set[str]) -> dict[str, str]:
    """The [sources.NAME] tables: per source, what its loss covers."""
    TomlTable(table, where, None, CurriculumError)
    loss = {}
    for name, options in table.items():
        if name not in used:
            raise CurriculumError(f"{where}.{name}: no stage uses source {name!r}")
        f = TomlTable(options, f"{where}.{name}", _SOURCE_KEYS, CurriculumError)
        loss[name] = f.text("loss", "all", LOSS_MODES)
    return loss


def _parse_stage(table: Any, where: str, base_lr: float | None, optimizer: str) -> Stage:
    f = TomlTable(table, where, _STAGE_KEYS, CurriculumError)
    f.required("name", "weights")
    weights = _parse_weights(table["weights"], f"{where}.weights")

    if f.has("lr") == f.has("lr_mult"):
        raise CurriculumError(f"{where}: give exactly one of 'lr' (absolute) or 'lr_mult' (times base_lr)")
    if f.has("lr"):
        lr = f.number("lr", low=0.0, low_open=True)
    else:
        if base_lr is None:
            raise f.fail("lr_mult", "needs a curriculum-level base_lr")
        lr = base_lr * f.number("lr_mult", low=0.0, low_open=True)

    schedule = f.text("schedule", "constant", SCHEDULES)
    if schedule == "constant" and f.has("min_lr_ratio"):
        raise f.fail("min_lr_ratio", "only applies to schedule = \"cosine\" or \"wsd\"")
    for key in ("decay_fraction", "decay_shape"):
        if schedule != "wsd" and f.has(key):
            raise f.fail(key, "only applies to schedule = \"wsd\"")
    warmup_steps = f.integer("warmup_steps", 0)
    steps = f.integer("steps", minimum=1)
    decay_steps = _parse_decay_steps(f, schedule, warmup_steps, steps)
    decay_shape = f.text("decay_shape", "1-sqrt", DECAY_SHAPES)

    bounds = [k for k in ("steps", "until_step", "max_steps") if f.has(k)]
    if len(bounds) != 1:
        problem = "has no end condition" if not bounds else f"has {' and '.join(bounds)}"
        raise CurriculumError(f"{where}: {problem}; give exactly one of steps (fixed length), until_step "
                         "(absolute global step) or max_steps (cap for plateau / early_stop)")
    plateau = _parse_plateau(table["plateau"], f"{where}.plateau") if f.has("plateau") else None
    early_stop = _parse_early_stop(table["early_stop"], f"{where}.early_stop") if f.has("early_stop") else None
    if f.has("max_steps") and plateau is None and early_stop is None:
        raise f.fail("max_steps", "caps a stage that ends on plateau or early_stop; use steps for a fixed length")

    difficulty = _parse_difficulty(table.get("difficulty"), f"{where}.difficulty", weights)
    seq_len = _parse_seq_len(f)
    knobs, ramps = _parse_model_knobs(table.get("model", {}), f"{where}.model")
    return Stage(
        name=f.text("name"),
        weights=weights,
        difficulty=difficulty,
        lr=lr,
        warmup_steps=warmup_steps,
        schedule=schedule,
        min_lr_ratio=f.number("min_lr_ratio", 0.0, low=0.0, high=1.0),
        steps=steps,
        until_step=f.integer("until_step", minimum=1),
        max_steps=f.integer("max_steps", minimum=1),
        plateau=plateau,
        early_stop=early_stop,
        fresh_optimizer=f.flag("fresh_optimizer", False),
        layer_lr_scale=_parse_layer_scale(table["layer_lr_scale"], f"{where}.layer_lr_scale")
        if f.has("layer_lr_scale") else None,
        model_knobs=knobs,
        model_ramps=ramps,
        optimizer=f.text("optimizer", optimizer, OPTIMIZERS),
        muon_lr=f.number("muon_lr", DEFAULT_MUON_LR, low=0.0, low_open=True),
        embed_lr=f.number("embed_lr", low=0.0, low_open=True),
        head_lr=f.number("head_lr", low=0.0, low_open=True),
        decay_fraction=f.number("decay_fraction", DEFAULT_DECAY_FRACTION, low=0.0, high=1.0, low_open=True),
        decay_shape=decay_shape,
        batch_size=f.integer("batch_size", minimum=1),
        grad_accum=f.integer("grad_accum", minimum=1),
        seq_len=seq_len[1],
        seq_len_start=seq_len[0],
        decay_steps=decay_steps,
    )


def _parse_decay_steps(f: TomlTable, schedule: str, warmup_steps: int, steps: int | None) -> int | None:
    """A cosine stage's `decay_steps`: the stage step by which the cosine reaches its floor, after the warm-up
    and within a fixed-length stage; the stage then stays at the floor."""
    if not f.has("decay_steps"):
        return None
    if schedule != "cosine":
        raise f.fail("decay_steps", "only applies to schedule = \"cosine\"")
    decay_steps = f.integer("decay_steps", minimum=1)
    if decay_steps <= warmup_steps:
        raise f.fail("decay_steps", f"is the stage step the cosine ends at, so it must exceed warmup_steps "
                                    f"({warmup_steps}), got {decay_steps}")
    if steps is not None and decay_steps > steps:
        raise f.fail("decay_steps", f"must not exceed the stage's steps ({steps}), got {decay_steps}")
    return decay_steps


def _parse_weights(table: Any, where: str) -> dict[str, float]:
    if not isinstance(table, dict) or not table:
        raise CurriculumError(f"{where}: must be a non-empty table of source = weight")
    f = TomlTable(table, where, None, CurriculumError)
    weights = {}
    for name in table:
        if not _SOURCE_NAME.match(name):
            raise f.fail(name, "source names are directory names (letters, digits, _ . -), synthetic/<task> "
                               "or concepts/<kind>")
        weights[name] = f.number(name, low=0.0)
    if sum(weights.values()) <= 0:
        raise CurriculumError(f"{where}: all weights are zero")
    return weights


def _parse_seq_len(f: TomlTable) -> tuple[int | None, int | None]:
    """A stage's `seq_len`: (None, length), a ramp (start, end) of multiples of SEQ_LEN_MULTIPLE with start <= end,
    or (None, None) when the stage does not set it."""
    if not isinstance(f.table.get("seq_len"), list):
        return None, f.integer("seq_len", minimum=1)
    start, end = _int_ramp(f, "seq_len")
    if start % SEQ_LEN_MULTIPLE or end % SEQ_LEN_MULTIPLE:
        raise f.fail("seq_len", f"a ramp's ends must be multiples of {SEQ_LEN_MULTIPLE}, got [{start}, {end}]")
    return start, end


def _int_ramp(f: TomlTable, key: str) -> tuple[int, int]:
    """The value at `key`: a whole number >= 1 (start = end) or a [start, end] ramp of them with start <= end."""
    value = f.table[key]
    ends = value if isinstance(value, list) else [value]
    if len(ends) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ends):
        raise f.fail(key, f"must be a whole number >= 1 or a [start, end] ramp of them, got {value!r}")
    if ends[0] > ends[-1]:
        raise f.fail(key, f"a ramp [start, end] must not shrink: start {ends[0]} exceeds end {ends[-1]}")
    return ends[0], ends[-1]


def _parse_model_knobs(table: Any, where: str) -> tuple[dict[str, float | tuple[float, ...]],
                                                        dict[str, tuple[int, int]]]:
    """`model = { knob = number or [one number per layer], ... }` and the ramped knobs (RAMPED_KNOBS: a whole
    number or a [start, end] ramp); whether the model has those knobs (and that many layers, and accepts those
    values) is checked when it is built."""
    if not isinstance(table, dict):
        raise CurriculumError(f"{where}: must be a table of knob = number, got {table!r}")
    f = TomlTable(table, where, None, CurriculumError)
    knobs: dict[str, float | tuple[float, ...]] = {}
    ramps: dict[str, tuple[int, int]] = {}
    for name, value in table.items():
        if name in RAMPED_KNOBS:
            ramps[name] = _int_ramp(f, name)
        elif isinstance(value, list):
            per_layer = TomlTable({str(i): v for i, v in enumerate(value)}, f"{where}.{name}", None, CurriculumError)
            if not value:
                raise CurriculumError(f"{where}.{name}: needs one number per layer, got an empty list")
            knobs[name] = tuple(per_layer.number(str(i)) for i in range(len(value)))
        else:
            knobs[name] = f.number(name)
    return knobs, ramps


def _parse_difficulty(value: Any, where: str, weights: dict[str, float]) -> tuple[float, float]:
    if value is None:
        if any(w > 0 and is_synthetic_source(name) for name, w in weights.items()):
            raise CurriculumError(f"{where}: missing; a stage with synthetic weight needs a difficulty "
                             f"(a value or a [start, end] ramp in {MIN_DIFFICULTY}..{MAX_DIFFICULTY})")
        return (float(MIN_DIFFICULTY), float(MIN_DIFFICULTY))
    ends = value if isinstance(value, list) else [value]
    if len(ends) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in ends):
        raise CurriculumError(f"{where}: must be a number or a [start, end] ramp, got {value!r}")
    if any(not MIN_DIFFICULTY <= v <= MAX_DIFFICULTY for v in ends):
        raise CurriculumError(f"{where}: must be within {MIN_DIFFICULTY}..{MAX_DIFFICULTY}, got {value!r}")
    return (float(ends[0]), float(ends[-1]))


def _parse_plateau(table: Any, where: str) -> PlateauRule:
    f = TomlTable(table, where, _PLATEAU_KEYS, CurriculumError)
    f.required(*_PLATEAU_KEYS)
    rule = PlateauRule(
        check_every=f.integer("check_every", minimum=1),
        min_steps=f.integer("min_steps", minimum=1),
        window=f.integer("window", minimum=1),
        recent=f.integer("recent", minimum=1),
        threshold=f.number("threshold", low=0.0),
        strikes=f.integer("strikes", minimum=1),
    )
    if rule.min_steps < rule.window + rule.recent:
        raise f.fail("min_steps", f"must be at least window + recent = {rule.window + rule.recent} "
                                  f"so the first check has its losses, got {rule.min_steps}")
    return rule


def _parse_early_stop(table: Any, where: str) -> EarlyStop:
    f = TomlTable(table, where, _EARLY_STOP_KEYS, CurriculumError)
    f.required("patience", "min_delta")
    return EarlyStop(metric=f.text("metric", DEFAULT_METRIC), mode=f.text("mode", "min", MODES),
                     patience=f.integer("patience", minimum=1), min_delta=f.number("min_delta", low=0.0))


def _parse_layer_scale(table: Any, where: str) -> LayerLrScale:
    f = TomlTable(table, where, _LAYER_SCALE_KEYS, CurriculumError)
    f.required(*_LAYER_SCALE_KEYS)
    layers = table["layers"]
    if isinstance(layers, str):
        match = _MIDDLE.match(layers)
        if not match or int(match.group(1)) < 1:
            raise f.fail("layers", f"must be \"middle:K\" (K >= 1) or a list of layer indices, got {layers!r}")
    elif (isinstance(layers, list) and layers
          and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
        if len(set(layers)) != len(layers):
            raise f.fail("layers", f"repeats a layer index: {layers}")
        layers = tuple(layers)
    else:
        raise f.fail("layers", f"must be \"middle:K\" or a non-empty list of layer indices >= 0, got {layers!r}")
    return LayerLrScale(layers=layers, scale=f.number("scale", low=0.0, low_open=True))
