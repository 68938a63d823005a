"""bench/throughput.py runs end to end on CPU at a tiny shape, and rejects bad settings in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import throughput

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_run_writes_comparable_figures(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    # Reference ops on CPU, as in a user's shell: no Triton interpreter (the test suite may have set it).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--preset", "demo", "--batch-size", "2",
         "--seq-len", "64", "--steps", "3", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert throughput.CPU_NOTE in proc.stdout
    record = json.loads(out.read_text())
    assert record["timing_meaningful"] is False and record["device"] == "cpu"
    assert record["batch_size"] == 2 and record["seq_len"] == 64 and record["steps"] == 3
    assert record["config"]["vocab_size"] == 257
    # On CPU the default leaves out torch.compile (c) and, here, Liger (not installed).
    assert set(record["results"]) == {"a", "b", "d", "e"}
    assert set(record["left_out"]) == {"c", "d-liger"} and record["failed"] == {}
    for name, r in record["results"].items():
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0, name
        assert r["mfu"] is None and r["peak_memory_gib"] is None, name
        assert f"({name}) {r['name']}" in proc.stdout
    assert record["ratios"]["a"]["a_speedup"] == 1.0
    # Same architecture, same initial weights, same batches: every variant trains identically.
    a = record["results"]["a"]
    for name in ("b", "d"):
        for key in ("first_loss", "last_loss"):
            assert record["results"][name][key] == pytest.approx(a[key], rel=1e-4), (name, key)
    assert a["last_loss"] != a["first_loss"]  # the optimizer stepped


def test_interleaved_rounds_report_each_variants_median(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--preset", "demo", "--batch-size", "2",
         "--seq-len", "32", "--steps", "3", "--warmup", "1", "--variants", "a,e", "--rounds", "3", "--interleave",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert (record["rounds"], record["interleave"], record["threads"]) == (3, True, 1)
    for name in ("a", "e"):
        rates = record["results"][name]["round_tokens_per_s"]
        assert len(rates) == 3 and record["results"][name]["tokens_per_s"] == sorted(rates)[1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--variants", "a,zz"], "unknown variant(s) zz"),
    (["--preset", "demo", "--seq-len", "512"], "--seq-len 512 exceeds the context of preset 'demo'"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--warmup", "-1"], "--warmup must not be negative"),
])
def test_bad_settings_give_one_line_error(argv: list[str], message: str, capsys) -> None:
    assert throughput.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_preset_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        throughput.main(["--preset", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --preset") and err.count("\n") == 1


def test_the_benchmark_times_the_training_loops_step_function(tmp_path: Path, monkeypatch) -> None:
    """Every warm-up and timed step goes through hamner.train.step.train_step, and the timing covers it:
    a spy that makes each call 50 ms slower raises the measured step time by as much."""
    from hamner.kernels import dispatch
    from hamner.train import step

    real = step.train_step
    calls: list[float] = []

    def spy(*args, **kwargs):
        time.sleep(0.05)
        result = real(*args, **kwargs)
        calls.append(float(result.loss))
        return result

    monkeypatch.setattr(step, "train_step", spy)
    out = tmp_path / "throughput.json"
    with dispatch.cpu_kernels(False):  # reference ops on CPU even when the suite runs the interpreter
        assert throughput.main(["--preset", "demo", "--batch-size", "2", "--seq-len", "32", "--steps", "3",
                                "--warmup", "1", "--variants", "a", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"]["a"]
    assert len(calls) == 1 + 3  # 1 warm-up + 3 timed steps
    assert (result["first_loss"], result["last_loss"]) == pytest.approx((calls[1], calls[3]))  # the spy's losses
    assert result["step_ms"] >= 50


def test_the_minimal_gpt_and_interleaved_timing_step_through_the_loops_step_function(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """Variant (e) and the interleaved timing also take every step through hamner.train.step.train_step."""
    from hamner.kernels import dispatch
    from hamner.train import step

    real = step.train_step
    models: list[str] = []

    def spy(loss, *args, **kwargs):
        models.append(type(getattr(loss, "__self__", loss)).__name__)
        return real(loss, *args, **kwargs)

    monkeypatch.setattr(step, "train_step", spy)
    out = tmp_path / "throughput.json"
    with dispatch.cpu_kernels(False):
        assert throughput.main(["--preset", "demo", "--batch-size", "2", "--seq-len", "32", "--steps", "2",
                                "--warmup", "1", "--variants", "a,e", "--interleave", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["results"]) == {"a", "e"}
    assert len(models) == 2 * (1 + 2)  # both variants: 1 warm-up + 2 timed steps each
    assert models.count("MinimalGPT") == 1 + 2
