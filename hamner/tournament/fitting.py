"""A curriculum fitted to a tournament round's budget, and what makes two entrants' curricula "the same data".

A tournament trains every entrant of a round for the same number of steps. A curriculum's stages have
lengths of their own, so each run trains a copy fitted to the round (`fit_curriculum`): every stage ends
at the same fraction of the run as in the original (its `until_step` or running sum of `steps`, scaled
and rounded; at least one step each), warm-ups and cosine `decay_steps` scale alike, and evaluations
follow the tournament's interval, so the last step validates. Entrants may train different curricula
(a stage's `model` knobs, its learning rates), but every entrant of a round must draw the same batches:
`data_plan` is what must agree (stage ends as fractions of the run, each stage's mix and difficulty,
packing and loss masks), and `fittable` refuses what cannot be fitted to a token budget.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

from hamner.errors import TournamentError
from hamner.toml_table import dump_toml, read_toml
from hamner.train.curriculum.spec import Curriculum


def stage_ends(curriculum: Curriculum) -> list[int]:
    """The global step each stage ends at (fixed-length stages only: see `fittable`)."""
    ends: list[int] = []
    for stage in curriculum.stages:
        ends.append(stage.until_step if stage.until_step is not None else (ends[-1] if ends else 0) + stage.steps)
    return ends


def fittable(curriculum: Curriculum) -> None:
    """TournamentError (one line, naming the field) unless every stage has a fixed length and nothing ties the
    run's length to the clock: a stage that ends on a plateau or early stop, or a time budget, would give
    entrants different numbers of tokens."""
    for i, stage in enumerate(curriculum.stages):
        if stage.max_steps is not None or stage.plateau is not None or stage.early_stop is not None:
            raise TournamentError(f"{curriculum.path.name}: stages[{i}] ends on a plateau or early stop, but a "
                                  "tournament gives every run the same tokens; give it steps or until_step alone")
    if curriculum.time_budget is not None or curriculum.fit_schedule:
        field = "time_budget" if curriculum.time_budget is not None else "fit_schedule"
        raise TournamentError(f"{curriculum.path.name}: {field} ties runs to a wall-clock time, but a "
                              "tournament gives every run the same tokens; remove it")


def data_plan(curriculum: Curriculum) -> dict[str, Any]:
    """What decides the batches a run draws, step by step: equal for two curricula means equal batches."""
    total = stage_ends(curriculum)[-1]
    return {"stages": [{"ends_at": str(Fraction(end, total)), "weights": stage.weights,
                        "difficulty": list(stage.difficulty)}
                       for end, stage in zip(stage_ends(curriculum), curriculum.stages)],
            "packing": curriculum.packing, "source_loss": curriculum.source_loss}


def mix_plan(weights: dict[str, float], difficulty: float) -> dict[str, Any]:
    """`data_plan` of a one-stage mix (a spec's [data] table)."""
    return {"stages": [{"ends_at": "1", "weights": weights, "difficulty": [difficulty, difficulty]}],
            "packing": "stream", "source_loss": {}}


def fit_curriculum(curriculum: Curriculum, steps: int) -> str:
    """The TOML text of `curriculum` fitted to `steps` optimizer steps (see the module docstring)."""
    ends = stage_ends(curriculum)
    if steps < len(ends):
        raise TournamentError(f"curriculum {curriculum.name!r} has {len(ends)} stages, more than the {steps} "
                              "steps of a round's budget; give the round more tokens")
    raw = read_toml(curriculum.path, str(curriculum.path), TournamentError)
    defaults = raw.pop("defaults", {})
    scale = Fraction(steps, ends[-1])
    fitted, previous = [], 0
    for i, (end, table) in enumerate(zip(ends, raw["stages"])):
        # round, then keep at least one step for this stage and for each one after it
        end = steps if i == len(ends) - 1 else max(previous + 1, min(round(end * scale), steps - (len(ends) - 1 - i)))
        length, stage = end - previous, {**defaults, **table}
        stage.pop("until_step", None)
        stage["steps"] = length
        if "warmup_steps" in stage:
            stage["warmup_steps"] = min(length, round(stage["warmup_steps"] * scale))
        if "decay_steps" in stage:
            decay = max(stage.get("warmup_steps", 0) + 1, round(stage["decay_steps"] * scale))
            if decay < length:
                stage["decay_steps"] = decay
            else:  # the cosine spans the whole stage, as without decay_steps
                del stage["decay_steps"]
        fitted.append(stage)
        previous = end
    raw["stages"] = fitted
    for evaluation in raw.get("evaluations", []):
        evaluation.pop("interval", None)
    head = f"# {curriculum.path.name} fitted by a tournament to {steps} steps; stage proportions kept.\n"
    return head + dump_toml(raw)
