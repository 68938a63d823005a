"""torchrun with 2 CPU processes (gloo): DistributedDataParallel trains, ranks draw different data,
and only rank 0 writes the run directory."""
import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from train_helpers import metrics, tiny_flags, write_curriculum

from hamner.data.mixture import Mixture, MixtureSampler, open_sources
from hamner.data.tokenizer import load_tokenizer
from hamner.run import checkpoint as ckpt
from hamner.use.load import load_model

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_torchrun_two_cpu_processes(tmp_path, python, subprocess_env, optimizer):
    curriculum = write_curriculum(tmp_path, first=3, second=2, eval_interval=2)
    run = tmp_path / "run"
    cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "train.py", *tiny_flags(run, curriculum, "--grad-accum", "2", "--optimizer", optimizer)]
    done = subprocess.run(cmd, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("done: 5 steps") == 1  # printed by rank 0 only

    rows = metrics(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]  # one writer: no duplicated rows
    assert int(rows[-1]["tokens"]) == 5 * 2 * 2 * 32 * 2  # steps x accum x batch x seq x ranks
    log = (run / "train.log").read_text()
    assert log.count("step 5 |") == 1
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert [bool(r["val_loss"]) for r in rows] == [False, True, False, True, False]
    assert ckpt.resolve_checkpoint(run).name == "stage-1-end" and (run / "checkpoints" / "best").is_dir()
    load_model(run)
    assert f"optimizer {optimizer}" in log


def test_ranks_draw_different_rows():
    tokenizer = load_tokenizer("bytes")
    sources = open_sources(["synthetic"], None, tokenizer)
    mixture = Mixture({"synthetic": 1.0})
    rows = [MixtureSampler(sources, seed=7, rank=r, world_size=2).rows(0, mixture, 2, 33) for r in (0, 1)]
    assert not np.array_equal(rows[0], rows[1])
