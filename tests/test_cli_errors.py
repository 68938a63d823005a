"""Every command ends a user error the same way: one `error: ...` line on stderr, exit status 2, no traceback."""
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoint import save_tiny_run, tiny_config

from hamner.commands.eval import main as eval_main
from hamner.commands.parsing import ArgumentParser, command
from hamner.device import pick_device
from hamner.errors import (
    CheckpointError,
    ConfigError,
    CurriculumError,
    DataError,
    DeviceError,
    EvalError,
    ExportError,
    HamnerError,
    InferenceError,
    PlotError,
    TournamentError,
    TrainError,
)
from hamner.model.transformer import HamnerModel
from hamner.use.hf import export_hf

ROOT = Path(__file__).resolve().parent.parent

MIDDLE_60 = """\
name = "too-deep"
tokenizer = "bytes"
[[stages]]
name = "only"
steps = 5
weights = { stories = 1.0 }
lr = 1e-3
layer_lr_scale = { layers = "middle:60", scale = 2.0 }
"""


def bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    """(command line, text the error line must hold) for each command; paths under `tmp`."""
    (tmp / "a-file").write_text("not a directory")
    (tmp / "deep.toml").write_text(MIDDLE_60)
    missing = str(tmp / "missing")
    train = ["train.py", "--preset", "demo", "--max-steps", "1"]
    return [
        ([*train, "--out", str(tmp / "a-file")], "is a file"),
        ([*train, "--curriculum", str(tmp / "deep.toml"), "--out", str(tmp / "run-a")], "needs at least 60 layers"),
        (["-m", "hamner", "chat", "--checkpoint", missing], "no checkpoint at"),
        (["-m", "hamner", "train", "--preset", "demo", "--seed", "-1", "--out", str(tmp / "run-b")],
         "--seed must not be negative"),
        (["-m", "hamner", "eval", missing], "no checkpoint at"),
        (["-m", "hamner", "export", missing, str(tmp / "out")], "no checkpoint at"),
        (["-m", "hamner", "plot", missing], "no such run directory"),
        (["-m", "hamner", "prepare", missing, "--out", str(tmp / "o"), "--tokenizer", "bytes"], "no such file"),
        (["bench/bench_reader.py", missing, "--tokenizer", "bytes"], "no such data directory"),
    ]


def test_every_command_reports_bad_input_on_one_line(tmp_path, python, subprocess_env):
    cases = bad_inputs(tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:  # each process mostly waits on imports: two at a time
        runs = pool.map(lambda argv: subprocess.run([python, *argv], cwd=ROOT, env=subprocess_env,
                                                    capture_output=True, text=True, timeout=300),
                        [argv for argv, _ in cases])
    for (argv, message), done in zip(cases, runs):
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and "Traceback" not in done.stderr, (argv, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (argv, done.stderr)
    assert not any((tmp_path / run / "checkpoints").exists() for run in ("run-a", "run-b"))


def test_every_user_error_is_a_hamner_error():
    for cls in (CheckpointError, ConfigError, CurriculumError, DataError, DeviceError, EvalError, ExportError,
                InferenceError, PlotError, TournamentError, TrainError):
        assert issubclass(cls, HamnerError)
        assert not issubclass(cls, ValueError)  # raised where found, never caught as a ValueError to convert


PROBLEMS = {"user": TrainError("bad\nsetting"), "disk": OSError(28, "No space left on device"),
            "ctrl-c": KeyboardInterrupt(), "bug": RuntimeError("a bug")}


@command(interrupted="stopped; nothing lost")
def raising_command(argv: list[str]) -> int:
    raise PROBLEMS[argv[0]]


def test_the_wrapper_turns_errors_into_exit_codes(capsys):
    assert raising_command(["user"]) == 2 and capsys.readouterr().err == "error: bad setting\n"
    assert raising_command(["disk"]) == 2 and "No space left" in capsys.readouterr().err
    assert raising_command(["ctrl-c"]) == 130 and capsys.readouterr().err == "error: stopped; nothing lost\n"
    with pytest.raises(RuntimeError, match="a bug"):
        raising_command(["bug"])


def test_an_unknown_or_missing_device_is_a_device_error():
    """One pick_device for every command: its error is a HamnerError (one line, exit 2) by itself."""
    for name in ("gpu", "cuda:7" if not torch.cuda.is_available() else "nope"):
        with pytest.raises(DeviceError) as info:
            pick_device(name)
        assert "\n" not in str(info.value)


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        ArgumentParser(prog="demo").parse_args(["--nope"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --nope (see demo --help)\n"


def test_eval_reads_a_sharded_hugging_face_directory(tmp_path, capsys):
    """A directory saved in shards (model.safetensors.index.json) evaluates like a single-file one."""
    model = save_tiny_run(tmp_path / "run", tiny_config(max_seq_len=32))
    hf = export_hf(model, model.config, tmp_path / "hf", eos_id=256)
    tensors = load_file(str(hf / "model.safetensors"))
    (hf / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(hf / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert eval_main([str(hf), "--quick", "--samples", "1", "--difficulties", "1", "--device", "cpu"]) == 0
    report = json.loads((hf / "eval.json").read_text())
    assert report["checkpoint"] == str(hf) and report["parameters"] == model.num_parameters()
    reloaded = HamnerModel(tiny_config(max_seq_len=32))
    assert report["model"]["n_layers"] == reloaded.config.n_layers and "synthetic tasks" in capsys.readouterr().out
