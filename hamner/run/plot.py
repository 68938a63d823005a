"""Draw a run's curves to PNG files (the command is `hamner plot RUN_DIR [--out DIR] [--dashboard] [--live]`).

Reads RUN_DIR/metrics.csv (written by the trainer) and, when present, RUN_DIR/task_accuracy.csv,
and writes loss.png (train and validation loss against tokens, with a shaded band per stage),
lr.png, throughput.png (tokens/s and MFU) and task_accuracy.png (one panel per synthetic task,
one line per difficulty). Empty cells (validation loss on most rows, MFU on CPU) are skipped.

`plot_dashboard` draws dashboard.png, every panel in one image: loss and validation with the stage
bands, LR, throughput, accuracy per task, the probe's curves and, when the run has them, the
length-generalisation curves (`length_ppl@{m}W` columns of metrics.csv, else the study's
RUN/length-gen/length_gen.csv). `watch_run` redraws as rows arrive. The CSVs are read as a live
trainer leaves them (a half-written last line is skipped), and every PNG is replaced atomically,
so an image viewer never shows half a file.
"""
from __future__ import annotations

import io
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hamner.errors import PlotError  # noqa: E402
from hamner.run.directory import (  # noqa: E402
    LATER_METRICS_COLUMNS,
    METRICS,
    METRICS_COLUMNS,
    PROBE,
    PROBE_COLUMNS,
    TASK_ACCURACY,
    TASK_COLUMNS,
    read_rows,
)
from hamner.run.durable import replace_atomically  # noqa: E402
from hamner.run.status import is_alive  # noqa: E402

LENGTH_GEN_CSV = Path("length-gen") / "length_gen.csv"  # what `hamner eval RUN --length-gen` writes
_LENGTH_COLUMN = re.compile(r"length_ppl@(\d+)W")


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The complete rows of a CSV file as dicts (see read_rows), after checking the needed columns."""
    rows = read_rows(path)
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise PlotError(f"{path}: missing column(s) {', '.join(missing)}")
    return rows


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
    numeric = [c for c in rows[0] if c != "stage"]  # the known columns and any a newer trainer adds
    columns: dict[str, list] = {c: [_number(r, c, path) for r in rows] for c in numeric}
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


def draw_loss(ax: plt.Axes, m: dict[str, list]) -> None:
    """Train and validation loss against tokens, over the stage bands."""
    _shade_stages(ax, m, m["tokens"])
    ax.plot(*_present(m["tokens"], m["loss"]), lw=1, label="train loss")
    vx, vy = _present(m["tokens"], m["val_loss"])
    if vx:
        ax.plot(vx, vy, "o-", ms=4, lw=1.5, color="C3", label="validation loss")
    ax.set(xlabel="tokens", ylabel="loss", title="Loss by tokens seen (bands: curriculum stages)")
    ax.legend(loc="upper right")


def draw_bpc(ax: plt.Axes, m: dict[str, list]) -> None:
    """Training bits per byte against tokens, over the stage bands."""
    _shade_stages(ax, m, m["tokens"])
    ax.plot(*_present(m["tokens"], m["bpc"]), lw=1, label="train bits per byte")
    ax.set(xlabel="tokens", ylabel="bits per byte", title="Bits per byte by tokens seen (bands: curriculum stages)")
    ax.legend(loc="upper right")


def has_bpc(m: dict[str, list]) -> bool:
    """Whether the run reports training bits per byte (its curriculum sets bits_per_byte)."""
    return bool(_present(m["tokens"], m.get("bpc", []))[0])


def draw_lr(ax: plt.Axes, m: dict[str, list]) -> None:
    _shade_stages(ax, m, m["step"])
    ax.plot(*_present(m["step"], m["lr"]), lw=1.5)
    ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))


def draw_throughput(ax: plt.Axes, m: dict[str, list]) -> None:
    """Tokens/s, with MFU on a second axis when the run measured it (CUDA)."""
    ax.plot(*_present(m["step"], m["tokens_per_s"]), lw=1, color="C0")
    ax.set(xlabel="step", title="Throughput")
    ax.set_ylabel("tokens/s", color="C0")
    mx, my = _present(m["step"], m["mfu"])
    if mx:
        twin = ax.twinx()
        twin.plot(mx, [100 * v for v in my], lw=1, color="C1")
        twin.set_ylabel("MFU (%)", color="C1")


def plot_loss(m: dict[str, list], out: Path) -> Path:
    return _one_panel(draw_loss, m, out / "loss.png", (10, 5))


def plot_lr(m: dict[str, list], out: Path) -> Path:
    return _one_panel(draw_lr, m, out / "lr.png", (10, 3.5))


def plot_throughput(m: dict[str, list], out: Path) -> Path:
    return _one_panel(draw_throughput, m, out / "throughput.png", (10, 3.5))


def plot_bpc(m: dict[str, list], out: Path) -> Path:
    return _one_panel(draw_bpc, m, out / "bpc.png", (10, 5))


def _one_panel(draw: Callable[[plt.Axes, dict[str, list]], None], m: dict[str, list], path: Path,
               size: tuple[float, float]) -> Path:
    fig, ax = plt.subplots(figsize=size)
    draw(ax, m)
    return save_figure(fig, path)


def read_task_accuracy(run_dir: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """task -> difficulty -> sorted (step, accuracy); empty when the run has no accuracy file."""
    path = run_dir / TASK_ACCURACY
    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in read_csv(path, TASK_COLUMNS) if path.is_file() else []:
        series[row["task"]][row["difficulty"]].append((_number(row, "step", path), _number(row, "accuracy", path)))
    return {task: {d: sorted(points) for d, points in by_d.items()} for task, by_d in series.items()}


def plot_task_accuracy(run_dir: Path, out: Path) -> Path | None:
    """One panel per task, one line per difficulty; None when the run has no accuracy file."""
    series = read_task_accuracy(run_dir)
    if not series:
        return None
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax, task in zip(axes.flat, sorted(series)):
        for difficulty in sorted(series[task]):
            points = series[task][difficulty]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, label=f"d{difficulty}")
        ax.set_title(task, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.flat[len(series):]:
        ax.axis("off")
    fig.supxlabel("step")
    fig.supylabel("exact-match accuracy")
    return save_figure(fig, out / "task_accuracy.png")


def draw_tasks(ax: plt.Axes, series: dict[str, dict[str, list[tuple[float, float]]]]) -> None:
    """Accuracy per task (the mean over its difficulties) against the step, one line per task."""
    for task in sorted(series):
        by_step: dict[float, list[float]] = defaultdict(list)
        for points in series[task].values():
            for step, accuracy in points:
                by_step[step].append(accuracy)
        steps = sorted(by_step)
        ax.plot(steps, [sum(by_step[x]) / len(by_step[x]) for x in steps], "o-", ms=3, label=task)
    ax.set(xlabel="step", ylabel="exact-match accuracy", title="Synthetic tasks (mean over difficulties)",
           ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, ncol=2, loc="best")


def read_probe(run_dir: Path) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(kind, split) -> sorted (step, accuracy) from probe.csv; empty without one."""
    path = run_dir / PROBE
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for row in read_csv(path, PROBE_COLUMNS) if path.is_file() else []:
        series[(row["kind"], row["split"])].append((_number(row, "step", path), _number(row, "accuracy", path)))
    return {key: sorted(points) for key, points in series.items()}


def draw_probe(ax: plt.Axes, series: dict[tuple[str, str], list[tuple[float, float]]]) -> None:
    """Probe accuracy per kind against the step: trained items solid, held-out dashed, one colour a kind."""
    kinds = sorted({kind for kind, _ in series})
    for (kind, split), points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-" if split == "trained" else "s--", ms=3,
                color=f"C{kinds.index(kind) % 10}", label=f"{kind} ({split})")
    ax.set(xlabel="step", ylabel="exact-match accuracy", title="Probe (solid: trained items, dashed: held-out)",
           ylim=(-0.02, 1.02))
    ax.legend(fontsize=6, ncol=2, loc="best")


def read_length_gen(run_dir: Path, m: dict[str, list]) -> dict[str, list[tuple[float, float]]]:
    """Length-generalisation perplexity per position ("5×W") against the step: the `length_ppl@{m}W`
    columns of metrics.csv when the run evaluates it while training, else the length study's CSV."""
    curves = {f"{match.group(1)}×W": _present(m["step"], m[column])
              for column in m if (match := _LENGTH_COLUMN.fullmatch(column))}
    series = {name: list(zip(*xy)) for name, xy in curves.items() if xy[0]}
    path = run_dir / LENGTH_GEN_CSV
    if series or not path.is_file():
        return series
    study: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in read_csv(path, ("step", "multiple", "perplexity")):
        if row["step"] not in ("", "None"):
            study[f"{row['multiple']}×W"].append((_number(row, "step", path), _number(row, "perplexity", path)))
    return {name: sorted(points) for name, points in study.items()}


def draw_length_gen(ax: plt.Axes, series: dict[str, list[tuple[float, float]]]) -> None:
    for name, points in sorted(series.items(), key=lambda item: int(item[0].split("×")[0])):
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, label=name)
    ax.set(xlabel="step", ylabel="chunk perplexity", title="Length generalisation (position in windows W)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="best")


def plot_dashboard(run_dir: Path, out: Path | None = None) -> Path:
    """Every panel of the run in one image, dashboard.png (two columns; panels without data are left out)."""
    metrics = read_metrics(_checked(run_dir))
    panels: list[Callable[[plt.Axes], None]] = [lambda ax: draw_loss(ax, metrics), lambda ax: draw_lr(ax, metrics),
                                                lambda ax: draw_throughput(ax, metrics)]
    if has_bpc(metrics):
        panels.append(lambda ax: draw_bpc(ax, metrics))
    tasks, probe, length = read_task_accuracy(run_dir), read_probe(run_dir), read_length_gen(run_dir, metrics)
    if tasks:
        panels.append(lambda ax: draw_tasks(ax, tasks))
    if probe:
        panels.append(lambda ax: draw_probe(ax, probe))
    if length:
        panels.append(lambda ax: draw_length_gen(ax, length))
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(16, 4.2 * rows), squeeze=False)
    for ax, draw in zip(axes.flat, panels):
        draw(ax)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    last = metrics["step"][-1]
    fig.suptitle(f"{run_dir.resolve().name}: step {last:,.0f}, stage {metrics['stage'][-1]}", fontsize=13)
    out = out or run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out / "dashboard.png")


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
    metrics = read_metrics(_checked(run_dir))
    out = out or run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_loss(metrics, out), plot_lr(metrics, out), plot_throughput(metrics, out)]
    if has_bpc(metrics):
        written.append(plot_bpc(metrics, out))
    accuracy = plot_task_accuracy(run_dir, out)
    return written + ([accuracy] if accuracy else [])


def watch_run(run_dir: Path, draw: Callable[[], list[Path]], interval: float, refreshes: int | None = None,
              on_draw: Callable[[list[Path]], None] | None = None) -> int:
    """Call `draw` now and again each time the run's CSVs change (polled every `interval` seconds),
    until the run's process is gone (after a last drawing), `refreshes` drawings were made, or Ctrl-C.
    A live run without its first row yet is waited for. Returns the number of drawings."""
    drawn, seen = 0, None
    while refreshes is None or drawn < refreshes:
        alive = is_alive(run_dir)
        state = _csv_state(run_dir)
        if state != seen and (not alive or read_rows(run_dir / METRICS)):  # a dead run without rows: its error
            written = draw()
            drawn, seen = drawn + 1, state
            if on_draw is not None:
                on_draw(written)
        if not alive:
            break
        time.sleep(interval)
    return drawn


def _csv_state(run_dir: Path) -> tuple[tuple[int, float], ...]:
    """Size and time of the CSVs the plots read: a change means new rows."""
    paths = [run_dir / name for name in (METRICS, TASK_ACCURACY, PROBE)] + [run_dir / LENGTH_GEN_CSV]
    return tuple((p.stat().st_size, p.stat().st_mtime) if p.is_file() else (0, 0.0) for p in paths)


def _checked(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise PlotError(f"{run_dir}: no such run directory")
    return run_dir
