"""kernel_report turns a pytest-benchmark JSON into the target table: speed-up over the best other variant."""
from __future__ import annotations

import json
from pathlib import Path

import kernel_report


def _entry(op: str, step: str, variant: str, median_ms: float, fraction: float | None = None) -> dict:
    info = {"op": op, "shape": "v3-50m", "pass": step, "variant": variant, "median_ms": median_ms,
            "peak_memory_mb": 10.0}
    if fraction is not None:
        info.update(gbps=3000.0 * fraction, fraction_of_copy=fraction)
    return {"name": f"test_kernel[{op}-{step}-{variant}]", "extra_info": info}


def test_speedup_and_targets() -> None:
    rows = kernel_report.report_rows([
        _entry("rms_norm", "fwd", "eager", 2.0, 0.4),
        _entry("rms_norm", "fwd", "hamner", 1.0, 0.85),
        _entry("rms_norm", "fwd", "compile", 1.5, 0.55),
        _entry("swiglu", "fwd", "hamner", 1.0, 0.7),  # fast enough, but under 80% of copy bandwidth
        _entry("swiglu", "fwd", "liger", 1.2, 0.6),
        _entry("attention", "bwd", "hamner", 2.0),  # slower than torch
        _entry("attention", "bwd", "torch", 1.6),
        {"name": "disabled run", "extra_info": {}},  # --benchmark-disable leaves no timing: left out
    ])
    by_key = {(r[0], r[3]): r for r in rows}
    assert len(rows) == 7
    assert rows[0][3] == "hamner"  # hamner leads its group
    assert by_key["rms_norm", "hamner"][-2:] == ["1.50x", "met"]
    assert by_key["rms_norm", "hamner"][6] == "85"
    assert by_key["swiglu", "hamner"][-2:] == ["1.20x", "MISSED"]
    assert by_key["attention", "hamner"][-2:] == ["0.80x", "MISSED"]
    assert by_key["rms_norm", "eager"][-2:] == ["-", ""]


def test_main_prints_markdown_and_rejects_bad_files(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"machine_info": {"hamner_bench": {"device": "cpu", "timing_meaningful": False}},
                               "benchmarks": [_entry("rope", "fwd", "eager", 0.5, 0.1)]}))
    assert kernel_report.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "NOT meaningful" in out and "| rope | v3-50m | fwd | eager | 0.5000 |" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert kernel_report.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read") and err.count("\n") == 1
