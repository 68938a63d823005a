"""Curricula that carry the whole recipe and name the evaluations run during training.

Covers the new curriculum keys and their one-line errors, the evaluation schedule (step 0 + interval),
early stop and keep_best on any metric (mode min and max) and the exact resume of that state, the
recipe resolution (curriculum, stage, command line), the files a run writes into RUN/evals/, and a
tiny length study end to end (`hamner study` on two byte-level arms).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hamner.commands import study as study_command
from hamner.errors import CurriculumError
from hamner.tournament.study import StudyError, load_study
from hamner.train.curriculum.controller import CurriculumController
from hamner.train.curriculum.spec import Evaluation, load_curriculum
from hamner.train.settings import TrainSettings, resolve, resolve_run, resume_settings, stage_recipe
from hamner.train.trainer import train

BASE = """\
name = "t"
tokenizer = "bytes"
{top}

[[stages]]
name = "a"
weights = {{ stories = 1.0 }}
lr = 1e-3
{stage}
"""


def curriculum(tmp_path: Path, top: str = "", stage: str = "steps = 10") -> Path:
    path = tmp_path / "t.toml"
    path.write_text(BASE.format(top=top, stage=stage))
    return path


def test_recipe_and_evaluation_keys_parse(tmp_path):
    c = load_curriculum(curriculum(tmp_path, top="""batch_size = 8
grad_accum = 4
seq_len = 64
save_initial_checkpoint = true
keep_best = { metric = "length_ppl@1W" }
[[evaluations]]
kind = "length_gen"
at_start = true
window = 16
multiples = [5, 1, 2]
chunk = 4
stride = 4
tokens = 200
[[evaluations]]
kind = "val_loss"
interval = 7""", stage="""max_steps = 100
seq_len = 32
early_stop = { patience = 2, min_delta = 1.5, metric = "length_ppl@2W" }"""))
    assert (c.batch_size, c.grad_accum, c.seq_len, c.save_initial_checkpoint) == (8, 4, 64, True)
    assert c.stages[0].seq_len == 32 and c.stages[0].batch_size is None
    length = c.evaluations[0]
    assert length.multiples == (1, 2, 5) and length.sequences == 2  # 200 // (5 x 16)
    assert c.metric_names() == ["length_ppl@1W", "length_ppl@2W", "length_ppl@5W", "val_loss"]
    assert (c.keep_best.metric, c.keep_best.mode) == ("length_ppl@1W", "min")
    rule = c.stages[0].early_stop
    assert (rule.metric, rule.mode, rule.patience, rule.min_delta) == ("length_ppl@2W", "min", 2, 1.5)


def test_curricula_without_the_keys_keep_their_behaviour():
    demo = load_curriculum("demo")
    assert demo.scheduled_evaluations() == (Evaluation("val_loss"),)
    assert (demo.batch_size, demo.grad_accum, demo.seq_len, demo.save_initial_checkpoint) == (None,) * 3 + (False,)
    assert load_curriculum("tinygpt-cosine").keep_best.metric == "val_loss"  # keep_best = true


@pytest.mark.parametrize("top, stage, message", [
    ("seq_len = 0", "steps = 10", "t.toml.seq_len: must be >= 1"),
    ("", "steps = 10\ngrad_accum = 1.5", "stages[0].grad_accum: must be an integer"),
    ("[[evaluations]]\nkind = \"nope\"", "steps = 10", "evaluations[0].kind: must be one of"),
    ("[[evaluations]]\nkind = \"val_loss\"\nwindow = 3", "steps = 10", "evaluations[0]: unknown key 'window'"),
    ("[[evaluations]]\nkind = \"length_gen\"\nwindow = 8\nchunk = 16", "steps = 10", "evaluations[0].chunk: must not"),
    ("[[evaluations]]\nkind = \"length_gen\"\nwindow = 8\nchunk = 4\ntokens = 10", "steps = 10",
     "evaluations[0].tokens"),
    ("[[evaluations]]\nkind = \"length_gen\"\n[[evaluations]]\nkind = \"length_gen\"", "steps = 10", "listed twice"),
    ("keep_best = { metric = \"length_ppl@1W\" }", "steps = 10", "keep_best.metric: 'length_ppl@1W' is not reported"),
    ("keep_best = { metric = \"val_loss\", mode = \"up\" }", "steps = 10", "keep_best.mode: must be one of min, max"),
    ("", "max_steps = 9\nearly_stop = { patience = 1, min_delta = 0.0, metric = \"val_bpc\" }",
     "stages[0].early_stop.metric: 'val_bpc' is not reported"),
])
def test_bad_keys_are_one_line_naming_the_field(tmp_path, top, stage, message):
    with pytest.raises(CurriculumError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        load_curriculum(curriculum(tmp_path, top, stage))
    assert "\n" not in str(caught.value)


def test_stage_seq_len_must_fit_the_model(tmp_path):
    c = load_curriculum(curriculum(tmp_path, stage="steps = 10\nseq_len = 4096"))
    with pytest.raises(CurriculumError, match=r"t.toml: stages\[0\].seq_len: 4096 exceeds the model's context"):
        c.check_seq_len(1024)
    settings = TrainSettings(preset="demo", curriculum=str(c.path), device="cpu", out=str(tmp_path / "run"))
    with pytest.raises(Exception, match=r"stages\[0\].seq_len: 4096 exceeds"):
        train(settings)
    assert not (tmp_path / "run").exists()


def test_schedule_is_step_zero_and_the_interval():
    e = Evaluation("length_gen", interval=5, at_start=True)
    assert [s for s in range(0, 21) if e.due(s, 100)] == [0, 5, 10, 15, 20]
    default = Evaluation("val_loss")
    assert [s for s in range(0, 21) if default.due(s, 10)] == [10, 20]


def test_recipe_comes_from_stage_curriculum_then_command_line(tmp_path):
    path = curriculum(tmp_path, top="batch_size = 3\ngrad_accum = 2\nseq_len = 48",
                      stage="steps = 5\n[[stages]]\nname = \"b\"\nweights = { stories = 1.0 }\nlr = 1e-3\n"
                            "steps = 5\nseq_len = 24\ngrad_accum = 3")
    s, c, _ = resolve_run(TrainSettings(preset="demo", curriculum=str(path), device="cpu"))
    assert (s.batch_size, s.grad_accum, s.seq_len) == (3, 2, 48)
    assert [tuple(vars(stage_recipe(s, st)).values()) for st in c.stages] == [(3, 2, 48), (3, 3, 24)]
    s, c, _ = resolve_run(TrainSettings(preset="demo", curriculum=str(path), device="cpu", seq_len=16))
    assert [stage_recipe(s, st).seq_len for st in c.stages] == [16, 16]  # the command line wins everywhere
    plain = resolve(TrainSettings(preset="demo"), torch.device("cpu"), load_curriculum("demo"))
    assert (plain.batch_size, plain.grad_accum, plain.seq_len) == (12, 1, 128)


def _metric_curriculum(tmp_path: Path, mode: str) -> CurriculumController:
    path = curriculum(tmp_path, top=f"keep_best = {{ metric = \"task_accuracy\", mode = \"{mode}\" }}\n"
                                     "[[evaluations]]\nkind = \"tasks\"\n[[evaluations]]\nkind = \"val_loss\"",
                      stage=f"max_steps = 100\nearly_stop = {{ patience = 2, min_delta = 0.05, "
                            f"metric = \"task_accuracy\", mode = \"{mode}\" }}")
    return CurriculumController(load_curriculum(path))


def test_early_stop_and_best_follow_a_max_metric_and_resume_exactly(tmp_path):
    ctrl = _metric_curriculum(tmp_path, "max")
    assert ctrl.record_metrics({"task_accuracy": 0.2}) is True
    assert ctrl.record_metrics({"val_loss": 1.0}) is False  # not the followed metric: no strike, no best
    assert ctrl.record_metrics({"task_accuracy": 0.5}) is True
    assert ctrl.record_metrics({"task_accuracy": 0.52}) is True  # a new best, yet under min_delta: a strike
    assert ctrl.end_reason() is None
    resumed = _metric_curriculum(tmp_path, "max")
    resumed.load_state_dict(json.loads(json.dumps(ctrl.state_dict())))
    for c in (ctrl, resumed):
        assert c.record_metrics({"task_accuracy": 0.1}) is False
        assert c.end_reason() == "early_stop" and c.best_value == 0.52
    low = _metric_curriculum(tmp_path, "min")
    assert [low.record_metrics({"task_accuracy": v}) for v in (0.5, 0.6, 0.4)] == [True, False, True]


def test_old_controller_state_still_resumes():
    ctrl = CurriculumController(load_curriculum("ttt-extended"))
    state = ctrl.state_dict()
    state["best_val_loss"] = state.pop("best_value")
    ctrl.load_state_dict(state)
    assert ctrl.best_value is None


def test_shipped_ttt_study_has_the_original_numbers():
    c = load_curriculum("ttt-extended")
    stage = c.stages[0]
    assert (c.batch_size, c.grad_accum, c.seq_len, c.eval_interval) == (8, 4, 64, 2041)
    assert (stage.lr, stage.schedule, stage.warmup_steps, stage.max_steps) == (3e-4, "cosine", 2000, 100_000)
    length = next(e for e in c.evaluations if e.kind == "length_gen")
    assert (length.window, length.chunk, length.stride, length.multiples, length.at_start) == (
        64, 16, 16, (1, 2, 5, 10, 20), True)
    assert (stage.early_stop.metric, stage.early_stop.min_delta, stage.early_stop.patience) == ("length_ppl@1W", 50, 10)
    assert c.keep_best.metric == "length_ppl@1W" and c.save_initial_checkpoint
    spec = load_study("ttt-length")
    assert [(a.name, a.preset) for a in spec.arms] == [("ttt", "ttt-125m"), ("swa", "swa-125m")]


def test_bad_study_spec_is_one_line(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('curriculum = "demo"\n[[arms]]\nname = "a"\npreset = "demo"\n'
                    '[[arms]]\nname = "b"\npreset = "demo"\n')
    with pytest.raises(StudyError, match="has no \\[\\[evaluations\\]\\] of kind \"length_gen\""):
        load_study(str(path))


TINY = """\
name = "tiny-length"
tokenizer = "bytes"
batch_size = 2
grad_accum = 2
seq_len = 8
eval_interval = 4
save_initial_checkpoint = true
keep_best = { metric = "length_ppl@1W" }

[[evaluations]]
kind = "length_gen"
at_start = true
window = 8
chunk = 4
stride = 4
multiples = [1, 3]
tokens = 48

[[evaluations]]
kind = "val_loss"
interval = 8

[[stages]]
name = "s"
max_steps = 40
weights = { stories = 1.0 }
lr = 3e-3
schedule = "cosine"
early_stop = { patience = 1, min_delta = 1e6, metric = "length_ppl@1W" }
"""
SPEC = """\
name = "tiny"
curriculum = "tiny-length.toml"
save_interval = 4
keep_checkpoints = 10
device = "cpu"
threads = 1
eval_batches = 1
task_samples = 0
[[arms]]
name = "ttt"
preset = "demo"
[arms.model]
n_layers = 1
hidden_size = 32
n_heads = 2
n_kv_heads = 2
intermediate_size = 64
mixer = "ttt_linear"
ttt_mini_batch = 4
[[arms]]
name = "swa"
preset = "demo"
[arms.model]
n_layers = 1
hidden_size = 32
n_heads = 2
n_kv_heads = 2
intermediate_size = 64
mixer = "swa"
window = 8
"""


def test_tiny_length_study_end_to_end(tmp_path, capsys):
    (tmp_path / "tiny-length.toml").write_text(TINY)
    (tmp_path / "tiny.toml").write_text(SPEC)
    out = tmp_path / "study"
    assert study_command.main([str(tmp_path / "tiny.toml"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| ratio swa / ttt |" in table
    for arm in ("ttt", "swa"):
        run = out / arm
        summaries = json.loads((run / "evals" / "all_summaries.json").read_text())
        # step 0, then every 4 steps until early stop (min_delta is out of reach: the second evaluation is a strike)
        assert [s["step"] for s in summaries] == [0, 4]
        assert set(summaries[0]["metrics"]) == {"length_ppl@1W", "length_ppl@3W"}
        assert "val_loss" not in summaries[1]["metrics"]  # its interval is 8
        assert json.loads((run / "evals" / "step-4.json").read_text()) == summaries[1]
        meta = json.loads((run / "evals" / "metadata.json").read_text())
        assert meta["results"]["last_stage_end"]["reason"] == "early_stop" and meta["results"]["step"] == 4
        best = meta["results"]["best"]
        assert best["value"] == min(s["metrics"]["length_ppl@1W"] for s in summaries)
        assert meta["stages"][0]["seq_len"] == 8 and meta["stages"][0]["grad_accum"] == 2
        assert {"initial", "best"} <= {p.name for p in (run / "checkpoints").iterdir()}
        rows = (run / "evals.csv").read_text().splitlines()
        assert rows[0] == "step,stage,metric,value" and rows[1].startswith("0,s,length_ppl@1W,")
    report = json.loads((out / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["ttt", "swa"] and "swa" in report["comparisons"]
    assert (out / "comparison-swa.png").is_file() and (out / "evolution-ttt.png").is_file()
    # rerunning skips the finished arms and rewrites the same report
    assert study_command.main([str(tmp_path / "tiny.toml"), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["comparisons"] == report["comparisons"]


def test_resume_restores_the_evaluations_and_the_metric_state(tmp_path):
    path = tmp_path / "tiny-length.toml"
    path.write_text(TINY.replace("patience = 1, min_delta = 1e6", "patience = 2, min_delta = 0.5"))

    def run(out: Path, max_steps: int, resume: bool = False) -> None:
        if resume:
            train(resume_settings(out, {"resume": str(out), "max_steps": max_steps, "device": "cpu"}))
        else:
            train(TrainSettings(preset="demo", curriculum=str(path), out=str(out), device="cpu", threads=1, seed=3,
                                max_steps=max_steps, eval_batches=1, task_samples=0, sample_tokens=0, log_interval=4))

    run(tmp_path / "whole", 16)
    run(tmp_path / "split", 8)
    run(tmp_path / "split", 16, resume=True)
    whole, split = ((tmp_path / name / "evals" / "all_summaries.json").read_text() for name in ("whole", "split"))
    assert [s["step"] for s in json.loads(whole)][:2] == [0, 4] and whole == split
    meta = [json.loads((tmp_path / name / "evals" / "metadata.json").read_text())["results"]
            for name in ("whole", "split")]
    assert meta[0]["best"] == meta[1]["best"] and meta[0]["step"] == meta[1]["step"]
