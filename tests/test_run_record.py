"""Settings have one source (every field has a flag, every flag a field); a run records what ran
(code and library versions, its curriculum's text) and --resume trains on that record; keep_best is
honoured; validation of a ramped curriculum stays at one difficulty."""
import json
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import torch
from train_helpers import metrics, tiny_settings, write_curriculum

from hamner.commands import train as train_cli
from hamner.data.synthetic import SyntheticSource
from hamner.train.curriculum.spec import load_curriculum
from hamner.train.evaluation import VALIDATION_SEED
from hamner.train.run_record import git_state
from hamner.train.settings import RunSettings, TrainSettings, flag, resolve, resume_settings
from hamner.train.trainer import train as run_training

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = {"model", "tokenizer", "data", "init_from", "resume", "max_steps", "threads",
            "optimizer", "time_budget"}  # None = really absent (optimizer: each stage's own; time_budget: no limit)


def test_every_setting_has_one_flag_with_its_help_and_every_flag_a_setting():
    parser = train_cli.build_parser()
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings[0] != "-h"}
    assert set(actions) == {flag(f.name) for f in fields(TrainSettings)}
    for f in fields(TrainSettings):
        assert actions[flag(f.name)].help.startswith(f.metadata["help"]), f.name
    assert [f.name for f in fields(RunSettings)] == [f.name for f in fields(TrainSettings)]
    hints = get_type_hints(RunSettings)
    assert {name for name, kind in hints.items() if type(None) in getattr(kind, "__args__", ())} == OPTIONAL
    resolved = resolve(TrainSettings(preset="demo"), torch.device("cpu"), load_curriculum("demo"))
    assert all(getattr(resolved, f.name) is not None for f in fields(RunSettings) if f.name not in OPTIONAL)
    assert (resolved.batch_size, resolved.dtype, resolved.stage) == (12, "fp32", 0)


def test_resume_with_out_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    code = train_cli.main(["--resume", str(tmp_path / "run"), "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--out must not be given" in err, err


def test_a_run_records_what_ran_and_resume_uses_its_own_curriculum_copy(tmp_path):
    curriculum = write_curriculum(tmp_path, first=2, second=2)
    text = curriculum.read_text()
    whole = tmp_path / "whole"
    run_training(tiny_settings(whole, curriculum, max_steps=4))
    parts = tmp_path / "parts"
    run_training(tiny_settings(parts, curriculum, max_steps=2))
    config = json.loads((parts / "config.json").read_text())
    copy = parts / config["curriculum_copy"]
    assert copy.read_text() == text and copy.parent == parts / "curriculum"
    env = config["environment"]
    assert env["torch"].startswith(torch.__version__.split("+")[0])
    assert env["python"] and env["numba"] and "triton" in env
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode == 0 and git_state()["commit"] is not None:
        assert env["git_commit"] == head.stdout.strip() and isinstance(env["git_dirty"], bool)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}

    # Edit the original between stop and resume: a 100x learning rate would change every loss.
    curriculum.write_text(text.replace("lr = 2e-3", "lr = 2e-1").replace("lr = 3e-3", "lr = 3e-1"))
    run_training(resume_settings(parts, {"max_steps": 4}))
    expected = [(r["step"], r["loss"], r["lr"]) for r in metrics(whole)]
    assert [(r["step"], r["loss"], r["lr"]) for r in metrics(parts)] == expected


def test_keep_best_false_writes_no_best_and_validation_keeps_one_difficulty(tmp_path, monkeypatch):
    curriculum = write_curriculum(tmp_path, first=3, second=3, eval_interval=2)  # stage 2 ramps 1 -> 2
    curriculum.write_text(curriculum.read_text().replace("keep_best = true", "keep_best = false"))
    asked = []
    rows = SyntheticSource.rows

    def spy(self, n_rows, row_len, seed, difficulty):
        if seed == VALIDATION_SEED:
            asked.append(difficulty)
        return rows(self, n_rows, row_len, seed, difficulty)

    monkeypatch.setattr(SyntheticSource, "rows", spy)
    run = tmp_path / "run"
    run_training(tiny_settings(run, curriculum))
    assert [r["step"] for r in metrics(run) if r["val_loss"]] == ["2", "4", "6"]  # both stages validated
    assert asked == [2.0, 2.0, 2.0]  # the highest difficulty the curriculum trains at, every time
    assert json.loads((run / "config.json").read_text())["validation_difficulty"] == {"synthetic": 2.0}
    assert not (run / "checkpoints" / "best").exists() and (run / "checkpoints" / "stage-1-end").is_dir()
