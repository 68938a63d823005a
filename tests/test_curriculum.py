"""Curriculum TOML files: every shipped one loads with the numbers its seed project used, and
every kind of mistake in a user's file is refused with a one-line message naming it."""
from pathlib import Path

import pytest

from hamner.errors import CurriculumError
from hamner.train.curriculum.spec import DEFAULT_MUON_LR, LayerLrScale, available_curricula, load_curriculum

SHIPPED = {"hamner-v3.1", "hamner-v2", "hamner-4phase", "agiformer-3stage", "tinygpt-cosine", "demo", "builtin",
           "sft", "concepts-sequential", "concepts-replay", "concepts-echo", "concepts-composition",
           "concepts-capacity", "ttt-extended", "ttt-length-demo", "agiformer-3stage-plain",
           "agiformer-3stage-per-layer", "plasticity-demo", "plasticity-demo-schedule", "plasticity-demo-per-layer",
           "speedrun", "speedrun-demo", "speedrun-demo-untied", "speedrun-demo-one-lr"}


def test_every_shipped_curriculum_loads():
    assert set(available_curricula()) == SHIPPED
    for name in SHIPPED:
        curriculum = load_curriculum(name)
        assert curriculum.name == name
        assert curriculum.description
        for stage in curriculum.stages:
            assert sum(stage.weights.values()) == pytest.approx(1.0)


def test_ttt_extended_is_the_studys_long_run():
    curriculum = load_curriculum("ttt-extended")
    (stage,) = curriculum.stages
    assert stage.max_steps == 100_000 and stage.warmup_steps == 0.02 * stage.max_steps
    # the original's evaluation grid: every 2,041 steps (48 points within 100k steps) plus the untrained step 0
    assert stage.schedule == "cosine" and curriculum.eval_interval == 2_041
    assert stage.max_steps // curriculum.eval_interval == 48
    assert stage.early_stop.patience == 10 and stage.early_stop.min_delta > 0


def test_hamner_v31_matches_the_issue():
    c = load_curriculum("hamner-v3.1")
    # (synthetic, tinystories, fineweb, sft, personal), difficulty, LR: the table in issue 4.
    expected = [
        ((.30, .70, 0, 0, 0), 1, 3e-4), ((.55, .35, .10, 0, 0), 3, 2.5e-4),
        ((.20, .20, .60, 0, 0), 3, 2e-4), ((.35, .20, .35, .10, 0), 4, 1.5e-4),
        ((.25, .15, .40, .15, .05), 4, 1.2e-4), ((.15, .15, .20, .40, .10), 4, 8e-5),
        ((.20, .15, .25, .25, .15), 5, 5e-5), ((.15, .10, .15, .25, .35), 5, 3e-5),
    ]
    assert len(c.stages) == 8
    sources = ("synthetic", "tinystories", "fineweb", "sft", "personal")
    for stage, (weights, difficulty, lr) in zip(c.stages, expected):
        assert tuple(stage.weights.get(s, 0.0) for s in sources) == pytest.approx(weights)
        assert stage.difficulty == (difficulty, difficulty)
        assert stage.lr == pytest.approx(lr)
        assert (stage.warmup_steps, stage.schedule, stage.fresh_optimizer) == (300, "constant", True)
        assert (stage.max_steps, stage.steps, stage.until_step) == (200_000, None, None)
        p = stage.plateau
        rule = (p.check_every, p.min_steps, p.window, p.recent, p.threshold, p.strikes)
        assert rule == (50, 5000, 2000, 1000, 0.001, 3)
    assert c.data_sources() == ["fineweb", "personal", "sft", "tinystories"]


def test_hamner_4phase_matches_the_issue():
    c = load_curriculum("hamner-4phase")
    assert c.requires_init and c.base_lr == 1e-4
    sources = ("synthetic", "tinystories", "fineweb", "personal")
    expected = [
        (2000, (.60, .20, .15, .05), (1, 3), 1.0), (15000, (.20, .50, .20, .10), (3, 4), 0.8),
        (10000, (.20, .30, .20, .30), (4, 5), 0.6), (5000, (.25, .25, .25, .25), (5, 5), 0.4),
    ]
    for stage, (steps, weights, difficulty, mult) in zip(c.stages, expected, strict=True):
        assert stage.steps == steps
        assert tuple(stage.weights[s] for s in sources) == pytest.approx(weights)
        assert stage.difficulty == difficulty
        assert stage.lr == pytest.approx(1e-4 * mult)
        assert (stage.warmup_steps, stage.schedule, stage.min_lr_ratio) == (500, "cosine", 0.1)
        assert stage.layer_lr_scale == LayerLrScale("middle:6", 0.2)
    assert [s.name for s in c.stages] == ["structure", "stories", "voice", "polish"]
    assert sum(s.steps for s in c.stages) * 32 * 1024 == pytest.approx(1.05e9, rel=0.01)  # the original's tokens


def test_hamner_v2_is_the_originals_fineweb_pretraining():
    c = load_curriculum("hamner-v2")
    (stage,) = c.stages
    assert stage.weights == {"fineweb": 1.0} and c.data_sources() == ["fineweb"]
    assert (stage.lr, stage.warmup_steps, stage.steps) == (pytest.approx(2e-4), 2000, 400_000)
    assert (stage.schedule, stage.min_lr_ratio, c.requires_init) == ("cosine", 0.1, False)


def test_agiformer_and_tinygpt_and_demo():
    a = load_curriculum("agiformer-3stage")
    assert [s.until_step for s in a.stages] == [3000, 8000, 20000]
    assert [list(s.weights) for s in a.stages] == [["dictionary"], ["children_stories"], ["encyclopedia"]]
    assert a.tokenizer == "bytes" and a.bits_per_byte
    assert a.eval_interval == 200 and a.keep_best  # the original validated every 200 steps and kept the best
    assert [s.model_knobs for s in a.stages] == [{"plasticity": 0.10}, {"plasticity": 0.50}, {"plasticity": 0.99}]

    t = load_curriculum("tinygpt-cosine")
    (stage,) = t.stages
    assert t.keep_best and (stage.warmup_steps, stage.schedule, stage.min_lr_ratio) == (1000, "cosine", 0.1)

    d = load_curriculum("demo")
    assert d.data_sources() == [] and set(d.sources()) == {"synthetic", "synthetic/arithmetic", "stories", "chat"}
    assert 2 <= len(d.stages) <= 3 and 1000 <= sum(s.steps for s in d.stages) <= 2000
    first = d.stages[0]
    synthetic_share = sum(w for name, w in first.weights.items() if name.startswith("synthetic")) / sum(
        first.weights.values())
    assert first.difficulty == (1, 1) and synthetic_share >= 0.8


def test_load_by_path_and_unknown_name(tmp_path: Path):
    copy = tmp_path / "mine.toml"
    copy.write_text((Path(load_curriculum("demo").path)).read_text())
    assert load_curriculum(copy).stages == load_curriculum("demo").stages
    assert load_curriculum(str(copy)).name == "demo"
    with pytest.raises(CurriculumError, match=r"unknown curriculum 'nope'.*hamner-v3\.1"):
        load_curriculum("nope")
    with pytest.raises(CurriculumError, match="does not exist.*demo"):
        load_curriculum(tmp_path / "missing.toml")


@pytest.mark.parametrize("n_layers, expected", [(8, range(1, 7)), (12, range(3, 9)), (20, range(7, 13))])
def test_middle_layers_resolve_to_only_the_middle_six(n_layers, expected):
    assert LayerLrScale("middle:6", 0.2).resolve(n_layers) == {i: 0.2 for i in expected}


def test_layer_scale_beyond_the_model_is_refused():
    with pytest.raises(CurriculumError, match="at least 6 layers"):
        LayerLrScale("middle:6", 0.2).resolve(4)
    with pytest.raises(CurriculumError, match=r"\[8\]"):
        LayerLrScale((0, 8), 0.5).resolve(8)


GOOD = """
name = "t"
[[stages]]
name = "a"
weights = { synthetic = 1.0 }
difficulty = 1
lr = 1e-3
steps = 100
"""


@pytest.mark.parametrize("old, new, message", [
    ('name = "t"', 'name = "t"\ncolour = 1', "unknown key 'colour'"),
    ("steps = 100", "steps = 100\nwarmup = 3", r"stages\[0\]: unknown key 'warmup'"),
    ("synthetic = 1.0", "synthetic = 1.0, tinystories = -0.5", r"weights\.tinystories: must be >= 0"),
    ("synthetic = 1.0", "synthetic = 0", "all weights are zero"),
    ("difficulty = 1", "difficulty = [1, 6]", r"difficulty: must be within 1\.\.5"),
    ("difficulty = 1", "difficulty = [0, 3]", r"difficulty: must be within 1\.\.5"),
    ("difficulty = 1", "", "difficulty: missing"),
    ("steps = 100", "", "no end condition"),
    ("steps = 100", "steps = 100\nuntil_step = 50", "steps and until_step"),
    ("\nlr = 1e-3", "\nlr = 1e-3\nlr_mult = 1.0", "exactly one of 'lr'"),
    ("\nlr = 1e-3", "\nlr_mult = 0.5", "lr_mult: needs a curriculum-level base_lr"),
    ("\nlr = 1e-3", "\nlr = 1e-3\nschedule = \"linear\"", "schedule: must be one of constant, cosine"),
    ("\nlr = 1e-3", "\nlr = -1e-3", r"lr: must be > 0"),
    ("steps = 100", "steps = 100\nmin_lr_ratio = 0.1", "only applies to schedule"),
    ("steps = 100", "max_steps = 100", "use steps for a fixed length"),
    ("steps = 100", "steps = 100\nplateau = { check_every = 5, min_steps = 10, window = 10, recent = 5, "
                    "threshold = 0.001, strikes = 3 }", "must be at least window \\+ recent = 15"),
    ("steps = 100", "steps = 100\nplateau = { check_every = 5 }", "missing required key 'min_steps'"),
    ("steps = 100", "steps = 100\nearly_stop = { patience = 0, min_delta = 0.0 }", "patience: must be >= 1"),
    ("steps = 100", "steps = 100\nlayer_lr_scale = { layers = \"top:2\", scale = 0.5 }", "must be \"middle:K\""),
    ("steps = 100", "steps = 100\nlayer_lr_scale = { layers = [1, 1], scale = 0.5 }", "repeats a layer"),
    ("steps = 100", "steps = 100\nfresh_optimizer = \"yes\"", "must be true or false"),
    ("steps = 100", "steps = 10.5", "must be an integer"),
    ("steps = 100", 'steps = 100\n[[stages]]\nname = "a"\nweights = { stories = 1 }\nsteps = 5\nlr = 1e-3',
     "stage name 'a' is used twice"),
    ("steps = 100",
     "until_step = 100\n[[stages]]\nname = \"b\"\nweights = { stories = 1 }\nuntil_step = 100\nlr = 1e-3",
     r"stages\[1\]\.until_step: must be after"),
    ('name = "t"', 'name = "t"\neval_interval = 0', "eval_interval: must be >= 1"),
    ("steps = 100", 'steps = 100\nmodel = { plasticity = "high" }',
     r"stages\[0\]\.model\.plasticity: must be a finite"),
    ("steps = 100", "steps = 100\nmodel = 0.5", r"stages\[0\]\.model: must be a table of knob = number"),
    ("synthetic = 1.0", '"../etc" = 1.0, synthetic = 1.0', "source names are directory names"),
    ("synthetic = 1.0", '"synthetic/a/b" = 1.0', "source names are directory names"),
    ("weights = {", "weights = {{", "not valid TOML"),
    ('name = "t"', 'name = "t"\noptimizer = "sgd"', r"bad\.toml\.optimizer: must be one of adamw, muon"),
    ("steps = 100", 'steps = 100\noptimizer = "lion"', r"stages\[0\]\.optimizer: must be one of adamw, muon"),
    ('name = "t"', 'name = "t"\nmuon_lr = 0', r"muon_lr: must be > 0"),
    ("steps = 100", "steps = 100\ndecay_fraction = 0.1", r"decay_fraction: only applies to schedule = \"wsd\""),
    ("steps = 100", 'steps = 100\nschedule = "wsd"\ndecay_fraction = 1.5', r"decay_fraction: must be > 0"),
    ("steps = 100", 'steps = 100\nschedule = "wsd"\ndecay_shape = "cosine"',
     "decay_shape: must be one of linear, 1-sqrt"),
    ("steps = 100", 'steps = 100\n[[stages]]\nname = "b"\nweights = { stories = 1 }\nsteps = 5\nlr = 1e-3\n'
                    'optimizer = "muon"',
     r"stages\[1\]\.optimizer: switching from 'adamw' to 'muon' needs fresh_optimizer"),
])
def test_bad_files_are_refused_with_one_line(tmp_path: Path, old: str, new: str, message: str):
    assert old in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(CurriculumError, match=message) as info:
        load_curriculum(path)
    assert "\n" not in str(info.value) and "bad.toml" in str(info.value)


def test_good_base_file_loads(tmp_path: Path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    (stage,) = load_curriculum(path).stages
    assert (stage.steps, stage.lr, stage.difficulty, stage.schedule) == (100, 1e-3, (1.0, 1.0), "constant")


def test_defaults_table_applies_to_every_stage_and_stages_override(tmp_path: Path):
    path = tmp_path / "d.toml"
    path.write_text(GOOD.replace("[[stages]]", "[defaults]\nwarmup_steps = 7\nsteps = 30\n[[stages]]", 1)
                    + '[[stages]]\nname = "b"\nweights = { chat = 1 }\nlr = 1e-4\nwarmup_steps = 0\n')
    a, b = load_curriculum(path).stages
    assert (a.warmup_steps, a.steps, b.warmup_steps, b.steps) == (7, 100, 0, 30)


def test_one_task_synthetic_sources_are_built_in_and_need_a_difficulty(tmp_path: Path):
    path = tmp_path / "task.toml"
    path.write_text(GOOD.replace("synthetic = 1.0", '"synthetic/arithmetic" = 0.5, stories = 0.2, fineweb = 0.3'))
    curriculum = load_curriculum(path)
    assert curriculum.uses_synthetic()
    assert curriculum.data_sources() == ["fineweb"]
    path.write_text(path.read_text().replace("difficulty = 1\n", ""))
    with pytest.raises(CurriculumError, match="difficulty: missing"):
        load_curriculum(path)


def test_optimizer_and_muon_lr_follow_the_top_level_and_scale_with_lr_mult(tmp_path: Path):
    path = tmp_path / "m.toml"
    path.write_text(
        'base_lr = 1e-3\noptimizer = "muon"\nmuon_lr = 0.04\n'
        + GOOD.replace("lr = 1e-3", "lr_mult = 1.0").replace('name = "t"', "")
        + '[[stages]]\nname = "b"\nweights = { chat = 1 }\nlr_mult = 0.5\nsteps = 5\n'
        + '[[stages]]\nname = "c"\nweights = { chat = 1 }\nlr = 1e-4\nmuon_lr = 0.01\nsteps = 5\n'
          'optimizer = "adamw"\nfresh_optimizer = true\nschedule = "wsd"\ndecay_fraction = 0.5\n')
    a, b, c = load_curriculum(path).stages
    assert (a.optimizer, b.optimizer, c.optimizer) == ("muon", "muon", "adamw")
    assert (a.muon_lr, b.muon_lr, c.muon_lr) == pytest.approx((0.04, 0.02, 0.01))
    assert (c.schedule, c.decay_fraction, c.decay_shape) == ("wsd", 0.5, "1-sqrt")
    (plain,) = load_curriculum(_write(tmp_path / "p.toml", GOOD)).stages
    assert (plain.optimizer, plain.muon_lr) == ("adamw", DEFAULT_MUON_LR)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_model_knobs_are_checked_by_the_model_and_errors_name_the_field(tmp_path: Path):
    path = tmp_path / "knobs.toml"
    path.write_text(GOOD + '[[stages]]\nname = "b"\nweights = { chat = 1 }\nlr = 1e-4\nsteps = 5\n'
                    'model = { plasticity = 0.5, temperature = 2 }\n')
    curriculum = load_curriculum(path)
    assert [s.model_knobs for s in curriculum.stages] == [{}, {"plasticity": 0.5, "temperature": 2.0}]
    seen = []
    curriculum.check_model_knobs(lambda name, value: seen.append((name, value)))
    assert seen == [("plasticity", 0.5), ("temperature", 2.0)]

    def only_plasticity_up_to_one(name, value):
        if name != "plasticity" or value > 1:
            raise CurriculumError(f"no {name} = {value}")

    with pytest.raises(CurriculumError, match=r"knobs.toml: stages\[1\]\.model\.temperature: no temperature = 2.0$"):
        curriculum.check_model_knobs(only_plasticity_up_to_one)
