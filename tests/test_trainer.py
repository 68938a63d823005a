"""The training loop on CPU: it learns, writes every run output, skips non-finite steps and stops
after K in a row, honours --stage and --init-from, and builds the AdamW groups the curriculum needs."""
import csv
import json
import math
import time

import pytest
import torch
from train_helpers import metrics, tiny_settings, write_curriculum

from hamner.data.synthetic import TASKS
from hamner.errors import TrainError
from hamner.model.config import model_config
from hamner.model.transformer import HamnerModel
from hamner.run import checkpoint as ckpt
from hamner.run.directory import METRICS_COLUMNS
from hamner.train.optim import apply_lr, build_optimizer, step_if_finite
from hamner.train.throughput import IntervalMeter
from hamner.train.trainer import train
from hamner.use.load import load_model


def test_a_short_run_learns_and_writes_every_output(tmp_path):
    curriculum = write_curriculum(tmp_path, first=20, second=4, eval_interval=10)
    run = tmp_path / "run"
    result = train(tiny_settings(run, curriculum, batch_size=8, seq_len=64, log_interval=4,
                                 task_samples=2, sample_tokens=4, save_interval=8, keep_checkpoints=1))
    assert (result.reason, result.step) == ("finished", 24)
    rows = metrics(run)
    with open(run / "metrics.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == METRICS_COLUMNS
    assert [int(r["step"]) for r in rows] == [4, 8, 10, 12, 16, 20, 24]
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert losses[-1] < losses[0] - 1.0, losses  # from ~5.5 nats (uniform over bytes) down
    assert [r["stage"] for r in rows] == ["first"] * 6 + ["second"]
    assert all(r["val_loss"] for r in rows if int(r["step"]) in (10, 20))
    assert all(float(r["tokens_per_s"]) > 0 and r["mfu"] == "" for r in rows)
    assert int(rows[-1]["tokens"]) == 24 * 8 * 64

    with open(run / "task_accuracy.csv", newline="") as f:
        acc = list(csv.DictReader(f))
    assert {(r["stage"], r["task"], float(r["difficulty"])) for r in acc} == {
        (stage, task, d) for stage in ("first", "second") for task in TASKS for d in (1.0, 2.0)}
    assert set(result.task_accuracy) == set(TASKS)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["stage"] for s in samples] == ["first"] * 3 + ["second"] * 3
    assert all(isinstance(s["completion"], str) for s in samples)
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == model_config("demo").to_dict() and config["settings"]["batch_size"] == 8
    assert "step 24" in (run / "train.log").read_text()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best", "latest", "stage-0-end", "stage-1-end", "step-00000016"]
    assert ckpt.resolve_checkpoint(run).name == "stage-1-end"


def _nan_after(monkeypatch, first_bad: int, count: int) -> None:
    """Make training forward passes first_bad .. first_bad + count - 1 (1-based) return a NaN loss."""
    forward = HamnerModel.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kwargs):
        out = forward(self, idx, targets, **kwargs)
        if self.training and targets is not None:
            calls["n"] += 1
            if first_bad <= calls["n"] < first_bad + count:
                return out * float("nan")
        return out

    monkeypatch.setattr(HamnerModel, "forward", poisoned)


def test_non_finite_losses_skip_the_update_and_are_counted(tmp_path, monkeypatch):
    _nan_after(monkeypatch, first_bad=3, count=2)
    curriculum = write_curriculum(tmp_path, first=10, second=2)
    run = tmp_path / "run"
    result = train(tiny_settings(run, curriculum, save_interval=8, max_steps=10))
    assert (result.reason, result.step) == ("max_steps", 10)
    rows = metrics(run)
    assert [r["loss"] == "" for r in rows] == [False, False, True, True] + [False] * 6
    assert all(math.isfinite(float(r["loss"])) for r in rows if r["loss"])
    state = ckpt.load_trainer_state(run / "checkpoints" / "step-00000008")
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {6.0} and state["metrics"]["bad_total"] == 2  # 8 steps, 2 of them skipped


def test_k_non_finite_losses_in_a_row_stop_the_run_keeping_good_weights(tmp_path, monkeypatch, capsys):
    _nan_after(monkeypatch, first_bad=5, count=100)
    curriculum = write_curriculum(tmp_path, first=20, second=2)
    run = tmp_path / "run"
    result = train(tiny_settings(run, curriculum, save_interval=4, max_bad_steps=3, keep_checkpoints=5))
    assert (result.reason, result.step) == ("non_finite", 7)
    assert "3 non-finite losses in a row" in capsys.readouterr().out
    good, _ = load_model(run / "checkpoints" / "step-00000004")
    assert ckpt.resolve_checkpoint(run).name == "step-00000004"
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_stage_flag_starts_later_and_init_from_loads_weights(tmp_path):
    curriculum = write_curriculum(tmp_path, first=3, second=3)
    train(tiny_settings(tmp_path / "a", curriculum, stage=1))
    assert {r["stage"] for r in metrics(tmp_path / "a")} == {"second"}
    train(tiny_settings(tmp_path / "b", curriculum, max_steps=1, init_from=str(tmp_path / "a")))
    assert float(metrics(tmp_path / "b")[0]["loss"]) < float(metrics(tmp_path / "a")[0]["loss"])
    assert "initialised from" in (tmp_path / "b" / "train.log").read_text()
    with pytest.raises(TrainError, match="already holds checkpoints"):
        train(tiny_settings(tmp_path / "a", curriculum))
    with pytest.raises(TrainError, match="--stage 2 does not exist"):
        train(tiny_settings(tmp_path / "c", curriculum, stage=2))


def test_lr_flag_sets_the_first_stage_peak_and_later_stages_keep_their_ratio(tmp_path):
    run = tmp_path / "run"
    train(tiny_settings(run, write_curriculum(tmp_path, first=2, second=2), lr=6e-3))  # twice the first stage's
    assert [float(r["lr"]) for r in metrics(run)] == pytest.approx([3e-3, 6e-3, 4e-3, 4e-3])  # warmup 2, then 2e-3 x2
    assert json.loads((run / "config.json").read_text())["resolved"]["lr"] == 6e-3


def test_optimizer_groups_decay_matrices_and_scale_only_listed_layers():
    model = HamnerModel(model_config("demo"))
    optimizer = build_optimizer(model, 1e-3, torch.device("cpu"))
    apply_lr(optimizer, 1e-3, {1: 0.2, 2: 0.2})
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(by_param) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        group = by_param[id(p)]
        assert group["weight_decay"] == (0.1 if p.dim() >= 2 else 0.0), name
        scaled = name.startswith(("layers.1.", "layers.2."))
        assert group["lr"] == pytest.approx(2e-4 if scaled else 1e-3), name
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["foreach"]


@pytest.mark.parametrize("fused", [True, False])
def test_step_if_finite_skips_the_update_and_its_count(fused):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1, fused=fused, foreach=not fused)
    param.grad = torch.ones(3)
    step_if_finite(optimizer, torch.tensor(False))
    assert torch.equal(param.detach(), torch.ones(3)) and float(optimizer.state[param].get("step", 0)) == 0
    step_if_finite(optimizer, torch.tensor(True))
    assert (param.detach() < 1).all() and float(optimizer.state[param]["step"]) == 1


def test_interval_meter_reports_the_last_interval_only():
    meter = IntervalMeter(flops_per_token=6.0, peak=None)
    meter.add_tokens(1_000_000)
    time.sleep(0.05)
    fast, mfu = meter.read()
    meter.add_tokens(1000)
    time.sleep(0.05)
    slow, _ = meter.read()
    assert mfu is None and fast > 100 * slow
