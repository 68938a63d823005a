"""bench/rms_norm_sweep.py runs every backward tiling end to end (interpreted on CPU) and records it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hamner.kernels.norms import BWD_CANDIDATES

ROOT = Path(__file__).resolve().parent.parent


def test_interpreted_sweep_times_every_candidate_and_torch(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "rms_norm_sweep.py"), "--rows", "20", "--presets",
                           "demo", "--reps", "1", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    timings = json.loads(out.read_text())["results"]["demo"]["timings"]
    assert set(timings) == {t.name() for t in BWD_CANDIDATES} | {"torch F.rms_norm"}
    assert all(t["ms"] > 0 for t in timings.values())
