"""The one TOML table reader behind curricula, tournament specs and model files: the same one-line
messages naming `where.key`, raised as the error class each caller names."""
from __future__ import annotations

import pytest

from hamner.errors import ConfigError, CurriculumError, HamnerError, TournamentError
from hamner.model.config import load_model_file, model_config
from hamner.toml_table import TomlTable, read_toml

TABLE = {"steps": 10.5, "lr": "x", "warmup": -1, "flag": 1, "mode": "fast", "seeds": [1, 1], "name": ""}


@pytest.mark.parametrize("read, message", [
    (lambda t: t.integer("steps"), "f.toml: stages[2].steps: must be an integer, got 10.5"),
    (lambda t: t.integer("warmup", minimum=0), "f.toml: stages[2].warmup: must be >= 0, got -1"),
    (lambda t: t.number("lr"), "f.toml: stages[2].lr: must be a finite number, got 'x'"),
    (lambda t: t.number("warmup", low=0.0, high=1.0), "f.toml: stages[2].warmup: must be >= 0.0 and <= 1.0, got -1"),
    (lambda t: t.flag("flag", False), "f.toml: stages[2].flag: must be true or false, got 1"),
    (lambda t: t.text("name"), "f.toml: stages[2].name: must be a non-empty string, got ''"),
    (lambda t: t.text("mode", choices=("slow", "steady")), "f.toml: stages[2].mode: must be one of slow, steady, "
                                                           "got 'fast'"),
    (lambda t: t.int_list("seeds", None), "f.toml: stages[2].seeds: repeats a value: [1, 1]"),
    (lambda t: t.typed("flag", (bool,), "bool"), "f.toml: stages[2].flag: must be bool, got 1"),
    (lambda t: t.required("steps", "absent"), "f.toml: stages[2]: missing required key 'absent'"),
])
@pytest.mark.parametrize("error", [CurriculumError, TournamentError, ConfigError])
def test_every_problem_is_one_line_naming_the_field_in_the_callers_error(read, message, error):
    table = TomlTable(TABLE, "f.toml: stages[2]", None, error)
    with pytest.raises(error) as info:
        read(table)
    assert str(info.value) == message and isinstance(info.value, HamnerError)


def test_unknown_keys_and_non_tables_are_refused():
    with pytest.raises(CurriculumError, match=r"^t: unknown key 'lr' \(allowed: a, b\)$"):
        TomlTable({"a": 1, "lr": 2}, "t", ("b", "a"), CurriculumError)
    with pytest.raises(TournamentError, match=r"^t: must be a table, got 3$"):
        TomlTable(3, "t", None, TournamentError)
    assert TomlTable({"any": 1}, "t", None, ConfigError).integer("missing", 4) == 4


def test_unreadable_and_malformed_files_name_the_file(tmp_path):
    (tmp_path / "bad.toml").write_text("x = \n")
    with pytest.raises(ConfigError, match="^model file .*bad.toml: not valid TOML: "):
        read_toml(tmp_path / "bad.toml", f"model file {tmp_path / 'bad.toml'}", ConfigError)
    with pytest.raises(CurriculumError, match="^gone: cannot read it"):
        read_toml(tmp_path / "gone.toml", "gone", CurriculumError)


def test_model_file_mistakes_are_config_errors(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text("n_layers = 2.5\n")
    with pytest.raises(ConfigError, match=r"model\.toml\.n_layers: must be int, got 2\.5$"):
        load_model_file(path, model_config("demo"))
