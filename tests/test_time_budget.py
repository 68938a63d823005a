"""The time budget: durations, the budget's clock and throughput, a schedule fitted to the deadline (with a fake
clock, no sleeping), the curriculum keys, and a run that stops at its budget and resumes with its time used."""
import math
from pathlib import Path

import pytest
from train_helpers import metrics, tiny_settings

from hamner.errors import CurriculumError, TrainError
from hamner.run import checkpoint as ckpt
from hamner.train.curriculum.budget import TimeBudget, format_duration, parse_duration
from hamner.train.curriculum.controller import CurriculumController
from hamner.train.curriculum.spec import load_curriculum
from hamner.train.settings import resume_settings
from hamner.train.trainer import train


class FakeClock:
    """A clock that moves only when told to (`advance`), or by `tick` seconds at every reading."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ----- durations and the budget -----

@pytest.mark.parametrize("text, seconds", [
    ("90m", 5400), ("3h", 10800), ("2h30m", 9000), ("45s", 45), ("1h0m30s", 3630), ("1.5h", 5400),
    ("5400", 5400), (5400, 5400), (60.5, 60.5), (" 3H ", 10800),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "h", "3x", "2m3h", "0", "0s", -5, True, None, "three hours", float("inf")])
def test_bad_durations_are_one_line(bad):
    with pytest.raises(ValueError, match="a time budget is a positive duration") as info:
        parse_duration(bad)
    assert "\n" not in str(info.value)


def test_format_duration():
    assert [format_duration(s) for s in (10800, 9000, 60, 3630, 45.5, 59)] == ["3h", "2h30m", "1m", "1h30s",
                                                                              "45.5s", "59s"]


def test_the_budget_counts_earlier_sessions_and_measures_throughput_after_the_first_step():
    clock = FakeClock()
    budget = TimeBudget(100.0, clock)
    budget.start(used=30.0)  # a resumed run that used 30 s before
    assert budget.elapsed() == 30.0 and budget.remaining() == 70.0 and budget.steps_left() is None
    clock.advance(8.0)  # the first step: compilation and warm-up
    budget.step_done()
    assert budget.steps_left() is None
    for _ in range(4):
        clock.advance(2.0)
        budget.step_done()
    assert budget.seconds_per_step() == 2.0
    assert budget.remaining() == 100 - 30 - 8 - 8 and budget.steps_left() == 27
    clock.advance(54.0)
    assert budget.expired() and budget.steps_left() == 0


# ----- a schedule fitted to the budget -----

FITTED = """\
name = "fitted"
time_budget = "{budget}"
fit_schedule = {fit}

[[stages]]
name = "only"
steps = {steps}
weights = {{ synthetic = 1.0 }}
difficulty = 1
lr = 1.0
warmup_steps = {warmup}
schedule = "{schedule}"
min_lr_ratio = 0.1
"""


def fitted_curriculum(tmp_path: Path, schedule: str = "cosine", steps: int = 10_000, budget: str = "100s",
                      warmup: int = 5, fit: bool = True):
    path = tmp_path / f"fitted-{schedule}-{steps}-{fit}.toml"
    path.write_text(FITTED.format(schedule=schedule, steps=steps, budget=budget, warmup=warmup,
                                  fit=str(fit).lower()))
    return load_curriculum(path)


def run_to_budget(curriculum, seconds_per_step, max_steps: int = 100_000) -> list[float]:
    """The learning rate of every step of a run driven as the trainer drives it, until the budget or the
    curriculum ends; `seconds_per_step(step)` is the fake time each step takes."""
    clock = FakeClock()
    budget = TimeBudget(curriculum.time_budget, clock)
    ctrl = CurriculumController(curriculum)
    budget.start()
    lrs = []
    while not ctrl.finished and len(lrs) < max_steps:
        lrs.append(ctrl.lr())
        clock.advance(seconds_per_step(len(lrs) - 1))
        ctrl.step_done()
        budget.step_done()
        ctrl.fit_to(budget.steps_left())
        if ctrl.should_advance():
            ctrl.advance()
        elif budget.expired():
            break
    return lrs


def cosine(step: int, warmup: int, length: int, floor: float = 0.1) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (length - 1 - warmup)))


def test_a_fitted_cosine_spans_the_steps_the_budget_leaves_and_ends_at_its_floor(tmp_path):
    # 10,000 planned steps, but at 1 s a step only 100 fit in 100 s.
    lrs = run_to_budget(fitted_curriculum(tmp_path), lambda step: 1.0)
    assert len(lrs) == 100
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5:] == pytest.approx([cosine(step, 5, 100) for step in range(5, 100)])
    assert lrs[-1] == pytest.approx(0.1)


def test_a_fitted_wsd_starts_decaying_when_the_time_left_is_its_decay_share_and_only_falls(tmp_path):
    # 100 steps fit at 1 s a step: the last 20 % (steps 80-99) decay. From step 85 steps take 0.5 s, so more
    # fit: the decay keeps its start and stretches to the new deadline, the LR never rising.
    curriculum = fitted_curriculum(tmp_path, schedule="wsd")
    lrs = run_to_budget(curriculum, lambda step: 1.0 if step < 85 else 0.5)
    assert lrs[5:81] == [1.0] * 76 and lrs[81] < 1.0
    assert all(b <= a for a, b in zip(lrs[5:], lrs[6:]))
    assert len(lrs) == 85 + 30 and lrs[-1] == pytest.approx(0.1)
    steady = run_to_budget(curriculum, lambda step: 1.0)
    assert len(steady) == 100 and steady[80] == 1.0 and steady[81] < 1.0 and steady[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_stage_that_ends_before_the_budget_keeps_its_planned_schedule(tmp_path, schedule):
    fitted = run_to_budget(fitted_curriculum(tmp_path, schedule, steps=50), lambda step: 1.0)
    planned = run_to_budget(fitted_curriculum(tmp_path, schedule, steps=50, fit=False), lambda step: 1.0)
    assert len(fitted) == 50 and fitted == planned


def test_without_fit_schedule_the_budget_only_stops_the_run(tmp_path):
    lrs = run_to_budget(fitted_curriculum(tmp_path, fit=False), lambda step: 1.0)
    assert len(lrs) == 100 and lrs[-1] == pytest.approx(cosine(99, 5, 10_000))


def test_the_fitted_state_survives_a_resume(tmp_path):
    curriculum = fitted_curriculum(tmp_path, schedule="wsd")
    ctrl = CurriculumController(curriculum)
    for _ in range(90):
        ctrl.step_done()
        ctrl.fit_to(100 - ctrl.global_step)
    lr = ctrl.lr()
    again = CurriculumController(curriculum)
    again.load_state_dict(ctrl.state_dict())
    assert again.lr() == lr < 1.0 and again.state_dict()["fit_decay_start"] == 80
    again.step_done()
    again.fit_to(None)  # a resumed session before its throughput is measured: the estimate counts down
    assert again.steps_left == 9 and again.fitted_length() == 100


# ----- the curriculum keys -----

def test_tinygpt_cosine_is_the_plans_schedule():
    c = load_curriculum("tinygpt-cosine")
    (stage,) = c.stages
    assert (c.time_budget, c.eval_interval, c.keep_best.metric, c.fit_schedule) == (3 * 3600, 400, "val_loss", False)
    assert (stage.steps, stage.lr, stage.warmup_steps, stage.decay_steps, stage.min_lr_ratio) == \
        (60_000, 3e-4, 1_000, 54_000, 0.1)
    ctrl = CurriculumController(c)
    lrs = {}
    for step in range(60_000):
        if step in (0, 999, 27_500, 53_999, 54_000, 59_999):
            lrs[step] = ctrl.lr()
        ctrl.step_done()
    assert lrs[0] == pytest.approx(3e-7) and lrs[999] == pytest.approx(3e-4)
    assert lrs[27_500] == pytest.approx(3e-5 + 2.7e-4 * 0.5 * (1 + math.cos(math.pi * 26_500 / 52_999)))
    assert lrs[53_999] == lrs[54_000] == lrs[59_999] == pytest.approx(3e-5)


@pytest.mark.parametrize("top, stage, message", [
    ('time_budget = "3x"', "", r"\.time_budget: a time budget is a positive duration"),
    ("time_budget = 0", "", r"\.time_budget: a time budget is a positive duration"),
    ("fit_schedule = 1", "", r"\.fit_schedule: must be true or false"),
    ("fit_schedule = true", 'schedule = "constant"', "fit_schedule: fits the last stage's decay .* has schedule "
                                                     "'constant'"),
    ("fit_schedule = true", 'schedule = "cosine"\ndecay_steps = 50', "must not set decay_steps"),
    ("", 'schedule = "wsd"\ndecay_steps = 50', r"\.decay_steps: only applies to schedule = \"cosine\""),
    ("", 'schedule = "cosine"\nwarmup_steps = 50\ndecay_steps = 50', "must exceed warmup_steps"),
    ("", 'schedule = "cosine"\ndecay_steps = 200', r"must not exceed the stage's steps \(100\)"),
])
def test_curriculum_time_mistakes_are_one_line(tmp_path, top, stage, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'{top}\n[[stages]]\nname = "a"\nsteps = 100\nweights = {{ synthetic = 1.0 }}\n'
                    f'difficulty = 1\nlr = 1e-3\n{stage}\n')
    with pytest.raises(CurriculumError, match=message) as info:
        load_curriculum(path)
    assert "\n" not in str(info.value) and "bad.toml" in str(info.value)


# ----- a run that stops at its budget -----

RUN_CURRICULUM = """\
name = "budget-run"
tokenizer = "bytes"
eval_interval = 1000
fit_schedule = true

[[stages]]
name = "only"
steps = 10000
weights = { synthetic = 1.0 }
difficulty = 1
lr = 3e-3
warmup_steps = 2
schedule = "cosine"
min_lr_ratio = 0.1
"""


def test_a_run_stops_at_its_budget_decayed_and_resumes_with_its_time_used(tmp_path, capsys):
    path = tmp_path / "budget.toml"
    path.write_text(RUN_CURRICULUM)
    clock = FakeClock(tick=0.25)  # every reading moves it, so each step takes about a second
    first = train(tiny_settings(tmp_path / "run", path, time_budget="20s", log_interval=4), clock=clock)
    assert first.reason == "time_budget" and 5 < first.step < 40
    assert f"time budget 20s reached at step {first.step}; checkpoint saved" in capsys.readouterr().out
    assert ckpt.resolve_checkpoint(tmp_path / "run").name == ckpt.step_name(first.step)
    rows = metrics(tmp_path / "run")
    assert int(rows[-1]["step"]) == first.step
    # the last row is written just before the deadline check reads the clock again
    assert float(rows[-1]["elapsed_s"]) > 19 and float(rows[-1]["lr"]) <= 3e-4 * 1.2  # near the floor
    assert [float(r["lr"]) for r in rows[2:]] == sorted((float(r["lr"]) for r in rows[2:]), reverse=True)

    with pytest.raises(TrainError, match="already used .* of its time budget 20s; give a larger --time-budget"):
        train(resume_settings(tmp_path / "run", {}), clock=clock)
    second = train(resume_settings(tmp_path / "run", {"time_budget": "40s"}), clock=clock)
    assert second.reason == "time_budget" and second.step > first.step
    resumed = metrics(tmp_path / "run")[len(rows):]
    assert 20 < float(resumed[0]["elapsed_s"]) < 39 < float(resumed[-1]["elapsed_s"])


def test_fit_schedule_without_a_budget_and_a_bad_flag_are_one_line(tmp_path):
    path = tmp_path / "budget.toml"
    path.write_text(RUN_CURRICULUM)
    with pytest.raises(TrainError, match="sets fit_schedule = true, which needs a time budget: give --time-budget"):
        train(tiny_settings(tmp_path / "run", path))
    with pytest.raises(TrainError, match="--time-budget: a time budget is a positive duration"):
        train(tiny_settings(tmp_path / "run", path, time_budget="soon"))
    assert not (tmp_path / "run").exists()
