"""Draw a run's curves to PNG files (the command is `hamner plot RUN_DIR [--out DIR]`).

Reads RUN_DIR/metrics.csv (written by the trainer) and, when present, RUN_DIR/task_accuracy.csv,
and writes loss.png (train and validation loss against tokens, with a shaded band per stage),
lr.png, throughput.png (tokens/s and MFU) and task_accuracy.png (one panel per synthetic task,
one line per difficulty). Empty cells (validation loss on most rows, MFU on CPU) are skipped.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hamner.errors import PlotError  # noqa: E402
from hamner.run.directory import (  # noqa: E402
    LATER_METRICS_COLUMNS,
    METRICS,
    METRICS_COLUMNS,
    TASK_ACCURACY,
    TASK_COLUMNS,
)
from hamner.run.durable import replace_atomically  # noqa: E402

_NUMERIC = set(METRICS_COLUMNS) - {"stage"}


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts, after checking that the needed columns are there."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise PlotError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def _number(row: dict[str, str], key: str, path: Path) -> float:
    """A cell as a float; empty cells are NaN (not measured on that row)."""
    text = (row.get(key) or "").strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise PlotError(f"{path}: column {key} holds {text!r}, not a number") from None


def read_metrics(run_dir: Path) -> dict[str, list]:
    """metrics.csv as columns: numeric columns are float lists (NaN where empty), stage is str."""
    path = run_dir / METRICS
    if not path.is_file():
        raise PlotError(f"{run_dir}: no {METRICS} (is this a run directory?)")
    rows = read_csv(path, tuple(c for c in METRICS_COLUMNS if c not in LATER_METRICS_COLUMNS))
    if not rows:
        raise PlotError(f"{path}: no rows yet")
    columns: dict[str, list] = {c: [_number(r, c, path) for r in rows] for c in _NUMERIC}
    columns["stage"] = [r["stage"] for r in rows]
    return columns


def stage_spans(stages: list[str], xs: list[float]) -> list[tuple[str, float, float]]:
    """(stage, first x, last x) for each run of consecutive rows in the same stage."""
    spans: list[tuple[str, float, float]] = []
    for stage, x in zip(stages, xs):
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], x)
        else:
            if spans:  # the band reaches to where the next stage begins
                spans[-1] = (spans[-1][0], spans[-1][1], x)
            spans.append((stage, x, x))
    return spans


def _shade_stages(ax: plt.Axes, m: dict[str, list], x: list[float]) -> None:
    colours = ("#dbe9f6", "#fbe5d6")
    for i, (stage, start, end) in enumerate(stage_spans(m["stage"], x)):
        ax.axvspan(start, end, color=colours[i % 2], zorder=0)
        ax.text((start + end) / 2, 0.98, stage, transform=ax.get_xaxis_transform(), ha="center",
                va="top", fontsize=8, rotation=90 if len(stage) > 4 else 0, color="#444444")


def _present(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_loss(m: dict[str, list], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 5))
    _shade_stages(ax, m, m["tokens"])
    ax.plot(*_present(m["tokens"], m["loss"]), lw=1, label="train loss")
    vx, vy = _present(m["tokens"], m["val_loss"])
    if vx:
        ax.plot(vx, vy, "o-", ms=4, lw=1.5, color="C3", label="validation loss")
    ax.set(xlabel="tokens", ylabel="loss", title="Loss by tokens seen (bands: curriculum stages)")
    ax.legend(loc="upper right")
    return save_figure(fig, out / "loss.png")


def plot_bpc(m: dict[str, list], out: Path) -> Path | None:
    """Training bits per byte by tokens seen; None when the run has none (its curriculum does not report it)."""
    x, y = _present(m["tokens"], m["bpc"])
    if not x:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    _shade_stages(ax, m, m["tokens"])
    ax.plot(x, y, lw=1, label="train bits per byte")
    ax.set(xlabel="tokens", ylabel="bits per byte", title="Bits per byte by tokens seen (bands: curriculum stages)")
    ax.legend(loc="upper right")
    return save_figure(fig, out / "bpc.png")


def plot_lr(m: dict[str, list], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 3.5))
    _shade_stages(ax, m, m["step"])
    ax.plot(*_present(m["step"], m["lr"]), lw=1.5)
    ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    return save_figure(fig, out / "lr.png")


def plot_throughput(m: dict[str, list], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(*_present(m["step"], m["tokens_per_s"]), lw=1, color="C0")
    ax.set(xlabel="step", title="Throughput")
    ax.set_ylabel("tokens/s", color="C0")
    mx, my = _present(m["step"], m["mfu"])
    if mx:
        twin = ax.twinx()
        twin.plot(mx, [100 * v for v in my], lw=1, color="C1")
        twin.set_ylabel("MFU (%)", color="C1")
    return save_figure(fig, out / "throughput.png")


def plot_task_accuracy(run_dir: Path, out: Path) -> Path | None:
    """One panel per task, one line per difficulty; None when the run has no accuracy file."""
    path = run_dir / TASK_ACCURACY
    if not path.is_file():
        return None
    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in read_csv(path, TASK_COLUMNS):
        series[row["task"]][row["difficulty"]].append((_number(row, "step", path), _number(row, "accuracy", path)))
    if not series:
        return None
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax, task in zip(axes.flat, sorted(series)):
        for difficulty in sorted(series[task]):
            points = sorted(series[task][difficulty])
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, label=f"d{difficulty}")
        ax.set_title(task, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.flat[len(series):]:
        ax.axis("off")
    fig.supxlabel("step")
    fig.supylabel("exact-match accuracy")
    return save_figure(fig, out / "task_accuracy.png")


def save_figure(fig: plt.Figure, path: Path, dpi: int = 110) -> Path:
    """Lay out `fig`, write it as PNG to `path` durably (see hamner.run.durable) and close it."""
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=dpi)
    plt.close(fig)
    replace_atomically(path, [image.getvalue()])
    return path


def plot_run(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Write every plot for `run_dir` into `out` (default RUN_DIR/plots); the files written."""
    if not run_dir.is_dir():
        raise PlotError(f"{run_dir}: no such run directory")
    metrics = read_metrics(run_dir)
    out = out or run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_loss(metrics, out), plot_bpc(metrics, out), plot_lr(metrics, out),
               plot_throughput(metrics, out), plot_task_accuracy(run_dir, out)]
    return [path for path in written if path is not None]
