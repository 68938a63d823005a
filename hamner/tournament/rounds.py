"""The tournament itself: size the entrants, run the rounds (and the LR sweep), rank them.

Round r trains its entrants for the round's token budget, every entrant on the same batches
(the sampler is a function of seed and step, and every entrant of a round uses the same seeds,
batch shape and steps, and data fitted to those steps: a curriculum's stages keep their proportions,
see hamner.tournament.fitting); the best `entrants` of round r, by mean final validation loss over the
round's seeds, go on to round r + 1. Before the last round an optional sweep trains each
finalist briefly at several learning rates and the final uses the best one. Run directories
live under OUT/round-N/ENTRANT/seed-S and OUT/lr-sweep/ENTRANT/lr-X, so a rerun finds them.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hamner.errors import HamnerError, TournamentError
from hamner.tournament.fitting import fit_curriculum
from hamner.tournament.runs import RunPlan, RunResult, check_plan, ensure_run, write_if_changed, write_model_file
from hamner.tournament.sizing import Resized, match_size, meta_model, model_size
from hamner.tournament.spec import Entrant, TournamentSpec, check_data
from hamner.train.curriculum.spec import load_curriculum

Say = Callable[[str], None]


@dataclass(frozen=True)
class SizedEntrant:
    """An entrant after resizing: `resized` says how its knob was set and how close it came."""

    entrant: Entrant
    resized: Resized

    @property
    def name(self) -> str:
        return self.entrant.name


@dataclass
class RoundOutcome:
    """One round's runs (per entrant, one per seed) and its ranking, best first."""

    index: int
    tokens: int
    steps: int
    results: dict[str, list[RunResult]] = field(default_factory=dict)
    ranking: list[str] = field(default_factory=list)


@dataclass
class SweepOutcome:
    """One finalist's LR sweep: final validation loss per LR, the best LR and whether it is at an edge."""

    losses: dict[float, float]
    best_lr: float
    at_edge: bool


@dataclass
class Outcome:
    """Everything the report needs."""

    spec: TournamentSpec
    entrants: dict[str, SizedEntrant]
    rounds: list[RoundOutcome] = field(default_factory=list)
    sweeps: dict[str, SweepOutcome] = field(default_factory=dict)


def size_entrants(spec: TournamentSpec) -> dict[str, SizedEntrant]:
    """Every entrant resized to the base on the spec's measure (or measured as it is with resize = false), and
    its curriculum's model knobs checked against the resized model (e.g. one plasticity per layer)."""
    target = model_size(spec.base, spec.seq_len).measure(spec.measure)
    sized = {}
    for e in spec.entrants:
        if e.resize:
            try:
                resized = match_size(e.config, target, spec.measure, e.knob, spec.seq_len, spec.tolerance)
            except TournamentError as exc:  # the entrant's name completes the sizing's message
                raise TournamentError(f"entrant {e.name}: {exc}") from None
        else:
            size = model_size(e.config, spec.seq_len)
            resized = Resized(config=e.config, size=size, knob=e.knob, value=getattr(e.config, e.knob),
                              target=target, error=size.measure(spec.measure) / target - 1)
        if e.curriculum is not None:
            try:
                load_curriculum(e.curriculum).check_model_knobs(meta_model(resized.config).check_knob)
            except HamnerError as exc:
                raise TournamentError(f"entrant {e.name}: {exc}") from None
        sized[e.name] = SizedEntrant(e, resized)
    return sized


def steps_for(spec: TournamentSpec, tokens: int) -> tuple[int, int]:
    """(steps, eval_interval) for a budget of `tokens`: steps is a multiple of the interval, so the
    last step validates, and the spec's `evals` validations are spread evenly over the run (at most one
    per step: `evals` larger than the budget's steps never stretches the budget)."""
    steps = max(1, round(tokens / spec.tokens_per_step))
    evals = min(spec.evals, steps)
    interval = steps // evals
    return interval * evals, interval


def curriculum_for(spec: TournamentSpec, out: Path, steps: int, entrant: Entrant) -> str:
    """The curriculum file a run of `entrant` for `steps` trains: its curriculum fitted to the steps, or a
    one-stage cosine file for the spec's data mix."""
    if entrant.curriculum is not None:
        curriculum = load_curriculum(entrant.curriculum)
        return str(write_if_changed(out / "curricula" / entrant.name / f"{curriculum.path.stem}-{steps}-steps.toml",
                                    fit_curriculum(curriculum, steps)))
    weights = ", ".join(f'"{name}" = {w!r}' for name, w in spec.weights.items())
    return str(write_if_changed(
        out / "curricula" / f"{steps}-steps.toml",
        f'# Written by the tournament {spec.name!r}: its data mix, {steps} steps, cosine with warm-up.\n'
        f'name = "tournament-{steps}"\neval_interval = {steps}\n\n[[stages]]\nname = "main"\n'
        f"steps = {steps}\nweights = {{ {weights} }}\ndifficulty = {spec.difficulty!r}\nlr = {spec.lr!r}\n"
        f'warmup_steps = {round(spec.warmup * steps)}\nschedule = "cosine"\nmin_lr_ratio = {spec.min_lr_ratio!r}\n'))


def _plan(spec: TournamentSpec, out: Path, directory: Path, sized: SizedEntrant, tokens: int, lr: float,
          seed: int, data: str | None) -> RunPlan:
    steps, interval = steps_for(spec, tokens)
    model_file = write_model_file(out / "models" / f"{sized.name}.toml", sized.resized.config, sized.entrant.preset)
    return RunPlan(directory=directory, preset=sized.entrant.preset, model_file=model_file,
                   curriculum=curriculum_for(spec, out, steps, sized.entrant), data=data,
                   steps=steps, eval_interval=interval, lr=lr, seed=seed, batch_size=spec.batch_size,
                   seq_len=spec.seq_len, eval_batches=spec.eval_batches, task_samples=spec.task_samples,
                   threads=spec.threads, device=spec.device, model=sized.resized.config.to_dict())


def mean_and_spread(results: list[RunResult]) -> tuple[float, float]:
    """Mean final validation loss over seeds and its spread (sample standard deviation; 0 for one seed)."""
    losses = [r.val_loss for r in results]
    if any(not math.isfinite(v) for v in losses):
        return math.inf, 0.0
    return statistics.fmean(losses), statistics.stdev(losses) if len(losses) > 1 else 0.0


def is_tie(a: list[RunResult], b: list[RunResult]) -> bool:
    """Whether two entrants' mean losses differ by no more than the seeds' spread of that difference,
    sqrt(spread_a^2 + spread_b^2); with one seed each there is no spread and no tie."""
    (mean_a, spread_a), (mean_b, spread_b) = mean_and_spread(a), mean_and_spread(b)
    spread = math.hypot(spread_a, spread_b)
    return spread > 0 and abs(mean_a - mean_b) <= spread


def run_tournament(spec: TournamentSpec, out: Path, say: Say = print, restart_changed: bool = False,
                   data: str | None = None) -> Outcome:
    """Run (or continue) every round; finished runs are read back, interrupted ones resumed. A run trained from
    another version of the spec is refused (runs.StaleRun), or retrained with `restart_changed`. `data` is the
    directory of the prepared sources the spec's data names (`--data`)."""
    check_data(spec, data)
    outcome = Outcome(spec=spec, entrants=size_entrants(spec))
    alive = [e.name for e in spec.entrants]
    for index, rnd in enumerate(spec.rounds):
        last = index == len(spec.rounds) - 1
        names = alive[:rnd.entrants]
        if last and spec.lr_sweep is not None:
            for name in names:
                outcome.sweeps[name] = _sweep(spec, out, outcome.entrants[name], restart_changed, data, say)
        steps, _ = steps_for(spec, rnd.tokens)
        result = RoundOutcome(index=index + 1, tokens=steps * spec.tokens_per_step, steps=steps)
        say(f"round {index + 1}/{len(spec.rounds)}: {', '.join(names)} on {result.tokens:,} tokens, "
            f"seeds {', '.join(map(str, rnd.seeds))}")
        for name in names:
            lr = outcome.sweeps[name].best_lr if name in outcome.sweeps else spec.lr
            result.results[name] = [
                _run(_plan(spec, out, out / f"round-{index + 1}" / name / f"seed-{seed}", outcome.entrants[name],
                           rnd.tokens, lr, seed, data), name, restart_changed, say)
                for seed in rnd.seeds]
        # Stable sort: equal losses keep the spec's order.
        result.ranking = sorted(names, key=lambda n: mean_and_spread(result.results[n])[0])
        outcome.rounds.append(result)
        say(f"round {index + 1} ranking: " + ", ".join(
            f"{n} {mean_and_spread(result.results[n])[0]:.4f}" for n in result.ranking))
        alive = result.ranking
    return outcome


def _run(plan: RunPlan, entrant: str, restart_changed: bool, say: Say) -> RunResult:
    """One run, after checking that its directory was trained from this plan (see `runs.check_plan`)."""
    check_plan(plan, entrant, restart_changed, say)
    return ensure_run(plan, say)


def _sweep(spec: TournamentSpec, out: Path, sized: SizedEntrant, restart_changed: bool, data: str | None,
           say: Say) -> SweepOutcome:
    losses = {}
    for factor in spec.lr_sweep.factors:
        lr = spec.lr * factor
        plan = _plan(spec, out, out / "lr-sweep" / sized.name / f"lr-{lr:.3g}", sized, spec.lr_sweep.tokens,
                     lr, spec.seeds[0], data)
        losses[lr] = _run(plan, sized.name, restart_changed, say).val_loss
    finite = {lr: v for lr, v in losses.items() if math.isfinite(v)}
    best = min(finite, key=finite.get) if finite else spec.lr
    lrs = sorted(losses)
    at_edge = len(lrs) > 1 and best in (lrs[0], lrs[-1])
    say(f"lr sweep {sized.name}: best lr {best:.3g}" + (" (at the edge of the grid: widen it)" if at_edge else ""))
    return SweepOutcome(losses=losses, best_lr=best, at_edge=at_edge)
