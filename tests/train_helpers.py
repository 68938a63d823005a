"""Small training setups shared by the trainer, resume, signal, CLI and torchrun tests.

Runs use the demo preset (about 3M parameters, byte-level) on the built-in synthetic source with
tiny batches and one CPU thread, so a step takes milliseconds and tests stay within their budget.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from hamner.train.settings import TrainSettings

CURRICULUM = """\
name = "test-synth"
tokenizer = "bytes"
eval_interval = {eval_interval}
keep_best = true

[[stages]]
name = "first"
steps = {first}
weights = {{ synthetic = 1.0 }}
difficulty = 1
lr = 3e-3
warmup_steps = 2

[[stages]]
name = "second"
steps = {second}
weights = {{ synthetic = 1.0 }}
difficulty = [1, 2]
lr = 2e-3
fresh_optimizer = true
"""


TINY_TOURNAMENT = """\
name = "{name}"
base = "demo"
model = {{ hidden_size = 32, n_layers = 1, n_heads = 2, n_kv_heads = 1, intermediate_size = 64, max_seq_len = 64 }}
seeds = [3]
batch_size = 2
seq_len = 16
evals = 1
eval_batches = 1
task_samples = 0
threads = 1
device = "cpu"

[data]
weights = {{ synthetic = 1.0 }}

[[rounds]]
tokens = {tokens}

[[entrants]]
name = "dense"
resize = false

[[entrants]]
name = "deep"
resize = false
model = {{ n_layers = {deep_layers} }}
"""


def write_tiny_tournament(directory: Path, name: str = "tiny", tokens: int = 64, deep_layers: int = 2) -> Path:
    """DIRECTORY/tiny.toml: a two-entrant tournament (a 1-layer dense model and a deeper twin, no resizing) of
    `tokens` tokens named `name` (any text, so tests can give names that must be refused)."""
    path = directory / "tiny.toml"
    path.write_text(TINY_TOURNAMENT.format(name=name, tokens=tokens, deep_layers=deep_layers))
    return path


def write_curriculum(directory: Path, first: int = 6, second: int = 6, eval_interval: int = 1000) -> Path:
    """A two-stage synthetic-only curriculum (the second with a difficulty ramp and a fresh optimizer)."""
    path = directory / "test-synth.toml"
    path.write_text(CURRICULUM.format(first=first, second=second, eval_interval=eval_interval))
    return path


def tiny_settings(out: Path, curriculum: Path, **overrides) -> TrainSettings:
    """Settings for a few-millisecond-per-step CPU run into `out`."""
    base = dict(preset="demo", curriculum=str(curriculum), out=str(out), device="cpu", batch_size=2,
                seq_len=32, log_interval=1, eval_batches=1, task_samples=0, sample_tokens=0,
                threads=1, seed=7)
    base.update(overrides)
    return TrainSettings(**base)


def tiny_flags(out: Path, curriculum: Path, *extra: str) -> list[str]:
    """The same run as command-line flags for `python train.py`."""
    return ["--preset", "demo", "--curriculum", str(curriculum), "--out", str(out), "--device", "cpu",
            "--batch-size", "2", "--seq-len", "32", "--log-interval", "1", "--eval-batches", "1",
            "--task-samples", "0", "--sample-tokens", "0", "--threads", "1", "--seed", "7", *extra]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    """Rows of RUN/metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def plain_training_losses(model: torch.nn.Module, windows: torch.Tensor, lr: float, steps: int = 30) -> list[float]:
    """Losses of `steps` plain AdamW steps on the same windows [B, T + 1] (no trainer, no schedule)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(windows[:, :-1], windows[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def assert_compiled_step_matches_eager(model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> None:
    """One training loss and its gradients through torch.compile (aot_eager, fullgraph=True: a graph break is an
    error) equal the eager model's."""
    loss = torch.compile(model, backend="aot_eager", fullgraph=True)(idx, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    eager = model(idx, targets)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
