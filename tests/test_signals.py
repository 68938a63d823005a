"""SIGINT and SIGTERM during training finish the step, save a resumable checkpoint and exit 0."""
import signal
import subprocess
from pathlib import Path

import pytest
from train_helpers import tiny_flags, write_curriculum

from hamner.run import checkpoint as ckpt
from hamner.use.load import load_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, python, subprocess_env, sig):
    curriculum = write_curriculum(tmp_path, first=100_000, second=1)
    run = tmp_path / "run"
    proc = subprocess.Popen([python, "train.py", *tiny_flags(run, curriculum)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=subprocess_env, cwd=ROOT)
    try:
        seen = []
        for line in proc.stdout:  # wait until training has really started
            seen.append(line)
            if line.startswith("step 2 "):
                break
        assert proc.poll() is None, "".join(seen)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(seen) + out
    assert f"stopped by {sig.name}" in out
    target = ckpt.resolve_checkpoint(run)
    state = ckpt.load_trainer_state(target)
    step = state["progress"]["step"]
    assert step >= 2 and target.name == ckpt.step_name(step)
    assert state["controller"]["global_step"] == step
    load_model(run)
