"""`hamner status`: a run in progress (a training subprocess), stopped, finished, crashed and failed runs,
a torn metrics line, plateau strikes, --json and --watch."""
import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from train_helpers import metrics, tiny_flags, tiny_settings, write_curriculum

from hamner.commands import status as status_cli
from hamner.errors import RunDirError
from hamner.run.directory import read_rows
from hamner.train.metrics import format_row
from hamner.train.run_record import run_status
from hamner.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent

PLATEAU = """\
name = "plateau"
tokenizer = "bytes"

[[stages]]
name = "flat"
max_steps = 50
weights = { synthetic = 1.0 }
difficulty = 1
lr = 1e-3
plateau = { check_every = 1, min_steps = 2, window = 1, recent = 1, threshold = 10.0, strikes = 5 }

[[stages]]
name = "after"
steps = 10
weights = { synthetic = 1.0 }
difficulty = 1
lr = 1e-3
"""


def start_training(tmp_path: Path, python: str, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """A demo-preset training subprocess with a long first stage, returned once it has written rows."""
    curriculum = write_curriculum(tmp_path, first=100_000, second=1, eval_interval=3)
    run = tmp_path / "run"
    proc = subprocess.Popen([python, "train.py", *tiny_flags(run, curriculum, "--max-steps", "5000")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("step 6 "):
            return proc, run
    proc.kill()
    raise AssertionError(f"training did not start: {proc.communicate()[0]}")


def watch_in_a_terminal(python: str, run: Path, env: dict[str, str], cwd: Path) -> str:
    """What `hamner status RUN --watch` shows in a terminal (a pty) over two redraws, then Ctrl-C."""
    main_fd, child_fd = pty.openpty()
    watched = subprocess.Popen([python, "-m", "hamner", "status", str(run), "--watch", "0.5"], stdin=child_fd,
                               stdout=child_fd, stderr=child_fd, env={**env, "COLUMNS": "100"}, cwd=cwd)
    os.close(child_fd)
    screen, deadline = "", time.monotonic() + 120
    try:
        while screen.count("as of") < 3 and time.monotonic() < deadline:
            if select.select([main_fd], [], [], 1)[0]:
                screen += os.read(main_fd, 65536).decode("utf-8", "replace")
        watched.send_signal(signal.SIGINT)
        assert watched.wait(timeout=60) == 0
    finally:
        watched.kill()
        os.close(main_fd)
    assert "Traceback" not in screen and "\x1b[" in screen, screen  # redrawn in place: cursor moves
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)


def test_a_run_in_progress_then_stopped(tmp_path, python, subprocess_env):
    proc, run = start_training(tmp_path, python, subprocess_env)
    try:
        seen = [run_status(run) for _ in range(3)]
        for s in seen:
            assert s.state == "running" and f"pid {proc.pid} " in s.detail
            assert s.stage["name"] == "first" and s.stage["index"] == 0 and s.stage["count"] == 2
            assert s.total_steps == 5000 and s.step >= 6 and s.loss is not None
            assert s.eta_run_s is not None and s.eta_run_s > 0 and s.steps_per_s > 0
            assert s.val_loss is not None
        assert seen[-1].step >= seen[0].step
        screen = watch_in_a_terminal(python, run, subprocess_env, tmp_path)
        assert "running" in screen and "ETA" in screen and "first (1/2)" in screen
        assert proc.poll() is None  # the reads disturbed nothing
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    steps = [int(r["step"]) for r in metrics(run)]
    assert steps == list(range(1, len(steps) + 1))
    stopped = run_status(run)
    assert stopped.state == "stopped" and stopped.detail.startswith("stopped by SIGTERM")
    assert stopped.eta_run_s is None and stopped.step == steps[-1]
    assert stopped.checkpoint["step"] == steps[-1]


def test_a_killed_run_is_crashed(tmp_path, python, subprocess_env):
    proc, run = start_training(tmp_path, python, subprocess_env)
    proc.kill()
    proc.communicate(timeout=60)
    s = run_status(run)
    assert s.state == "crashed" and s.step >= 6 and s.eta_run_s is None


def test_a_finished_run_a_torn_line_and_a_failed_resume(tmp_path, capsys):
    curriculum = write_curriculum(tmp_path, first=3, second=3, eval_interval=2)
    run = tmp_path / "run"
    train(tiny_settings(run, curriculum, task_samples=1))
    capsys.readouterr()
    s = run_status(run)
    assert s.state == "finished" and s.step == 6 and s.total_steps == 6
    assert s.stage == {"name": "second", "index": 1, "count": 2, "start_step": 3, "step_in_stage": 3, "length": 3,
                       "open_ended": False, "progress": 1.0, "ended": "steps"}
    assert s.checkpoint["name"] == "stage-1-end" and s.checkpoint["step"] == 6
    assert s.val_step == 6 and s.val_trend is not None
    assert s.task_accuracy["step"] == 6 and "arithmetic" in s.task_accuracy["per_task"]

    with open(run / "metrics.csv", "a") as f:  # a row a live trainer is half-way through writing
        f.write("7,second,3.2")
    assert run_status(run).step == 6
    assert [r["step"] for r in read_rows(run / "metrics.csv")][-1] == "6"

    assert s.gpu_memory_gib is None  # a CPU run
    line = format_row({"step": 7, "stage": "second", "loss": 3.0, "lr": 1e-3, "tokens_per_s": 10.0}, 0,
                      peak_memory=int(12.34 * 2**30))
    assert line.endswith("| peak mem 12.3 GiB")
    with open(run / "train.log", "a") as f:
        f.write(f"2026-01-01 00:00:00 resumed from x at step 6\n2026-01-01 00:00:00 {line}\n"
                "2026-01-01 00:00:01 error: disk full; kept\n")
    assert run_status(run).gpu_memory_gib == pytest.approx(12.3)
    assert (run_status(run).state, run_status(run).detail) == ("failed", "error: disk full; kept")

    assert status_cli.main([str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["state"] == "failed" and printed[0]["step"] == 6
    assert status_cli.main([str(run)]) == 0
    screen = capsys.readouterr().out
    assert "failed" in screen and "6 / 6" in screen and "stage-1-end" in screen


def test_plateau_strikes_and_an_open_ended_stage(tmp_path):
    path = tmp_path / "plateau.toml"
    path.write_text(PLATEAU)
    run = tmp_path / "run"
    train(tiny_settings(run, path, max_steps=4))
    log = (run / "train.log").read_text()
    assert "plateau strikes 3/5 in stage 0 at step 4" in log
    s = run_status(run)
    assert s.stage["plateau_strikes"] == 3 and s.stage["plateau_strikes_to_end"] == 5
    assert s.stage["open_ended"] and s.stage["length"] == 50 and s.total_steps == 4  # --max-steps 4


def test_no_run_is_one_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirError, match="no runs under runs"):
        status_cli.statuses([])
    with pytest.raises(RunDirError, match="not a run directory"):
        run_status(tmp_path)
    os.makedirs("runs/a")
    (tmp_path / "runs" / "a" / "config.json").write_text("{}")
    assert [s.state for s in status_cli.statuses([])] == ["not started"]
