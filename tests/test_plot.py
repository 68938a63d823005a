"""`hamner plot` on a made-up run directory: the PNGs exist and hold real drawings;
a missing or empty run directory is a one-line error with exit status 2."""
import csv
import math
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from hamner.commands.plot import main
from hamner.errors import PlotError
from hamner.run.directory import METRICS_COLUMNS
from hamner.run.plot import plot_run, stage_spans


def make_run(run_dir: Path, with_accuracy: bool = True) -> None:
    """A small fake run: three stages, validation every 10th row, MFU left empty at first."""
    run_dir.mkdir()
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(METRICS_COLUMNS)
        for i in range(120):
            step = (i + 1) * 10
            stage = ["structure", "reasoning", "knowledge"][i // 40]
            loss = 2 + 3 * math.exp(-i / 30) + 0.05 * math.sin(i)
            val = f"{loss + 0.1:.4f}" if i % 10 == 9 else ""
            mfu = "" if i < 5 else f"{0.3 + 0.01 * math.cos(i):.3f}"
            w.writerow([step, stage, f"{loss:.4f}", val, 3e-4 * min(1, step / 300), 0.8, step * 24_576,
                        50_000 + 1000 * math.sin(i / 5), mfu, step * 0.5])
    if with_accuracy:
        with (run_dir / "task_accuracy.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "stage", "task", "difficulty", "accuracy"])
            for step in (400, 800, 1200):
                for task in ("arithmetic", "counting", "sorting", "logic"):
                    for d in (1, 3):
                        w.writerow([step, "x", task, d, min(1.0, step / 1200 / d)])


def drawn(path: Path) -> bool:
    """True when the PNG is a real figure: many distinct colours, not a blank canvas."""
    pixels = (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint32)
    colours = np.unique(pixels[..., 0] << 16 | pixels[..., 1] << 8 | pixels[..., 2])
    return pixels.shape[0] > 200 and colours.size > 50


def test_plots_of_a_made_up_run(tmp_path: Path):
    run = tmp_path / "run"
    make_run(run)
    written = plot_run(run)
    assert sorted(p.name for p in written) == ["loss.png", "lr.png", "task_accuracy.png", "throughput.png"]
    assert all(p.parent == run / "plots" and drawn(p) for p in written)


def test_run_without_accuracy_file_gets_three_plots(tmp_path: Path):
    run = tmp_path / "run"
    make_run(run, with_accuracy=False)
    out = tmp_path / "elsewhere"
    assert sorted(p.name for p in plot_run(run, out)) == ["loss.png", "lr.png", "throughput.png"]


def test_stage_bands_reach_the_next_stage():
    assert stage_spans(["a", "a", "b", "b", "a"], [0, 1, 2, 3, 4]) == [("a", 0, 2), ("b", 2, 4), ("a", 4, 4)]


@pytest.mark.parametrize("problem, message", [
    ("missing", "no such run directory"),
    ("empty_dir", "no metrics.csv"),
    ("header_only", "no rows yet"),
    ("bad_column", "missing column"),
    ("bad_number", "not a number"),
])
def test_unplottable_run_dirs(tmp_path: Path, problem: str, message: str):
    run = tmp_path / "run"
    if problem != "missing":
        run.mkdir()
    if problem == "header_only":
        (run / "metrics.csv").write_text(",".join(METRICS_COLUMNS) + "\n")
    elif problem == "bad_column":
        (run / "metrics.csv").write_text("step,loss\n1,2.0\n")
    elif problem == "bad_number":
        (run / "metrics.csv").write_text(",".join(METRICS_COLUMNS) + "\n1,a,oops,,1,1,1,1,,1\n")
    with pytest.raises(PlotError, match=message):
        plot_run(run)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = tmp_path / "run"
    make_run(run, with_accuracy=False)
    out = tmp_path / "pngs"
    assert main([str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / n) for n in ("loss.png", "lr.png", "throughput.png")]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out


def test_command_line_error_is_one_line_exit_2(tmp_path: Path, python: str, subprocess_env: dict[str, str]):
    bad = subprocess.run([python, "-m", "hamner", "plot", str(tmp_path / "nope")],
                         capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no such run directory" in bad.stderr


def test_bits_per_byte_are_plotted_and_runs_written_before_the_column_still_plot(tmp_path: Path):
    run = tmp_path / "run"
    make_run(run, with_accuracy=False)
    lines = (run / "metrics.csv").read_text().splitlines()
    with_bpc = [lines[0]] + [f"{line},{1.5 + i / 100:.3f}" for i, line in enumerate(lines[1:])]
    (run / "metrics.csv").write_text("\n".join(with_bpc) + "\n")
    written = plot_run(run)
    assert sorted(p.name for p in written) == ["bpc.png", "loss.png", "lr.png", "throughput.png"]
    assert drawn(run / "plots" / "bpc.png")
    old = tmp_path / "old"  # metrics.csv from before the bpc column
    make_run(old, with_accuracy=False)
    header, *rows = (old / "metrics.csv").read_text().splitlines()
    (old / "metrics.csv").write_text("\n".join([header.removesuffix(",bpc"), *rows]) + "\n")
    assert sorted(p.name for p in plot_run(old)) == ["loss.png", "lr.png", "throughput.png"]
