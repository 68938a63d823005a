"""Run safety: one process per run directory, no directory from a failed start, a one-line error and
a resumable run after a full disk, token ids checked against the vocabulary, and prepare's
INCOMPLETE marker. (Kills at every filesystem step are in test_fault_injection.py.)"""
import json
import os
import signal
import socket

import numpy as np
import pytest
from safetensors import SafetensorError
from train_helpers import metrics, tiny_flags, tiny_settings, write_curriculum

import train as train_cli
from hamner.commands.prepare import main as prepare_main
from hamner.data.shards import INCOMPLETE, write_meta, write_shard
from hamner.data.tokenizer import ByteTokenizer, load_tokenizer
from hamner.data.windows import ShardSource
from hamner.errors import DataError, TrainError
from hamner.run import checkpoint as ckpt
from hamner.run.directory import CsvLog, RunDir, trim_lines
from hamner.train.settings import resume_settings
from hamner.train.trainer import train

SHARD_CURRICULUM = """\
name = "shards"
tokenizer = "bytes"
[[stages]]
name = "only"
steps = 5
weights = { text = 1.0 }
lr = 1e-3
"""


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_second_process_is_refused_while_the_first_holds_the_run(tmp_path, capsys):
    curriculum = write_curriculum(tmp_path, first=100, second=1)
    run = tmp_path / "run"
    train(tiny_settings(run, curriculum, max_steps=2))
    ready_r, ready_w = os.pipe()
    holder = os.fork()
    if holder == 0:  # another process holding the run directory, as a live training run does
        RunDir(run).open()
        os.write(ready_w, b"x")
        signal.pause()
        os._exit(0)
    try:
        os.read(ready_r, 1)
        assert train_cli.main(["--resume", str(run), "--max-steps", "4"]) == 2
        err = one_error_line(capsys)
        assert f"in use by pid {holder} on {socket.gethostname()}" in err
        assert train_cli.main(tiny_flags(run, curriculum)) == 2  # a fresh start into it as well
        assert f"pid {holder}" in one_error_line(capsys)
    finally:
        os.kill(holder, signal.SIGKILL)  # dies without releasing anything: the lock goes with it
        os.waitpid(holder, 0)
    assert train(resume_settings(run, {"max_steps": 4})).step == 4
    assert [int(r["step"]) for r in metrics(run)] == [1, 2, 3, 4]


def test_a_failed_start_leaves_no_directory(tmp_path):
    curriculum = write_curriculum(tmp_path, first=2, second=1)
    (tmp_path / "plain").mkdir()
    run = tmp_path / "run"
    with pytest.raises(ckpt.CheckpointError, match="neither a Hamner run directory"):
        train(tiny_settings(run, curriculum, init_from=str(tmp_path / "plain")))
    assert not run.exists()


def test_a_run_without_a_complete_checkpoint_starts_afresh(tmp_path):
    """What a kill during the very first save leaves: config and logs, an unfinished checkpoint."""
    curriculum = write_curriculum(tmp_path, first=100, second=1)
    run = tmp_path / "run"
    train(tiny_settings(run, curriculum, max_steps=1))
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "step-00000001" / "trainer.pt").unlink()  # the first save never completed
    leftover = run / "checkpoints" / ".tmp-step-00000002-999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    torn_copy = run / "curriculum" / ".curriculum.toml.tmp"  # an atomic rewrite a kill interrupted
    torn_copy.write_bytes(b"partial")
    with pytest.raises(TrainError, match="no complete checkpoint.*start it afresh"):
        train(resume_settings(run, {"max_steps": 2}))
    train(tiny_settings(run, curriculum, max_steps=2))
    assert [int(r["step"]) for r in metrics(run)] == [1, 2]
    assert not leftover.exists() and ckpt.resolve_checkpoint(run).name == "step-00000002"
    assert not torn_copy.exists()


def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes_later(tmp_path, monkeypatch, capsys):
    curriculum = write_curriculum(tmp_path, first=100, second=1)
    flags = ["--max-steps", "4", "--save-interval", "2"]
    reference = tmp_path / "reference"
    assert train_cli.main(tiny_flags(reference, curriculum, *flags)) == 0
    real_save_file = ckpt.save_file

    def disk_fills_up(state, filename, metadata=None):
        if "step-00000004" not in filename:
            return real_save_file(state, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    run = tmp_path / "run"
    monkeypatch.setattr(ckpt, "save_file", disk_fills_up)
    capsys.readouterr()
    assert train_cli.main(tiny_flags(run, curriculum, *flags)) == 2
    err = one_error_line(capsys)
    assert "No space left on device" in err and "step-00000002" in err and "kept" in err
    assert "error: cannot write checkpoint step-00000004" in (run / "train.log").read_text().splitlines()[-1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000002"]  # no temporary
    monkeypatch.setattr(ckpt, "save_file", real_save_file)  # space freed
    assert train_cli.main(["--resume", str(run), "--max-steps", "4"]) == 0
    compared = ("step", "loss", "lr", "grad_norm", "tokens")
    assert [[r[c] for c in compared] for r in metrics(run)] == [[r[c] for c in compared] for r in metrics(reference)]


def test_token_ids_outside_the_vocabulary_stop_the_run_before_it_starts(tmp_path, capsys):
    curriculum = tmp_path / "shards.toml"
    curriculum.write_text(SHARD_CURRICULUM)
    data = tmp_path / "DATA"
    write_shard(data / "text" / "train_000000.bin", np.arange(2000) % 257)
    write_shard(data / "text" / "train_000001.bin", np.r_[np.arange(2000) % 257, 300])  # no meta.json: scanned
    write_shard(data / "text" / "val_000000.bin", np.arange(500) % 257)
    run = tmp_path / "run"
    argv = ["--preset", "demo", "--curriculum", str(curriculum), "--data", str(data), "--out", str(run),
            "--device", "cpu", "--threads", "1"]
    with pytest.warns(UserWarning, match="no meta.json"):
        assert train_cli.main(argv) == 2
    err = one_error_line(capsys)
    assert f"shard {data / 'text' / 'train_000001.bin'} holds token id 300" in err and "257 ids" in err
    assert not run.exists()

    # With meta.json the largest ids prepare recorded are used, not a scan.
    tokenizer = load_tokenizer("bytes")
    meta = {"tokenizer": "bytes", "tokenizer_fingerprint": tokenizer.fingerprint,
            "max_token_id": {"train_000000.bin": 256, "train_000001.bin": 256, "val_000000.bin": 999}}
    write_meta(data / "text", meta)
    assert ShardSource(data / "text", "train", tokenizer).tokens == 4001
    with pytest.raises(DataError, match="val_000000.bin holds token id 999"):
        ShardSource(data / "text", "val", tokenizer)


def test_prepare_records_largest_ids_and_marks_its_output_until_complete(tmp_path, monkeypatch, capsys):
    source = tmp_path / "text.txt"
    source.write_text("<|endoftext|>".join(f"story {i} ~" for i in range(40)))
    out = tmp_path / "out"
    args = [str(source), "--out", str(out), "--tokenizer", "bytes", "--val-fraction", "0.1", "--quiet"]
    assert prepare_main(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["max_token_id"] == {"train_000000.bin": 256, "val_000000.bin": 256}  # end-of-text is the largest
    assert not (out / INCOMPLETE).exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hamner.data.prepare.write_meta", interrupted)
    assert prepare_main([*args, "--overwrite"]) == 130
    assert (out / INCOMPLETE).exists() and (out / "train_000000.bin").exists() and not (out / "meta.json").exists()
    with pytest.raises(DataError, match="incomplete.*--overwrite"):
        ShardSource(out, "train", load_tokenizer("bytes"))

    def no_tokenizing(self, texts):
        raise AssertionError("tokenized before checking the output directory")

    monkeypatch.setattr(ByteTokenizer, "encode_batch", no_tokenizing)
    capsys.readouterr()
    assert prepare_main([str(source), "--out", str(source / "sub"), "--tokenizer", "bytes"]) == 2
    assert "Not a directory" in one_error_line(capsys)


def test_logs_trim_through_a_rename_and_tolerate_empty_or_torn_files(tmp_path):
    log = CsvLog(tmp_path / "m.csv", ("step", "loss"))
    (tmp_path / "m.csv").write_text("")  # what the in-place rewrite of old versions left after a crash
    log.truncate_after(3)
    log.write({"step": 1, "loss": 2.0})
    log.write({"step": 2, "loss": 1.0})
    assert (tmp_path / "m.csv").read_text() == "step,loss\n1,2\n2,1\n"
    with open(tmp_path / "m.csv", "a") as f:
        f.write("3,0.")  # a row torn by a kill
    inode = (tmp_path / "m.csv").stat().st_ino
    assert trim_lines(tmp_path / "m.csv", lambda line: True, header_lines=1)
    assert (tmp_path / "m.csv").read_text() == "step,loss\n1,2\n2,1\n"
    assert (tmp_path / "m.csv").stat().st_ino != inode  # a new file renamed into place, never rewritten
    log.truncate_after(1)
    assert (tmp_path / "m.csv").read_text() == "step,loss\n1,2\n"
    assert not trim_lines(tmp_path / "m.csv", lambda line: True, header_lines=1)  # clean: left alone
    assert not trim_lines(tmp_path / "missing.csv", lambda line: False, header_lines=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_a_csv_written_with_older_columns_takes_todays_header_before_rows_are_appended(tmp_path):
    """A run started by an older Hamner (without, say, the bpc column) resumes with rows that line up."""
    from hamner.run.directory import CsvLog

    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,lr\n100,2.5,0.001\n200,2.1,0.001\n")
    log = CsvLog(path, ("step", "loss", "bpc", "lr"))
    log.write({"step": 300, "loss": 1.9, "bpc": 2.7, "lr": 0.001})
    assert path.read_text().splitlines() == ["step,loss,bpc,lr", "100,2.5,,0.001", "200,2.1,,0.001",
                                             "300,1.9,2.7,0.001"]
