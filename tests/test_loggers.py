"""--report-to tensorboard / wandb: both receive the metrics.csv rows, validation, stage ends and task
accuracy. Read back offline: TensorBoard's event files, and the W&B offline run's history records."""
import json
import math
from pathlib import Path

import pytest
from train_helpers import metrics, tiny_flags, tiny_settings, write_curriculum

from hamner.commands import train as train_cli
from hamner.errors import TrainError
from hamner.train.loggers import REPORTERS
from hamner.train.trainer import train


def _run(tmp_path: Path, report_to: list[str]) -> Path:
    curriculum = write_curriculum(tmp_path, first=3, second=2, eval_interval=2)
    run = tmp_path / "run"
    train(tiny_settings(run, curriculum, report_to=report_to, task_samples=1))
    return run


def test_tensorboard_event_files_hold_the_metrics_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = metrics(run)
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(int(r["step"]), pytest.approx(float(r["loss"]), rel=1e-5)) for r in rows]
    assert [e.step for e in events.Scalars("val/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("val/synthetic")] == [2, 4]
    assert [e.step for e in events.Scalars("tasks/arithmetic/difficulty-1")] == [3, 5]
    stages = events.Tensors("stages/text_summary")
    assert [e.step for e in stages] == [3, 5]
    assert b"stage first ended at step 3" in stages[0].tensor_proto.string_val[0]


def _wandb_history(run_file: Path) -> list[dict[str, str]]:
    """History rows of a W&B offline run file (a LevelDB-style log of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_the_history(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = _run(tmp_path, ["wandb"])
    wandb.teardown()  # what the end of a train.py process does: the W&B service writes out the run file
    config = json.loads((run / "config.json").read_text())
    files = list((run / "wandb").glob(f"offline-run-*-{config['run_id']}/run-{config['run_id']}.wandb"))
    assert len(files) == 1
    history = {int(row["_step"]): row for row in _wandb_history(files[0])}
    rows = metrics(run)
    assert sorted(history) == [int(r["step"]) for r in rows]
    for r in rows:
        assert float(history[int(r["step"])]["train/loss"]) == pytest.approx(float(r["loss"]), rel=1e-5)
    assert "val/loss" in history[2] and "val/synthetic" in history[4]
    assert "tasks/arithmetic/difficulty-1" in history[3]


def test_an_uninstalled_reporter_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr("hamner.train.loggers.importlib.util.find_spec", lambda name: None)
    curriculum = write_curriculum(tmp_path)
    with pytest.raises(TrainError, match=r"--report-to wandb needs wandb: pip install wandb"):
        train(tiny_settings(tmp_path / "run", curriculum, report_to=["wandb"]))
    assert not (tmp_path / "run").exists() and set(REPORTERS) == {"tensorboard", "wandb"}


def test_a_reporter_that_cannot_start_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")

    def no_login(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_login)
    curriculum = write_curriculum(tmp_path)
    code = train_cli.main(tiny_flags(tmp_path / "run", curriculum, "--report-to", "wandb"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --report-to wandb: No API key configured") and "WANDB_MODE=offline" in err


def test_training_bits_per_byte_reach_metrics_csv_tensorboard_and_the_plots(tmp_path):
    """A curriculum that reports bits per byte gets a bpc column (loss / ln 2 / UTF-8 bytes per target token;
    the byte tokenizer's end-of-text token has none), in train.log, TensorBoard and bpc.png too."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hamner.run.plot import plot_run

    curriculum = write_curriculum(tmp_path, first=3, second=2, eval_interval=2)
    curriculum.write_text(curriculum.read_text().replace("keep_best = true", "keep_best = true\nbits_per_byte = true"))
    run = tmp_path / "run"
    train(tiny_settings(run, curriculum, report_to=["tensorboard"]))
    rows = metrics(run)
    for row in rows:  # synthetic rows hold end-of-text tokens: fewer bytes than tokens, so bpc > loss / ln 2
        ratio = float(row["loss"]) / math.log(2) / float(row["bpc"])  # bytes per token
        assert 0.8 < ratio < 1.0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/bpc")] == [
        (int(r["step"]), pytest.approx(float(r["bpc"]), rel=1e-5)) for r in rows]
    assert f"bpc {float(rows[-1]['bpc']):.4f}" in (run / "train.log").read_text()
    assert "bpc.png" in {p.name for p in plot_run(run)}
    plain = tmp_path / "plain"  # without bits_per_byte: an empty column and no bpc plot
    train(tiny_settings(plain, write_curriculum(tmp_path, first=1, second=1)))
    assert {r["bpc"] for r in metrics(plain)} == {""}
    assert "bpc.png" not in {p.name for p in plot_run(plain)}
