"""Length generalisation as the TTT study measured it: chunk perplexity at 1x, 2x, 5x, 10x, 20x a window W.

A stream of validation tokens is cut into sequences of L = max(multiples) x W tokens (plus the
one they predict). Prediction i sees tokens [0, i] and is scored on token i + 1. The grid of
chunks has K predictions per chunk and a stride of S ("Chunk PPL (K=S=16)" with W = 64: L = 1280);
the chunk at m x W is the last chunk of the grid that ends by prediction m W, so its last
prediction has read (up to) m W tokens. Its perplexity, averaged over the sequences, is the
number reported for position m x W.

Two ways to read a sequence:
  single    one forward pass over all L tokens (RoPE continues past the trained context), as a
            recurrent or test-time-training mixer reads it;
  sliding   each chunk is scored by a fresh pass over the `context` tokens that end with it
            (default: the model's trained context), the usual sliding-window evaluation.

`hamner eval RUN [OTHER_RUN] --length-gen` (the command is `hamner.commands.length_study`)
evaluates the latest checkpoint, or every saved checkpoint with --all-checkpoints (the
evolution plot: perplexity at each position against the training step), and with a second run
writes the comparison table with the ratio of perplexities RUN / OTHER_RUN per position
(the study's SW/TTT ratio when RUN is the sliding-window model).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hamner.data.tokenizer import Tokenizer
from hamner.errors import EvalError, InferenceError
from hamner.eval.length import extended_model
from hamner.eval.tasks import held_out_seed
from hamner.model.transformer import HamnerModel
from hamner.run import checkpoint as ckpt
from hamner.run.directory import CONFIG, checkpoints_dir
from hamner.run.durable import write_text
from hamner.use.load import load_for_inference

MULTIPLES: tuple[int, ...] = (1, 2, 5, 10, 20)
MODES = ("single", "sliding")


@dataclass(frozen=True)
class ChunkGrid:
    """Where the chunks are: window W, K predictions per chunk, stride S, positions m x W."""

    window: int = 64
    chunk: int = 16
    stride: int = 16
    multiples: tuple[int, ...] = MULTIPLES

    def __post_init__(self) -> None:
        for name in ("window", "chunk", "stride"):
            if getattr(self, name) < 1:
                raise EvalError(f"{name} must be positive, got {getattr(self, name)}")
        if self.chunk > self.window:
            raise EvalError(f"chunk K ({self.chunk}) must not exceed the window W ({self.window})")
        if not self.multiples or any(m < 1 for m in self.multiples):
            raise EvalError(f"multiples must be whole numbers >= 1, got {self.multiples}")

    @property
    def length(self) -> int:
        """Tokens a sequence is read over: max(multiples) x W."""
        return max(self.multiples) * self.window

    def span(self, multiple: int) -> tuple[int, int]:
        """[start, end) of the predictions in the chunk at `multiple` x W."""
        start = (multiple * self.window - self.chunk) // self.stride * self.stride
        return start, start + self.chunk


def chunk_losses(model: HamnerModel, seq: torch.Tensor, grid: ChunkGrid, mode: str,
                 context: int | None = None) -> dict[int, float]:
    """Mean loss (nats) of each chunk of `grid` on one sequence `seq` of grid.length + 1 tokens."""
    losses = {}
    if mode == "single":
        hidden = model.hidden_states(seq[None, :-1])[0]
        for m in sorted(set(grid.multiples)):
            start, end = grid.span(m)
            losses[m] = float(F.cross_entropy(model.logits(hidden[start:end]), seq[start + 1:end + 1]))
        return losses
    context = context or model.config.max_seq_len
    for m in sorted(set(grid.multiples)):
        start, end = grid.span(m)
        first = max(0, end - context)  # the context window that ends with the chunk
        hidden = model.hidden_states(seq[None, first:end])[0]
        logits = model.logits(hidden[start - first:])
        losses[m] = float(F.cross_entropy(logits, seq[start + 1:end + 1]))
    return losses


@torch.no_grad()
def chunk_perplexity(model: HamnerModel, tokens: np.ndarray, grid: ChunkGrid, *, mode: str = "single",
                     context: int | None = None, sequences: int = 8) -> list[dict[str, float]]:
    """Per position m x W: chunk loss and perplexity averaged over up to `sequences` stretches of `tokens`."""
    if mode not in MODES:
        raise EvalError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    available = (len(tokens) - 1) // grid.length
    if available < 1:
        raise EvalError(f"the study needs {grid.length + 1} tokens per sequence, the stream has {len(tokens)}")
    sequences = min(sequences, available)
    if context is not None and context < grid.chunk:
        raise EvalError(f"the sliding context ({context}) must hold at least one chunk ({grid.chunk})")
    reader = extended_model(model, grid.length) if mode == "single" else model
    if mode == "sliding" and (context or model.config.max_seq_len) > model.config.max_seq_len:
        reader = extended_model(model, context)
    device = next(reader.parameters()).device
    totals = {m: 0.0 for m in grid.multiples}
    for s in range(sequences):
        seq = torch.from_numpy(np.asarray(tokens[s * grid.length:(s + 1) * grid.length + 1], dtype=np.int64))
        for m, loss in chunk_losses(reader, seq.to(device), grid, mode, context).items():
            totals[m] += loss
    rows = []
    for m in sorted(totals):
        start, end = grid.span(m)
        loss = totals[m] / sequences
        rows.append({"multiple": m, "position": m * grid.window, "start": start, "end": end, "loss": loss,
                     "perplexity": math.exp(min(loss, 700.0)), "sequences": sequences})
    return rows


def validation_stream(tokenizer: Tokenizer, n_tokens: int, source: str | None = None) -> np.ndarray:
    """`n_tokens` of a prepared source's val split, or of built-in stories on a held-out seed."""
    if source:
        from hamner.eval.loss import read_split

        return read_split(source, tokenizer, "val", n_tokens)
    from hamner.data.stories import StorySource

    return StorySource(tokenizer).rows(1, n_tokens, held_out_seed(0))[0].astype(np.int64)


def run_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint saved in `run`, one per step, by step."""
    root = checkpoints_dir(run)
    found: dict[int, Path] = {}
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and not path.name.startswith(".") and (path / CONFIG).is_file():
            try:
                found.setdefault(int(ckpt.read_meta(path)["step"]), path)
            except (ckpt.CheckpointError, KeyError, ValueError):
                continue
    return sorted(found.items())


def study_run(run: str | Path, grid: ChunkGrid, *, all_checkpoints: bool, mode: str, context: int | None,
              sequences: int, source: str | None, device: torch.device) -> dict:
    """The study for one run (or checkpoint): rows per evaluated checkpoint, with its step."""
    targets = run_checkpoints(Path(run)) if all_checkpoints else []
    if all_checkpoints and not targets:
        raise InferenceError(f"{run} holds no checkpoints to evaluate")
    if not targets:
        targets = [(None, Path(run))]
    tokens = None
    evaluated = []
    for step, path in targets:
        model, config, tokenizer = load_for_inference(path, device)
        if tokens is None:
            tokens = validation_stream(tokenizer, sequences * grid.length + 1, source)
        meta_step = step if step is not None else ckpt.read_meta(ckpt.resolve_checkpoint(path)).get("step")
        rows = chunk_perplexity(model, tokens, grid, mode=mode, context=context, sequences=sequences)
        evaluated.append({"checkpoint": str(ckpt.resolve_checkpoint(path)), "step": meta_step, "rows": rows})
    return {"run": str(run), "mode": mode, "context": context, "window": grid.window, "chunk": grid.chunk,
            "stride": grid.stride, "length": grid.length, "stream": source or "built-in stories (held-out seed)",
            "checkpoints": evaluated}


def compare(a: dict, b: dict) -> list[dict[str, float]]:
    """Per position: the last checkpoint's perplexity of runs a and b and their ratio a / b."""
    rows_a = {r["multiple"]: r for r in a["checkpoints"][-1]["rows"]}
    rows_b = {r["multiple"]: r for r in b["checkpoints"][-1]["rows"]}
    return [{"multiple": m, "position": rows_a[m]["position"], "perplexity_a": rows_a[m]["perplexity"],
             "perplexity_b": rows_b[m]["perplexity"], "ratio": rows_a[m]["perplexity"] / rows_b[m]["perplexity"]}
            for m in sorted(set(rows_a) & set(rows_b))]


def run_labels(a: Path, b: Path) -> tuple[str, str]:
    """Short names that tell two runs apart: the last path components that differ (e.g. dense/seed-1)."""
    parts_a, parts_b = a.resolve().parts, b.resolve().parts
    for depth in range(1, min(len(parts_a), len(parts_b)) + 1):
        if parts_a[-depth:] != parts_b[-depth:]:
            return "/".join(parts_a[-depth:]), "/".join(parts_b[-depth:])
    return a.name, b.name


def plot_evolution(study: dict, path: Path) -> Path:
    """Chunk perplexity at each position against the training step, one line per position."""
    from hamner.run.plot import plt, save_figure  # matplotlib (Agg) loads only when a plot is drawn

    fig, ax = plt.subplots(figsize=(7, 4.2))
    checkpoints = study["checkpoints"]
    steps = [c["step"] for c in checkpoints]
    for i, row in enumerate(checkpoints[0]["rows"]):
        ppl = [c["rows"][i]["perplexity"] for c in checkpoints]
        ax.plot(steps, ppl, marker="o", ms=3, label=f"{row['multiple']}×W ({row['position']})")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"chunk perplexity (K={study['chunk']}, S={study['stride']})")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = "/".join(Path(study["run"]).resolve().parts[-2:])
    ax.set_title(f"{name}: {study['mode']} pass, W={study['window']}")
    return save_figure(fig, path, dpi=100)


def plot_comparison(rows: list[dict], names: tuple[str, str], path: Path) -> Path:
    """Perplexity of both runs per position and the ratio a / b."""
    from hamner.run.plot import plt, save_figure  # matplotlib (Agg) loads only when a plot is drawn

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['multiple']}×W" for r in rows]
    left.plot(labels, [r["perplexity_a"] for r in rows], marker="o", label=names[0])
    left.plot(labels, [r["perplexity_b"] for r in rows], marker="o", label=names[1])
    left.set_ylabel("chunk perplexity")
    left.set_yscale("log")
    left.legend(fontsize=8)
    right.bar(labels, [r["ratio"] for r in rows])
    right.axhline(1.0, color="k", lw=0.8)
    right.set_ylabel(f"ratio {names[0]} / {names[1]}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=100)


def format_study(study: dict) -> str:
    """A table: one row per checkpoint, one column per position."""
    rows0 = study["checkpoints"][0]["rows"]
    head = f"{'step':>8}" + "".join(f"{str(r['multiple']) + 'xW':>11}" for r in rows0)
    lines = [f"{study['run']}: chunk perplexity (K={study['chunk']}, S={study['stride']}), W={study['window']}, "
             f"{study['mode']} pass over {study['length']} tokens, {rows0[0]['sequences']} sequences of "
             f"{study['stream']}", head]
    for c in study["checkpoints"]:
        lines.append(f"{c['step']!s:>8}" + "".join(f"{r['perplexity']:>11.3f}" for r in c["rows"]))
    return "\n".join(lines)


def format_comparison(rows: list[dict], names: tuple[str, str]) -> str:
    """A table: one row per position, the perplexity of both runs and their ratio."""
    width = max(12, *map(len, names)) + 2
    lines = [f"\n{'position':<12}{names[0]:>{width}}{names[1]:>{width}}{'ratio':>9}"]
    for r in rows:
        lines.append(f"{str(r['multiple']) + 'xW':<12}{r['perplexity_a']:>{width}.3f}{r['perplexity_b']:>{width}.3f}"
                     f"{r['ratio']:>9.3f}")
    return "\n".join(lines)


def run_study(run: str | Path, other: str | Path | None, grid: ChunkGrid, out: Path, *, all_checkpoints: bool,
              mode: str, context: int | None, sequences: int, source: str | None,
              device: torch.device) -> tuple[dict, list[Path]]:
    """The study of `run` (and, with `other`, the comparison), written under `out` as JSON, CSV and plots.

    Returns the report ({"study"} plus {"other", "comparison"} with a second run) and the files written."""
    common = dict(mode=mode, context=context, sequences=sequences, source=source, device=device)
    study = study_run(run, grid, all_checkpoints=all_checkpoints, **common)
    out.mkdir(parents=True, exist_ok=True)
    report = {"study": study}
    written = [out / "length_gen.json", out / "length_gen.csv"]
    if len(study["checkpoints"]) > 1:
        written.append(plot_evolution(study, out / "evolution.png"))
    if other:
        second = study_run(other, grid, all_checkpoints=False, **common)
        rows = compare(study, second)
        report.update({"other": second, "comparison": rows})
        written.append(plot_comparison(rows, run_labels(Path(run), Path(other)), out / "comparison.png"))
    write_text(out / "length_gen.json", json.dumps(report, indent=2) + "\n")
    lines = ["step,multiple,position,start,end,loss,perplexity"] + [
        f"{c['step']},{r['multiple']},{r['position']},{r['start']},{r['end']},{r['loss']:.6g},{r['perplexity']:.6g}"
        for c in study["checkpoints"] for r in c["rows"]]
    write_text(out / "length_gen.csv", "\n".join(lines) + "\n")
    return report, written
