"""The curriculum controller: which stage we are in, and what that stage wants right now.

Plain Python (no torch) so it is cheap to call every step and easy to test with made-up loss
curves. The training loop drives it:

    ctrl = CurriculumController(load_curriculum("hamner-v3.1"), n_layers=model.n_layers)
    while not ctrl.finished:
        set the rates of ctrl.rates(): AdamW's, Muon's, the embedding's and the head's, and the layer
        scales AdamW's and Muon's are multiplied by,
        mix ctrl.weights(),
        synthetic tasks at ctrl.difficulty(), rows of ctrl.seq_len() tokens (None: the recipe's),
        model.set_knob(name, value) for ctrl.ramped_knobs(); run one optimizer step; ctrl.step_done()
        at log intervals: ctrl.record_losses(losses of the steps since the last call)
        at evaluations: ctrl.record_metrics({"val_loss": v, "length_ppl@1W": p, ...})
                        (True -> a new best of the keep_best metric: save the best checkpoint)
        if ctrl.should_advance(): save the stage-end checkpoint; ctrl.advance()
        if ctrl.fresh_optimizer_needed: rebuild the optimizer
        at the start of every stage and after a resume: model.set_knob(name, value) for ctrl.model_knobs()

step_done() needs no loss, so the loop never syncs the GPU per step. The plateau rule is
evaluated at exactly the stage steps it names, as the losses for those steps arrive, so feeding
losses in batches after the fact decides exactly as feeding them one by one would; the stage
then ends at the next should_advance() call.

Ramps (difficulty, a seq_len ramp, a ramped model knob such as the attention window) run linearly from
their start at the stage's first step to their end at its last; a seq_len ramp moves in whole steps of
SEQ_LEN_MULTIPLE tokens, a knob ramp in whole numbers (both rounded down), so their values depend on the
stage step alone and a resumed run recomputes them exactly.

Stage length (used by ramps, cosine and wsd): `steps`, or `until_step` minus the global step the
stage started at, or `max_steps` for stages that end on a plateau or early stop (their
difficulty ramp, cosine and wsd decay run over the cap).

Time budget (`fit_schedule`): the loop tells the controller after every step how many more steps fit in the
run's time budget at the measured throughput (`fit_to(steps_left)`, see hamner.train.curriculum.budget).
In the last stage the schedule then runs over the steps the stage will really get, the fewer of its planned
length and the steps the budget leaves, so the decay ends at the deadline: a cosine spans them after its
warm-up; a wsd stage starts decaying when the steps left are its `decay_fraction` of them, and from then on
its decay start stays put, so the learning rate only falls. Until the throughput is known (and without a
budget) the planned length is used.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from hamner.errors import CheckpointError
from hamner.train.curriculum.spec import SEQ_LEN_MULTIPLE, Curriculum, MetricRule, Stage


@dataclass(frozen=True)
class StepRates:
    """The learning rates of one step: AdamW's, Muon's, and layer index -> the scale both are
    multiplied by in that layer (layers not listed: 1.0); the token embedding's and the untied output
    head's own AdamW rates (None: they take `adamw`)."""

    adamw: float
    muon: float
    layer_scales: dict[int, float]
    embed: float | None = None
    head: float | None = None


class CurriculumController:
    """Tracks stage, steps, plateau strikes and evaluation history; answers LR, mix and ends."""

    def __init__(self, curriculum: Curriculum, n_layers: int | None = None):
        self.curriculum = curriculum
        self.steps_left: int | None = None  # steps the time budget still allows (see fit_to), None: unknown
        self.n_layers = n_layers
        if n_layers is not None:
            for stage in curriculum.stages:
                if stage.layer_lr_scale is not None:
                    stage.layer_lr_scale.resolve(n_layers)  # fail now, not stages later
        self.stage_index = 0
        self.global_step = 0
        # The metric the best checkpoint follows (keep_best's, else val_loss, lower is better) and its best value.
        self.best_rule = curriculum.keep_best or MetricRule()
        self.best_value: float | None = None
        self._owed = 0  # losses still to come for steps of stages already left
        self._start_stage()

    def _start_stage(self) -> None:
        self.stage_step = 0
        self.stage_start_step = self.global_step
        self.strikes = 0
        self.plateau_step: int | None = None  # stage step at which the plateau rule fired
        self._losses_seen = 0  # losses recorded for this stage
        rule = self.stage.plateau if not self.finished else None
        self._window: deque[float] = deque(maxlen=rule.window + rule.recent if rule else 0)
        self._stage_best_val: float | None = None
        self._bad_evals = 0
        self._fit_decay_start: int | None = None  # the stage step a fitted wsd decay began at

    # ----- what the current stage wants -----

    @property
    def finished(self) -> bool:
        """True once the last stage has been advanced past."""
        return self.stage_index >= len(self.curriculum.stages)

    @property
    def stage(self) -> Stage:
        """The current Stage."""
        if self.finished:
            raise RuntimeError("the curriculum is finished: there is no current stage")
        return self.curriculum.stages[self.stage_index]

    @property
    def stage_length(self) -> int:
        """Planned steps of the current stage: fixed steps, steps to until_step, or the max_steps cap."""
        stage = self.stage
        if stage.steps is not None:
            return stage.steps
        if stage.until_step is not None:
            return max(0, stage.until_step - self.stage_start_step)
        return stage.max_steps

    @property
    def fresh_optimizer_needed(self) -> bool:
        """True from advancing into a stage that wants a fresh optimizer until its first step."""
        return (not self.finished and self.stage_index > 0 and self.stage_step == 0
                and self.stage.fresh_optimizer)

    def _progress(self, start: int, steps_ahead: int = 0, length: int | None = None) -> float:
        """Where the step about to run (or one `steps_ahead` later) lies between stage step `start`
        and the stage's last step (of a stage `length` steps long; default its planned length), in [0, 1]."""
        span = (self.stage_length if length is None else length) - 1 - start
        return min(1.0, max(0.0, (self.stage_step + steps_ahead - start) / span)) if span > 0 else 1.0

    def rates(self) -> StepRates:
        """Every learning rate of the step about to run (see StepRates)."""
        factor, stage = self.lr_factor(), self.stage
        return StepRates(self.lr(), self.muon_lr(), self.layer_lr_scales(),
                         None if stage.embed_lr is None else stage.embed_lr * factor,
                         None if stage.head_lr is None else stage.head_lr * factor)

    def lr(self) -> float:
        """AdamW's learning rate for the step about to run: the stage peak times `lr_factor()`."""
        return self.stage.lr * self.lr_factor()

    def muon_lr(self) -> float:
        """Muon's learning rate for the step about to run: its own peak on the same schedule."""
        return self.stage.muon_lr * self.lr_factor()

    def lr_factor(self) -> float:
        """The schedule's share of the peak for the step about to run: linear warmup, then
        constant, cosine to `min_lr_ratio`, or wsd (warmup-stable-decay: the peak until the last
        `decay_fraction` of the stage, then down to `min_lr_ratio` along `decay_shape`, where
        "linear" is 1 - p and "1-sqrt" is 1 - sqrt(p) for p going 0 -> 1 over the decay). A cosine
        with `decay_steps` reaches its floor at that stage step and stays there. With `fit_schedule`
        the last stage's length is the one the time budget leaves (see the module docstring)."""
        stage = self.stage
        if self.stage_step < stage.warmup_steps:
            return (self.stage_step + 1) / stage.warmup_steps
        if stage.schedule == "constant":
            return 1.0
        length = self.fitted_length()
        if stage.schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * self._progress(stage.warmup_steps,
                                                                  length=stage.decay_steps or length)))
        else:
            decay_start = self._wsd_decay_start(length)
            if self.stage_step < decay_start:
                return 1.0
            p = self._progress(decay_start, length=length)
            shape = 1.0 - (p if stage.decay_shape == "linear" else math.sqrt(p))
        return stage.min_lr_ratio + (1.0 - stage.min_lr_ratio) * shape

    def _wsd_decay_start(self, length: int) -> int:
        """The stage step a wsd stage of `length` steps starts decaying at (once a fitted decay began, that step)."""
        if self._fit_decay_start is not None:
            return self._fit_decay_start
        return max(self.stage.warmup_steps, length - math.ceil(self.stage.decay_fraction * length))

    # ----- the time budget -----

    @property
    def fitting(self) -> bool:
        """Whether the current stage's schedule is fitted to the time budget (fit_schedule, last stage)."""
        return (self.curriculum.fit_schedule and not self.finished
                and self.stage_index == len(self.curriculum.stages) - 1)

    def fitted_length(self) -> int:
        """The current stage's length for its schedule: the planned one, or, when fitting and the throughput
        is known, the fewer steps the time budget leaves (at least the steps already done and the next)."""
        if not self.fitting or self.steps_left is None:
            return self.stage_length
        return min(self.stage_length, self.stage_step + max(1, self.steps_left))

    def fit_to(self, steps_left: int | None) -> None:
        """After a step: how many more steps fit in the time budget. None (the throughput of a resumed session
        is not measured yet) counts the last estimate down by the step just done. A fitted wsd stage whose
        next step falls in the decay fixes its decay start there."""
        if steps_left is not None:
            self.steps_left = steps_left
        elif self.steps_left is not None:
            self.steps_left = max(0, self.steps_left - 1)
        if (self.fitting and self.stage.schedule == "wsd" and self._fit_decay_start is None
                and self.stage_step >= self._wsd_decay_start(self.fitted_length())):
            self._fit_decay_start = self.stage_step

    def layer_lr_scales(self) -> dict[int, float]:
        """Layer index -> LR multiplier for the current stage; layers not listed use 1.0."""
        scale = self.stage.layer_lr_scale
        if scale is None:
            return {}
        if self.n_layers is None:
            raise ValueError(f"stage {self.stage.name!r} scales layer LRs: create the controller with n_layers")
        return scale.resolve(self.n_layers)

    def weights(self) -> dict[str, float]:
        """Source -> probability for the current stage (positive weights only, summing to 1)."""
        weights = {s: w for s, w in self.stage.weights.items() if w > 0}
        total = sum(weights.values())
        return {s: w / total for s, w in weights.items()}

    def model_knobs(self) -> dict[str, float | tuple[float, ...]]:
        """Knob -> value for the step about to run: the latest value any stage up to this one set (an earlier
        stage's ramp at its end, this stage's at this step)."""
        knobs: dict[str, float | tuple[float, ...]] = {}
        for stage in self.curriculum.stages[:self.stage_index]:
            knobs.update(stage.model_knobs)
            knobs.update({name: end for name, (_, end) in stage.model_ramps.items()})
        knobs.update(self.stage.model_knobs)
        knobs.update(self.ramped_knobs())
        return knobs

    def ramped_knobs(self) -> dict[str, int]:
        """Knob -> value of the current stage's ramped knobs (e.g. the attention window) for the step about to
        run: start + (end - start) x progress, rounded down."""
        progress = self._progress(0)
        return {name: start + math.floor((end - start) * progress)
                for name, (start, end) in self.stage.model_ramps.items()}

    def seq_len(self, steps_ahead: int = 0) -> int | None:
        """Tokens per row for the step about to run (or one `steps_ahead` later) when the stage ramps its
        seq_len: start + (end - start) x progress, rounded down to a multiple of SEQ_LEN_MULTIPLE above start;
        None when it does not (the recipe's fixed length applies)."""
        stage = self.stage
        if stage.seq_len_start is None:
            return None
        grown = (stage.seq_len - stage.seq_len_start) * self._progress(0, steps_ahead)
        return stage.seq_len_start + SEQ_LEN_MULTIPLE * math.floor(grown / SEQ_LEN_MULTIPLE)

    def difficulty(self, steps_ahead: int = 0) -> float:
        """Synthetic difficulty for the step about to run: the stage's value or its linear ramp.

        May be fractional inside a ramp (e.g. 2.5); the data layer decides how to realise it.
        `steps_ahead` asks for a later step of this stage, for a data loader that reads ahead.
        """
        start, end = self.stage.difficulty
        return start + (end - start) * self._progress(0, steps_ahead)

    # ----- driving it -----

    def step_done(self) -> None:
        """Count one finished optimizer step. Cheap, and needs no loss."""
        if self.finished:
            raise RuntimeError("step_done() after the curriculum finished")
        self.global_step += 1
        self.stage_step += 1

    def record_losses(self, losses: Sequence[float]) -> None:
        """Give the train losses of every step done since the last call, in order.

        Losses of steps from a stage already advanced past are dropped. Plateau checks fire for
        exactly the stage steps the rule names, as their losses arrive. A check whose window
        holds a non-finite loss is not a strike (the count resets).
        """
        losses = list(losses)
        skip = min(self._owed, len(losses))
        self._owed -= skip
        losses = losses[skip:]
        if not losses:
            return
        if self._losses_seen + len(losses) > self.stage_step:
            raise ValueError(f"got losses for {self._losses_seen + len(losses)} steps of stage "
                             f"{self.stage.name!r} but only {self.stage_step} steps were done")
        rule = self.stage.plateau
        for loss in losses:
            self._losses_seen += 1
            if rule is None or self.plateau_step is not None:
                continue
            self._window.append(float(loss))
            n = self._losses_seen
            if n >= rule.min_steps and (n - rule.min_steps) % rule.check_every == 0:
                self._check_plateau(n)

    def _check_plateau(self, n: int) -> None:
        rule = self.stage.plateau
        older = list(islice(self._window, 0, rule.window))
        newer = list(islice(self._window, rule.window, None))
        old, new = sum(older) / len(older), sum(newer) / len(newer)
        improvement = (old - new) / old if old else 0.0
        self.strikes = self.strikes + 1 if improvement < rule.threshold else 0
        if self.strikes >= rule.strikes:
            self.plateau_step = n

    @property
    def best_val_loss(self) -> float | None:
        """The best value so far of the metric the best checkpoint follows (validation loss by default)."""
        return self.best_value

    def record_val_loss(self, val_loss: float) -> bool:
        """Record one validation loss; see record_metrics."""
        return self.record_metrics({"val_loss": val_loss})

    def record_metrics(self, metrics: dict[str, float]) -> bool:
        """Record the metrics of one evaluation step; True when the best checkpoint's metric (keep_best's,
        else val_loss) is among them and is the best of the run so far.

        When the stage's early-stop metric is among them, an evaluation that does not beat the stage's best
        by min_delta (or is not finite) is a strike; an evaluation without it changes nothing.
        """
        improved = False
        value = metrics.get(self.best_rule.metric)
        if value is not None and math.isfinite(value) and (
                self.best_value is None or self.best_rule.better(value, self.best_value)):
            self.best_value = value
            improved = True
        rule = self.stage.early_stop
        if rule is not None and rule.metric in metrics:
            value = metrics[rule.metric]
            if math.isfinite(value) and (self._stage_best_val is None
                                         or rule.better(value, self._stage_best_val, rule.min_delta)):
                self._stage_best_val = value
                self._bad_evals = 0
            else:
                self._bad_evals += 1
        return improved

    def end_reason(self) -> str | None:
        """Why the current stage is over ("steps", "until_step", "plateau", "early_stop",
        "max_steps"), or None while it goes on."""
        if self.finished:
            return None
        stage = self.stage
        if stage.steps is not None and self.stage_step >= stage.steps:
            return "steps"
        if stage.until_step is not None and self.global_step >= stage.until_step:
            return "until_step"
        if self.plateau_step is not None:
            return "plateau"
        if stage.early_stop is not None and self._bad_evals >= stage.early_stop.patience:
            return "early_stop"
        if stage.max_steps is not None and self.stage_step >= stage.max_steps:
            return "max_steps"
        return None

    def should_advance(self) -> bool:
        """True when the current stage is over and advance() should be called."""
        return self.end_reason() is not None

    def advance(self) -> None:
        """Move to the next stage (or finish); losses still to come for the old stage's steps are dropped."""
        if self.finished:
            raise RuntimeError("advance() after the curriculum finished")
        self._owed += self.stage_step - self._losses_seen
        self.stage_index += 1
        self._start_stage()

    # ----- resume -----

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as JSON-serialisable values."""
        return {
            "curriculum": self.curriculum.name,
            "stage_index": self.stage_index,
            "global_step": self.global_step,
            "stage_step": self.stage_step,
            "stage_start_step": self.stage_start_step,
            "strikes": self.strikes,
            "plateau_step": self.plateau_step,
            "losses_seen": self._losses_seen,
            "owed": self._owed,
            "window": list(self._window),
            "best_value": self.best_value,
            "stage_best_val": self._stage_best_val,
            "bad_evals": self._bad_evals,
            "fit_decay_start": self._fit_decay_start,
            "steps_left": self.steps_left,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict() taken from a controller of the same curriculum."""
        if state["curriculum"] != self.curriculum.name:
            raise CheckpointError(f"controller state is for curriculum {state['curriculum']!r}, "
                             f"not {self.curriculum.name!r}")
        if not 0 <= state["stage_index"] <= len(self.curriculum.stages):
            raise CheckpointError(f"controller state names stage {state['stage_index']} but "
                             f"{self.curriculum.name!r} has {len(self.curriculum.stages)} stages")
        self.stage_index = state["stage_index"]
        self.global_step = state["global_step"]
        self._start_stage()
        self.stage_step = state["stage_step"]
        self.stage_start_step = state["stage_start_step"]
        self.strikes = state["strikes"]
        self.plateau_step = state["plateau_step"]
        self._losses_seen = state["losses_seen"]
        self._owed = state["owed"]
        self._window.extend(state["window"])
        self.best_value = state["best_value"] if "best_value" in state else state["best_val_loss"]  # older runs
        self._stage_best_val = state["stage_best_val"]
        self._bad_evals = state["bad_evals"]
        # Both absent in states saved before time budgets.
        self._fit_decay_start = state.get("fit_decay_start")
        self.steps_left = state.get("steps_left")
