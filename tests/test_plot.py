"""`hamner plot` on a made-up run directory: the PNGs exist and hold real drawings;
a missing or empty run directory is a one-line error with exit status 2."""
import csv
import math
import subprocess
import threading
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from hamner.commands.plot import main
from hamner.errors import PlotError
from hamner.run.directory import METRICS_COLUMNS, RunDir
from hamner.run.plot import plot_dashboard, plot_run, read_length_gen, read_metrics, stage_spans, watch_run


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
                        50_000 + 1000 * math.sin(i / 5), mfu, step * 0.5, ""])  # bpc: not reported
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
        (run / "metrics.csv").write_text(",".join(METRICS_COLUMNS) + "\n1,a,oops,,1,1,1,1,,1,\n")
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
    with_bpc = [lines[0]] + [f"{line}{1.5 + i / 100:.3f}" for i, line in enumerate(lines[1:])]  # fill bpc
    (run / "metrics.csv").write_text("\n".join(with_bpc) + "\n")
    written = plot_run(run)
    assert sorted(p.name for p in written) == ["bpc.png", "loss.png", "lr.png", "throughput.png"]
    assert drawn(run / "plots" / "bpc.png")
    old = tmp_path / "old"  # metrics.csv from before the bpc column
    make_run(old, with_accuracy=False)
    header, *rows = (old / "metrics.csv").read_text().splitlines()
    (old / "metrics.csv").write_text("\n".join([header.removesuffix(",bpc"), *(r.removesuffix(",") for r in rows)])
                                     + "\n")
    assert sorted(p.name for p in plot_run(old)) == ["loss.png", "lr.png", "throughput.png"]


def add_probe_and_length_gen(run_dir: Path, study_csv: bool) -> None:
    """probe.csv (two kinds, both splits) and length-generalisation figures: the study's CSV, or columns."""
    with (run_dir / "probe.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "stage", "kind", "split", "correct", "total", "accuracy"])
        for step in (400, 800, 1200):
            for kind in ("opposites", "numbers"):
                for split, share in (("trained", 1.0), ("held_out", 0.5)):
                    w.writerow([step, "x", kind, split, 3, 10, share * step / 1200])
    if study_csv:
        (run_dir / "length-gen").mkdir()
        lines = ["step,multiple,position,start,end,loss,perplexity"] + [
            f"{step},{m},{64 * m},0,16,1.0,{10 + m * 1000 / step}" for step in (400, 800, 1200) for m in (1, 5, 20)]
        (run_dir / "length-gen" / "length_gen.csv").write_text("\n".join(lines) + "\n")
        return
    text = (run_dir / "metrics.csv").read_text().splitlines()
    rows = [text[0] + ",length_ppl@1W,length_ppl@5W"]
    rows += [line + (",12.5,14.0" if i % 10 == 9 else ",,") for i, line in enumerate(text[1:])]
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")


def image_height(path: Path) -> int:
    return matplotlib.image.imread(path).shape[0]


@pytest.mark.parametrize("study_csv", [True, False])
def test_dashboard_has_every_panel_the_run_has_data_for(tmp_path: Path, study_csv: bool):
    bare = tmp_path / "bare"
    make_run(bare, with_accuracy=False)
    three = plot_dashboard(bare)
    assert three == bare / "plots" / "dashboard.png" and drawn(three)
    full = tmp_path / "full"
    make_run(full)
    add_probe_and_length_gen(full, study_csv)
    with (full / "metrics.csv").open("a") as f:
        f.write("1210,knowledge,2.1")  # a row the trainer is half-way through writing
    six = plot_dashboard(full, tmp_path / "out")
    assert drawn(six)
    assert image_height(three) < image_height(six) and abs(image_height(six) / image_height(three) - 1.5) < 0.1
    assert read_length_gen(full, read_metrics(full)).keys() == ({"1×W", "5×W", "20×W"} if study_csv
                                                                 else {"1×W", "5×W"})
    assert read_metrics(full)["step"][-1] == 1200


def test_live_redraws_as_rows_arrive_and_ends_with_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = tmp_path / "run"
    make_run(run, with_accuracy=False)
    holder = RunDir(run)
    holder.open()  # the run is alive while its lock is held
    drew = threading.Semaphore(0)

    def trainer() -> None:  # a row after each drawing, then the run ends
        for step in (1210, 1220):
            assert drew.acquire(timeout=60)
            with (run / "metrics.csv").open("a", newline="") as f:
                csv.writer(f).writerow([step, "knowledge", 2.0, "", 3e-4, 0.8, step * 24_576, 50_000, "", step / 2, ""])
        assert drew.acquire(timeout=60)
        holder.close()

    writer = threading.Thread(target=trainer)
    writer.start()
    steps_drawn = []

    def draw() -> list[Path]:
        steps_drawn.append(read_metrics(run)["step"][-1])
        return [plot_dashboard(run)]

    try:
        assert watch_run(run, draw, 0.05, on_draw=lambda paths: drew.release()) == 3
    finally:
        writer.join()
        holder.close()
    assert steps_drawn == [1200, 1210, 1220]
    assert drawn(run / "plots" / "dashboard.png")
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["dashboard.png"]  # no temporaries left

    assert main([str(run), "--live", "0.1", "--refreshes", "1"]) == 0  # a run that ended: one drawing
    assert [Path(p).name for p in capsys.readouterr().out.split()] == ["loss.png", "lr.png", "throughput.png"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--refreshes", "2"])
    assert exit_info.value.code == 2 and "goes with --live" in capsys.readouterr().err
