"""The curriculum controller driven by made-up loss curves: stages end exactly when their rules
say, batched and one-by-one loss feeding decide the same, and a saved state resumes exactly."""
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from hamner.errors import CheckpointError, CurriculumError
from hamner.train.curriculum.controller import CurriculumController
from hamner.train.curriculum.spec import PlateauRule, load_curriculum


def reference_plateau_step(losses: np.ndarray, rule: PlateauRule) -> int | None:
    """The plateau rule written directly over the full loss history: the stage step it fires at."""
    strikes = 0
    for n in range(rule.min_steps, len(losses) + 1, rule.check_every):
        old = losses[n - rule.recent - rule.window:n - rule.recent].mean()
        new = losses[n - rule.recent:n].mean()
        strikes = strikes + 1 if (old - new) / old < rule.threshold else 0
        if strikes == rule.strikes:
            return n
    return None


def run_stage(ctrl: CurriculumController, losses, batch_sizes) -> int:
    """Drive one stage, feeding losses in the given batch sizes; the stage step where it ends."""
    done = 0
    sizes = iter(batch_sizes)
    while not ctrl.should_advance():
        size = next(sizes)
        for _ in range(size):
            ctrl.step_done()
        ctrl.record_losses(losses[done:done + size])
        done += size
    return ctrl.stage_step


def v31() -> CurriculumController:
    return CurriculumController(load_curriculum("hamner-v3.1"), n_layers=8)


def test_flat_curve_advances_after_three_strikes_at_5100():
    ctrl = v31()
    # First check once 5,000 steps have run, then every 50: strikes at 5,000, 5,050 and 5,100.
    assert run_stage(ctrl, [2.5] * 6000, [1] * 6000) == 5100
    assert (ctrl.end_reason(), ctrl.plateau_step, ctrl.strikes) == ("plateau", 5100, 3)
    ctrl.advance()
    assert ctrl.stage.name == "reasoning" and ctrl.global_step == 5100 and ctrl.stage_step == 0


def test_falling_curve_never_plateaus_and_stops_at_max_steps():
    ctrl = v31()
    steps = np.arange(200_000)
    losses = (4.0 * np.exp(-steps / 100_000)).tolist()  # ~1.5% better per 1,500 steps, forever
    assert run_stage(ctrl, losses, [1000] * 200) == 200_000
    assert (ctrl.end_reason(), ctrl.strikes, ctrl.plateau_step) == ("max_steps", 0, None)


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_plateau_matches_the_rule_batched_or_not(seed: int):
    rng = np.random.default_rng(seed)
    steps = np.arange(40_000)
    # Falls, then flattens into noise: the rule must fire somewhere after the fall ends.
    losses = 2.0 + np.exp(-steps / 2500) + rng.normal(0, 0.05, steps.size)
    rule = load_curriculum("hamner-v3.1").stages[0].plateau
    expected = reference_plateau_step(losses, rule)
    assert expected is not None and expected > 5100

    one_by_one = v31()
    assert run_stage(one_by_one, losses.tolist(), [1] * steps.size) == expected
    batched = v31()
    sizes = random.Random(seed).choices([1, 7, 64, 100, 333, 1000], k=steps.size)
    ended = run_stage(batched, losses.tolist(), sizes)
    assert batched.plateau_step == expected and expected <= ended < expected + 1000


def test_state_roundtrip_mid_stage_decides_identically():
    losses = (2.0 + 0.3 * np.exp(-np.arange(20_000) / 1500)).tolist()
    straight = v31()
    end = run_stage(straight, losses, [50] * 400)

    first = v31()
    for _ in range(4900):
        first.step_done()
    first.record_losses(losses[:4870])  # 30 losses still in flight when the checkpoint is taken
    first.record_val_loss(2.4)
    state = json.loads(json.dumps(first.state_dict()))
    assert len(state["window"]) <= 3000  # only what the rule needs, not the whole history

    resumed = v31()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    resumed.record_losses(losses[4870:4900])
    assert run_stage(resumed, losses[4900:], [50] * 400) == end
    assert resumed.plateau_step == straight.plateau_step and resumed.global_step == straight.global_step
    assert resumed.best_val_loss == 2.4


def test_state_for_another_curriculum_is_refused():
    state = v31().state_dict()
    with pytest.raises(CheckpointError, match="hamner-v3.1"):
        CurriculumController(load_curriculum("demo")).load_state_dict(state)


def test_v31_constant_lr_after_300_warmup_and_fresh_optimizer_per_stage():
    ctrl = v31()
    assert ctrl.lr() == pytest.approx(3e-4 / 300)
    assert not ctrl.fresh_optimizer_needed
    for _ in range(299):
        ctrl.step_done()
    assert ctrl.lr() == pytest.approx(3e-4)
    for _ in range(10_000):
        ctrl.step_done()
    assert ctrl.lr() == pytest.approx(3e-4)
    assert ctrl.weights() == pytest.approx({"synthetic": 0.3, "tinystories": 0.7})
    assert ctrl.layer_lr_scales() == {} and ctrl.difficulty() == 1
    ctrl.advance()
    assert ctrl.fresh_optimizer_needed and ctrl.lr() == pytest.approx(2.5e-4 / 300)
    ctrl.step_done()
    assert not ctrl.fresh_optimizer_needed


def test_4phase_warmup_cosine_ramp_and_layer_scales():
    ctrl = CurriculumController(load_curriculum("hamner-4phase"), n_layers=12)
    peak = 1e-4
    lrs, difficulties = [], []
    for _ in range(2000):
        lrs.append(ctrl.lr())
        difficulties.append(ctrl.difficulty())
        ctrl.step_done()
    assert lrs[0] == pytest.approx(peak / 500) and lrs[499] == pytest.approx(peak)
    assert lrs[500] == pytest.approx(peak)  # cosine starts at the peak ...
    assert lrs[1999] == pytest.approx(0.1 * peak)  # ... and ends at 10% of it on the phase's last step
    mid = 500 + 1499 // 2  # cosine at progress 749/1499
    assert lrs[mid] == pytest.approx(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 749 / 1499))))
    assert all(a >= b for a, b in zip(lrs[500:], lrs[501:]))
    assert difficulties[0] == 1 and difficulties[1999] == 3
    assert difficulties[1000] == pytest.approx(1 + 2 * 1000 / 1999)
    assert ctrl.layer_lr_scales() == {i: 0.2 for i in range(3, 9)}
    assert ctrl.end_reason() == "steps"
    ctrl.advance()
    assert ctrl.lr() == pytest.approx(0.8 * peak / 500) and ctrl.difficulty() == 3
    assert not ctrl.fresh_optimizer_needed


@pytest.mark.parametrize("n_layers, middle", [(8, range(1, 7)), (12, range(3, 9)), (20, range(7, 13))])
def test_controller_layer_scales_for_middle_six(n_layers: int, middle: range):
    ctrl = CurriculumController(load_curriculum("hamner-4phase"), n_layers=n_layers)
    scales = ctrl.layer_lr_scales()
    assert scales == {i: 0.2 for i in middle}
    assert [scales.get(i, 1.0) for i in range(n_layers)].count(1.0) == n_layers - 6


def test_layer_scales_need_a_model_that_fits():
    with pytest.raises(CurriculumError, match="at least 6 layers"):
        CurriculumController(load_curriculum("hamner-4phase"), n_layers=4)
    with pytest.raises(ValueError, match="n_layers"):
        CurriculumController(load_curriculum("hamner-4phase")).layer_lr_scales()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_early_stop_with_patience_and_min_delta(tmp_path: Path):
    ctrl = CurriculumController(load_curriculum(write(tmp_path, """
[[stages]]
name = "only"
weights = { stories = 1 }
lr = 1e-3
max_steps = 1000
early_stop = { patience = 3, min_delta = 0.01 }
""")))
    results = []
    for v in [3.0, 2.95, 2.945, 2.944, 2.96]:  # the last three do not beat 2.95 by 0.01
        assert not ctrl.should_advance()
        results.append(ctrl.record_val_loss(v))
    assert results == [True, True, True, True, False]  # new run-best, for the best checkpoint
    assert ctrl.end_reason() == "early_stop"
    ctrl.advance()
    assert ctrl.finished and not ctrl.should_advance()


def test_early_stop_counter_resets_on_a_real_improvement(tmp_path: Path):
    ctrl = CurriculumController(load_curriculum(write(tmp_path, """
[[stages]]
name = "only"
weights = { stories = 1 }
lr = 1e-3
steps = 1000
early_stop = { patience = 2, min_delta = 0.0 }
""")))
    for v in [3.0, 3.1, 2.9, 3.0]:
        ctrl.record_val_loss(v)
        assert not ctrl.should_advance()
    ctrl.record_val_loss(float("nan"))
    assert ctrl.end_reason() == "early_stop" and ctrl.best_val_loss == 2.9


def test_agiformer_stages_end_at_absolute_steps():
    ctrl = CurriculumController(load_curriculum("agiformer-3stage"))
    ends = []
    while not ctrl.finished:
        if ctrl.should_advance():
            ends.append((ctrl.global_step, ctrl.end_reason()))
            ctrl.advance()
            continue
        if ctrl.stage.name == "encyclopedia" and ctrl.stage_step in (0, 11_999):
            expected = 3e-4 if ctrl.stage_step == 0 else 3e-5
            assert ctrl.lr() == pytest.approx(expected)
        ctrl.step_done()
    assert ends == [(3000, "until_step"), (8000, "until_step"), (20000, "until_step")]


def test_model_knobs_follow_the_stage_and_survive_a_state_roundtrip():
    curriculum = load_curriculum("agiformer-3stage")
    ctrl = CurriculumController(curriculum)
    seen = {}
    while not ctrl.finished:
        seen.setdefault(ctrl.stage.name, ctrl.model_knobs())
        if ctrl.stage.name == "children-stories" and ctrl.stage_step == 100:
            resumed = CurriculumController(curriculum)
            resumed.load_state_dict(ctrl.state_dict())
            assert resumed.model_knobs() == {"plasticity": 0.50}
        if ctrl.should_advance():
            ctrl.advance()
        else:
            ctrl.step_done()
    assert seen == {"dictionary": {"plasticity": 0.10}, "children-stories": {"plasticity": 0.50},
                    "encyclopedia": {"plasticity": 0.99}}


def test_a_knob_holds_until_a_later_stage_changes_it(tmp_path: Path):
    stage = '[[stages]]\nname = "{}"\nweights = {{ stories = 1 }}\nlr = 1e-3\nsteps = 1\n{}\n'
    ctrl = CurriculumController(load_curriculum(write(tmp_path, "".join([
        stage.format("a", "model = { plasticity = 0.1, other = 2 }"), stage.format("b", ""),
        stage.format("c", "model = { plasticity = 0.9 }")]))))
    knobs = []
    while not ctrl.finished:
        knobs.append(ctrl.model_knobs())
        ctrl.step_done()
        ctrl.advance()
    assert knobs == [{"plasticity": 0.1, "other": 2.0}, {"plasticity": 0.1, "other": 2.0},
                     {"plasticity": 0.9, "other": 2.0}]


def test_losses_of_a_left_stage_are_dropped_and_overfeeding_is_refused():
    ctrl = CurriculumController(load_curriculum("demo"))
    for _ in range(700):
        if ctrl.should_advance():
            ctrl.advance()
        ctrl.step_done()
    assert (ctrl.stage_index, ctrl.stage_step) == (1, 100)
    ctrl.record_losses([1.0] * 700)  # 600 belong to the first stage
    with pytest.raises(ValueError, match="only 100 steps"):
        ctrl.record_losses([1.0])


def test_demo_runs_its_fixed_steps_then_finishes():
    ctrl = CurriculumController(load_curriculum("demo"))
    while not ctrl.finished:
        if ctrl.should_advance():
            ctrl.advance()
        else:
            ctrl.step_done()
    assert ctrl.global_step == sum(s.steps for s in ctrl.curriculum.stages)
    with pytest.raises(RuntimeError, match="finished"):
        ctrl.step_done()


def test_controller_and_curriculum_import_no_torch_or_numpy():
    import ast

    import hamner.train.curriculum.controller
    import hamner.train.curriculum.spec

    for module in (hamner.train.curriculum.controller, hamner.train.curriculum.spec):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"torch", "numpy"}, module.__name__


def test_difficulty_ahead_equals_difficulty_once_there():
    """The trainer's prefetcher asks for later steps' difficulty; it must match stepping there."""
    controller = CurriculumController(load_curriculum("hamner-4phase"), n_layers=20)
    ahead = [controller.difficulty(steps_ahead=k) for k in range(0, 300, 37)]
    reached = []
    for k in range(0, 300):
        if k % 37 == 0:
            reached.append(controller.difficulty())
        controller.step_done()
    assert ahead == reached and ahead[0] < ahead[-1]


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_warms_up_holds_then_decays_over_the_last_fraction(tmp_path: Path, shape: str):
    path = tmp_path / "wsd.toml"
    path.write_text(f"""
[[stages]]
name = "a"
weights = {{ stories = 1 }}
lr = 1e-3
muon_lr = 0.02
optimizer = "muon"
steps = 21
warmup_steps = 4
schedule = "wsd"
decay_fraction = 0.5
decay_shape = "{shape}"
min_lr_ratio = 0.1
""")
    ctrl = CurriculumController(load_curriculum(path))
    lrs, muon = [], []
    for _ in range(21):
        lrs.append(ctrl.lr())
        muon.append(ctrl.muon_lr())
        ctrl.step_done()
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:10] == pytest.approx([1e-3] * 6)  # stable until the last ceil(0.5 * 21) = 11 steps
    p = np.arange(11) / 10
    expected = 1 - (p if shape == "linear" else np.sqrt(p))
    assert lrs[10:] == pytest.approx(list(1e-3 * (0.1 + 0.9 * expected)))
    assert muon == pytest.approx([lr * 20 for lr in lrs])  # one schedule for both optimizers


def test_lr_folded_into_the_curriculum_keeps_later_stages_ratio_and_rates_come_together():
    curriculum = load_curriculum("hamner-4phase")
    folded = curriculum.with_first_lr(3e-4)  # 3x the first stage's 1e-4
    assert folded.name == curriculum.name and folded.stages[0].lr == 3e-4
    for old, new in zip(curriculum.stages, folded.stages):
        assert (new.lr, new.muon_lr) == pytest.approx((3 * old.lr, 3 * old.muon_lr))
    ctrl = CurriculumController(folded, n_layers=12)
    for _ in range(499):
        ctrl.step_done()
    rates = ctrl.rates()
    assert (rates.adamw, rates.muon) == (ctrl.lr(), ctrl.muon_lr()) and rates.adamw == pytest.approx(3e-4)
    assert rates.layer_scales == ctrl.layer_lr_scales() == {i: 0.2 for i in range(3, 9)}
    ctrl.advance()
    assert ctrl.rates().adamw == pytest.approx(3 * 0.8e-4 / 500)
