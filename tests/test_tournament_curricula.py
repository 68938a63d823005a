"""Tournament entrants with curricula of their own: the spec's checks, curricula fitted to a round's budget
(stage proportions kept, the same batches for every entrant), plan.json noticing a changed curriculum, a
tiny run whose entrants differ only in their plasticity, `--data` for prepared sources, and the shipped
plasticity studies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from train_helpers import metrics

from hamner.commands.tournament import main
from hamner.data.shards import write_meta, write_shard
from hamner.data.tokenizer import load_tokenizer
from hamner.errors import TournamentError
from hamner.toml_table import dump_toml, read_toml
from hamner.tournament import runs
from hamner.tournament.fitting import fit_curriculum, fittable
from hamner.tournament.report import write_report
from hamner.tournament.rounds import run_tournament, size_entrants
from hamner.tournament.spec import load_spec
from hamner.train.curriculum.spec import load_curriculum
from hamner.use.load import load_model

pytestmark = pytest.mark.usefixtures("single_thread")

STAGES = """\
name = "{name}"
tokenizer = "bytes"
bits_per_byte = true

[[stages]]
name = "early"
until_step = 3
weights = {{ stories = 1.0 }}
lr = 3e-3
warmup_steps = 2
{early}
[[stages]]
name = "middle"
until_step = 8
weights = {{ {middle} = 1.0 }}
lr = 3e-3
{knob_middle}
[[stages]]
name = "late"
until_step = 20
weights = {{ stories = 1.0 }}
lr = 3e-3
schedule = "cosine"
decay_steps = 10
{knob_late}
"""

SPEC = """\
name = "knobs"
base = "demo"
seeds = [5]
batch_size = 2
seq_len = 16
lr = 3e-3
evals = 10
eval_batches = 1
task_samples = 0
threads = 1
device = "cpu"
{top}

[model]
hidden_size = 32
n_layers = 2
n_heads = 2
n_kv_heads = 1
intermediate_size = 64
max_seq_len = 64
mixer = "swa+hebbian"
window = 8

[[rounds]]
tokens = {tokens}

[[entrants]]
name = "fixed"
resize = false

[[entrants]]
name = "schedule"
resize = false
curriculum = "{schedule}"
{extra}
"""


def write_curriculum(directory: Path, name: str, early: str = "", middle: str = "stories", knob_middle: str = "",
                     knob_late: str = "") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(STAGES.format(name=name, early=early, middle=middle, knob_middle=knob_middle,
                                  knob_late=knob_late))
    return path


def write_spec(directory: Path, tokens: int = 320, extra: str = "", schedule: str | None = None,
               top: str | None = None) -> Path:
    """A two-entrant spec: `fixed` on the spec's plain curriculum, `schedule` on its own 0.10/0.50/0.99 one."""
    plain = write_curriculum(directory, "plain")
    if schedule is None:
        schedule = str(write_curriculum(directory, "sched", early="model = { plasticity = 0.10 }",
                                        knob_middle="model = { plasticity = 0.50 }",
                                        knob_late="model = { plasticity = 0.99 }"))
    path = directory / "knobs.toml"
    path.write_text(SPEC.format(tokens=tokens, extra=extra, schedule=schedule,
                                top=f'curriculum = "{plain}"' if top is None else top))
    return path


def test_dump_toml_reads_back_equal(tmp_path):
    table = {"name": 'a "quoted"\nname', "lr": 1e-05, "n": 3, "flag": False, "ramp": [1, 2.5],
             "weights": {"synthetic/arithmetic": 0.5, "stories": 0.5}, "sources": {"chat": {"loss": "assistant"}},
             "stages": [{"name": "one", "model": {"plasticity": [0.1, 0.99]}}, {"name": "two", "steps": 4}]}
    (tmp_path / "t.toml").write_text(dump_toml(table))
    assert read_toml(tmp_path / "t.toml", "t.toml", TournamentError) == table


def test_a_curriculum_is_fitted_to_a_budget_keeping_its_stage_proportions(tmp_path):
    curriculum = load_curriculum(write_curriculum(tmp_path, "plain"))  # stages end at 3, 8, 20
    (tmp_path / "fitted.toml").write_text(fit_curriculum(curriculum, 40))
    fitted = load_curriculum(tmp_path / "fitted.toml")
    assert [s.steps for s in fitted.stages] == [6, 10, 24]
    assert (fitted.stages[0].warmup_steps, fitted.stages[2].decay_steps) == (4, 20)
    assert fitted.name == "plain" and fitted.bits_per_byte
    (tmp_path / "short.toml").write_text(fit_curriculum(curriculum, 4))  # every stage keeps a step
    short = load_curriculum(tmp_path / "short.toml")
    assert [s.steps for s in short.stages] == [1, 1, 2]
    assert short.stages[0].warmup_steps == 0 and short.stages[2].decay_steps is None  # cosine over the stage
    with pytest.raises(TournamentError, match="curriculum 'plain' has 3 stages, more than the 2 steps"):
        fit_curriculum(curriculum, 2)
    early = tmp_path / "early.toml"  # a fixed-length stage that an early stop may cut short
    early.write_text((tmp_path / "plain.toml").read_text().replace(
        "decay_steps = 10\n", "decay_steps = 10\nearly_stop = { patience = 1, min_delta = 0.0 }\n"))
    with pytest.raises(TournamentError, match=r"early\.toml: stages\[2\] ends on a plateau or early stop"):
        fittable(load_curriculum(early))


def test_entrant_curricula_are_checked_when_the_spec_loads(tmp_path, capsys):
    spec = load_spec(write_spec(tmp_path))
    assert [e.curriculum for e in spec.entrants] == [str(tmp_path / "plain.toml"), str(tmp_path / "sched.toml")]
    assert spec.data_sources == ()
    with pytest.raises(TournamentError, match=r"knobs\.toml\.entrants\[1\] \(schedule\)\.curriculum: unknown "
                                              r"curriculum 'nope'"):
        load_spec(write_spec(tmp_path, schedule="nope"))
    other = write_curriculum(tmp_path, "other", middle="chat")
    with pytest.raises(TournamentError, match=r"entrants\[1\] \(schedule\)\.curriculum: curriculum '.*other\.toml' "
                                              r"draws other data than curriculum '.*plain\.toml' of entrant fixed "
                                              r"\(stages\[1\]\.weights differ\)"):
        load_spec(write_spec(tmp_path, schedule=str(other)))
    plateau = tmp_path / "plateau.toml"
    plateau.write_text(other.read_text().replace("until_step = 20", "max_steps = 20\nplateau = { check_every = 1, "
                       "min_steps = 2, window = 1, recent = 1, threshold = 0.1, strikes = 1 }"))
    with pytest.raises(TournamentError, match=r"entrants\[1\] \(schedule\)\.curriculum: plateau\.toml: stages\[2\] "
                                              "ends on a plateau or early stop"):
        load_spec(write_spec(tmp_path, schedule=str(plateau)))
    # with no top-level data, every entrant needs a curriculum of its own
    no_data = write_spec(tmp_path, top="")
    assert main([str(no_data)]) == 2
    assert "knobs.toml: give a [data] table (one-stage mix) or curriculum = NAME" in capsys.readouterr().err
    plain = tmp_path / "plain.toml"
    own = no_data.read_text().replace('name = "fixed"\nresize = false\n',
                                      f'name = "fixed"\nresize = false\ncurriculum = "{plain}"\n')
    (tmp_path / "own.toml").write_text(own)
    assert load_spec(tmp_path / "own.toml").entrants[0].curriculum == str(tmp_path / "plain.toml")
    # the model knobs a curriculum sets are checked against the entrant's model before anything trains
    learnt = write_spec(tmp_path).read_text().replace(
        'name = "schedule"\nresize = false\n', 'name = "schedule"\nresize = false\n'
        'model = { hebbian_learnt_plasticity = true }\n')
    (tmp_path / "learnt.toml").write_text(learnt)
    with pytest.raises(TournamentError, match=r"entrant schedule: sched\.toml: stages\[0\]\.model\.plasticity: "
                                              "the plasticity is learnt"):
        size_entrants(load_spec(tmp_path / "learnt.toml"))


def test_entrants_on_their_own_curricula_train_the_same_stages_and_tokens(tmp_path):
    out = tmp_path / "t"
    outcome = run_tournament(load_spec(write_spec(tmp_path)), out, say=lambda _: None)
    stages = {}
    for name in ("fixed", "schedule"):
        run = out / "round-1" / name / "seed-5"
        rows = metrics(run)
        stages[name] = [(r["step"], r["stage"], r["tokens"]) for r in rows]
        assert rows[-1]["step"] == "10" and rows[-1]["tokens"] == "320"
        assert (out / "curricula" / name).is_dir() and json.loads((run / "plan.json").read_text())["steps"] == 10
    assert stages["fixed"] == stages["schedule"]  # budget 10 steps: stages end at 2, 4 and 10 (of 3, 8, 20)
    assert [s for _, s, _ in stages["fixed"]] == ["early"] * 2 + ["middle"] * 2 + ["late"] * 6
    plasticity = {name: {round(v.item(), 6) for k, v in load_model(
        out / "round-1" / name / "seed-5" / "checkpoints" / "stage-0-end")[0].state_dict().items()
        if k.endswith("plasticity")} for name in ("fixed", "schedule")}
    assert plasticity == {"fixed": {0.99}, "schedule": {0.10}}
    assert all(r[0].tokens == 320 for r in outcome.rounds[0].results.values())
    report = write_report(outcome, out)
    assert [e["curriculum"] for e in report["entrants"] if e["name"] == "schedule"] == [str(tmp_path / "sched.toml")]
    text = (out / "report.md").read_text()
    assert "No entrant is resized (resize = false); all train on the same batches" in text
    assert "each trains its curriculum fitted to the round's steps (fixed: `plain`, schedule: `sched`)" in text


def test_a_changed_entrant_curriculum_is_refused_or_restarted(tmp_path):
    spec_path = write_spec(tmp_path, tokens=96)
    out = tmp_path / "t"
    run_tournament(load_spec(spec_path), out, say=lambda _: None)
    # the schedule entrant now trains the plain curriculum: its run, not the other's, is stale
    spec_path.write_text(spec_path.read_text().replace(str(tmp_path / "sched.toml"), str(tmp_path / "plain.toml")))
    with pytest.raises(runs.StaleRun, match=r"entrant schedule: .* data\.curriculum changed \('sched-3-steps\.toml' "
                                            r"-> 'plain-3-steps\.toml'\)"):
        run_tournament(load_spec(spec_path), out, say=lambda _: None)
    said = []
    run_tournament(load_spec(spec_path), out, say=said.append, restart_changed=True)
    assert [s for s in said if s.startswith(("restarting", "training"))] == [
        f"restarting {out / 'round-1/schedule/seed-5'}: data.curriculum changed since it was trained",
        f"training {out / 'round-1/schedule/seed-5'} (3 steps, lr 0.003, seed 5)"]
    # an edit inside the curriculum file changes what the fitted copy holds
    plain = tmp_path / "plain.toml"
    plain.write_text(plain.read_text().replace("lr = 3e-3\nschedule", "lr = 2e-3\nschedule"))
    with pytest.raises(runs.StaleRun, match=r"entrant fixed: .* data\.sha256 changed"):
        run_tournament(load_spec(spec_path), out, say=lambda _: None)


def test_data_names_the_directory_of_prepared_sources(tmp_path, capsys):
    plain = write_curriculum(tmp_path, "plain-tales", middle="tales")  # its middle stage reads prepared shards
    schedule = write_curriculum(tmp_path, "sched-tales", middle="tales", early="model = { plasticity = 0.10 }")
    spec = write_spec(tmp_path, tokens=96, schedule=str(schedule), top=f'curriculum = "{plain}"')
    assert load_spec(spec).data_sources == ("tales",)
    argv = [str(spec), "--out", str(tmp_path / "t")]
    assert main(argv) == 2
    assert "knobs.toml: its runs read prepared sources (tales); give --data DIR" in capsys.readouterr().err
    data = tmp_path / "data"
    assert main([*argv, "--data", str(data)]) == 2
    assert f"no prepared source tales ({data / 'tales'} does not exist)" in capsys.readouterr().err
    tokens = np.frombuffer(b"Once upon a time a small fox found a red ball. " * 40, dtype=np.uint8).astype(np.int64)
    write_shard(data / "tales" / "train_000000.bin", tokens)
    write_shard(data / "tales" / "val_000000.bin", tokens[:600])
    bytes_tokenizer = load_tokenizer("bytes")
    write_meta(data / "tales", {"tokenizer": bytes_tokenizer.name,
                                "tokenizer_fingerprint": bytes_tokenizer.fingerprint})
    assert main([*argv, "--data", str(data)]) == 0
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert {e["name"]: e["tokens"] for e in report["entrants"]} == {"fixed": 96, "schedule": 96}
    run = tmp_path / "t" / "round-1" / "fixed" / "seed-5"
    assert [r["stage"] for r in metrics(run)] == ["early", "middle", "late"]  # one step each, the middle on tales
    assert json.loads((run / "config.json").read_text())["settings"]["data"] == str(data)


@pytest.mark.parametrize("name", ["plasticity-demo", "plasticity"])
def test_the_shipped_plasticity_studies_give_every_arm_one_model_and_the_same_data(name):
    spec = load_spec(name)
    assert [e.name for e in spec.entrants] == ["fixed", "schedule", "per-layer", "learnt"]
    sized = size_entrants(spec)  # the curricula's knobs fit the models
    configs = {n: s.resized.config for n, s in sized.items()}
    assert configs["learnt"].hebbian_learnt_plasticity and not configs["fixed"].hebbian_learnt_plasticity
    assert len({c.to_dict().__repr__() for n, c in configs.items() if n != "learnt"}) == 1
    assert len(spec.rounds) == 1 and spec.rounds[0].entrants == 4 and len(spec.rounds[0].seeds) >= 2
    assert spec.data_sources == (() if name == "plasticity-demo" else ("children_stories", "dictionary",
                                                                      "encyclopedia"))
