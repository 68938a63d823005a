"""`python train.py`: --help documents every flag; each bad input is one `error: ...` line with exit 2."""
import subprocess
from pathlib import Path

import pytest
from train_helpers import tiny_flags, write_curriculum

import hamner.commands.chat as chat
import hamner.commands.train as train
from hamner.errors import TrainError
from hamner.model.config import model_config
from hamner.train.settings import TrainSettings, resolve_run
from hamner.train.startup import checked_model_config, checked_tokenizer
from hamner.use.load import load_model

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--preset", "--curriculum", "--data", "--out", "--resume", "--stage", "--init-from", "--max-steps",
         "--batch-size", "--grad-accum", "--seq-len", "--lr", "--optimizer", "--dtype", "--compile", "--device",
         "--seed",
         "--log-interval", "--eval-interval", "--save-interval", "--keep-checkpoints", "--max-bad-steps")


def exit_code(argv: list[str]) -> int:
    """main()'s status, whether it returns it or argparse exits with it."""
    try:
        return train.main(argv)
    except SystemExit as exc:
        return exc.code


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text, flag


SHARD_CURRICULUM = """\
name = "needs-shards"
tokenizer = "bytes"
[[stages]]
name = "only"
steps = 5
weights = { tinystories = 1.0 }
lr = 1e-3
"""


@pytest.mark.parametrize("argv, message", [
    (["--preset", "gpt5"], "unknown model preset 'gpt5'"),
    (["--curriculum", "nope"], "unknown curriculum 'nope'"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--preset", "demo", "--time-budget", "3x"], "--time-budget: a time budget is a positive duration"),
    (["--dtype", "fp8"], "invalid choice: 'fp8'"),
    (["--optimizer", "sgd"], "invalid choice: 'sgd'"),
    (["--max-steps", "ten"], "invalid int value: 'ten'"),
    (["--preset", "demo", "--seq-len", "4096"], "--seq-len 4096 exceeds the context"),
    (["--preset", "demo", "--device", "tpu:0"], "unknown device 'tpu:0'"),
    (["--preset", "demo", "--curriculum", "hamner-4phase"], "give --init-from"),
    (["--curriculum", "agiformer-3stage"], "needs the 'bytes' tokenizer"),
    (["--resume", "no/such/run"], "cannot resume no/such/run"),
    (["--preset", "demo", "--init-from", "no/such/ckpt"], "no checkpoint at no/such/ckpt"),
])
def test_bad_input_is_one_error_line_with_exit_2(tmp_path, capsys, argv, message):
    code = exit_code([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_source_names_the_prepare_command(tmp_path, capsys):
    curriculum = tmp_path / "needs-shards.toml"
    curriculum.write_text(SHARD_CURRICULUM)
    code = exit_code(["--preset", "demo", "--curriculum", str(curriculum), "--data", str(tmp_path / "DATA"),
                      "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "hamner prepare" in err and "tinystories" in err
    assert not (tmp_path / "run").exists()


def test_a_real_process_trains_and_a_bad_one_fails_without_traceback(tmp_path, python, subprocess_env):
    curriculum = write_curriculum(tmp_path, first=2, second=1)
    ok = subprocess.run([python, "train.py", *tiny_flags(tmp_path / "run", curriculum)], cwd=ROOT,
                        env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "done: 3 steps" in ok.stdout and (tmp_path / "run" / "checkpoints" / "latest").is_file()
    bad = subprocess.run([python, "train.py", "--preset", "demo", "--grad-accum", "0"], cwd=ROOT,
                         env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["error: --grad-accum must be at least 1, got 0"]


def sized_config(tmp_path: Path, model_file: str | None = None, **given):
    """The model config train.py builds for `given` (on the builtin curriculum), and its tokenizer."""
    path = None
    if model_file is not None:
        path = tmp_path / "model.toml"
        path.write_text(model_file)
    s, curriculum, _ = resolve_run(TrainSettings(curriculum="builtin", device="cpu", out=str(tmp_path / "run"),
                                                 model=None if path is None else str(path), **given))
    return checked_tokenizer(checked_model_config(s, curriculum), s)


def test_tokenizer_flag_sizes_the_vocabulary_to_the_tokenizer(tmp_path, shared_data):
    config, tokenizer = sized_config(tmp_path, preset="v3-50m", tokenizer="bytes")
    assert (config.vocab_size, config.tokenizer, tokenizer.vocab_size) == (257, "bytes", 257)
    assert config.to_dict() | {"vocab_size": 0, "tokenizer": ""} == \
        model_config("v3-50m").to_dict() | {"vocab_size": 0, "tokenizer": ""}
    cosmo2 = str(shared_data / "cosmo2_tokenizer.json")
    assert sized_config(tmp_path, preset="demo", tokenizer=cosmo2)[0].vocab_size == 49_152
    assert sized_config(tmp_path, preset="v3-50m", tokenizer=cosmo2)[0].vocab_size == 49_152
    assert sized_config(tmp_path, preset="demo")[0].vocab_size == 257  # the preset's own tokenizer
    # a model file that sets another vocab_size keeps it, and one smaller than the tokenizer's is refused
    assert sized_config(tmp_path, "vocab_size = 300\n", preset="v3-50m", tokenizer="bytes")[0].vocab_size == 300
    with pytest.raises(TrainError, match="tokenizer 'bytes' has 257 tokens but the model only 200"):
        sized_config(tmp_path, "vocab_size = 200\n", preset="v3-50m", tokenizer="bytes")


def test_a_byte_level_run_of_a_wide_preset_trains_and_chats(tmp_path, capsys):
    model_file = tmp_path / "small.toml"
    model_file.write_text("hidden_size = 64\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nintermediate_size = 96\n")
    flags = tiny_flags(tmp_path / "run", write_curriculum(tmp_path, first=1, second=1))
    flags[flags.index("demo")] = "v3-50m"
    assert exit_code([*flags, "--model", str(model_file), "--tokenizer", "bytes"]) == 0
    assert load_model(tmp_path / "run")[1].vocab_size == 257
    capsys.readouterr()
    assert chat.main(["--checkpoint", str(tmp_path / "run"), "--prompt", "Hi", "--max-new-tokens", "8",
                      "--seed", "1", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("Hi")
