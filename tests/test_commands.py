"""The `hamner` command: `hamner --help` lists every subcommand, each has --help, and each runs its module's main."""
import importlib
import inspect
import subprocess
from pathlib import Path

import pytest

from hamner.commands.dispatcher import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("train", "chat", "eval", "export", "prepare", "plot", "status", "tournament")


def test_help_lists_every_subcommand(python, subprocess_env, tmp_path):
    done = subprocess.run([python, "-m", "hamner", "--help"], cwd=tmp_path, env=subprocess_env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("commands:\n", 1)[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in listed] == list(COMMANDS)
    assert set(SUBCOMMANDS) <= set(COMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help_under_its_hamner_name(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hamner {name} ") and "--help" in out


def test_every_entry_names_a_module_whose_main_takes_argv_and_prog():
    for name, entry in COMMANDS.items():
        params = inspect.signature(importlib.import_module(entry.module).main).parameters
        assert list(params)[:2] == ["argv", "prog"], name
        assert entry.summary and "\n" not in entry.summary


def test_a_missing_or_unknown_subcommand_is_one_error_line(capsys):
    for argv, message in (([], "required: COMMAND"), (["fly"], "invalid choice: 'fly'")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and message in err


def test_the_top_level_scripts_are_the_same_commands(python, subprocess_env):
    """train.py runs in a process in test_train_cli and test_cli_errors; chat.py's --help runs here."""
    done = subprocess.run([python, "chat.py", "--help"], cwd=ROOT, env=subprocess_env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: chat.py "), done.stderr
    for script, name in (("train.py", "train"), ("chat.py", "chat")):
        assert f"from {COMMANDS[name].module} import main" in (ROOT / script).read_text()
