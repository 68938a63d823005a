"""bench/speedrun.py: the target and ratios come out of the evaluations right, and the command runs
end to end on CPU at a tiny budget (the AdamW baseline plus one Muon recipe) and writes its record."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import speedrun

ROOT = Path(__file__).resolve().parent.parent


def curve(*points: tuple[int, float]) -> list[dict[str, float]]:
    return [{"step": i + 1, "tokens": tokens, "elapsed_s": tokens / 100, "val_loss": loss}
            for i, (tokens, loss) in enumerate(points)]


def test_summary_takes_the_first_evaluation_at_or_below_adamws_final_loss():
    summary = speedrun.summarise({
        "adamw-cosine": curve((100, 3.0), (200, 2.5), (300, 2.0)),
        "muon-cosine": curve((100, 2.8), (200, 2.0), (300, 1.8)),
        "muon-wsd": curve((100, 3.1), (200, 2.9), (300, 2.1)),
    })
    assert summary["target_val_loss"] == 2.0
    recipes = summary["recipes"]
    assert (recipes["adamw-cosine"]["tokens_to_target"], recipes["adamw-cosine"]["tokens_ratio"]) == (300, 1.0)
    assert recipes["muon-cosine"]["tokens_to_target"] == 200
    assert recipes["muon-cosine"]["tokens_ratio"] == pytest.approx(2 / 3)
    assert recipes["muon-wsd"]["tokens_to_target"] is None and "not reached" in speedrun.table(summary)


@pytest.mark.skipif(not (speedrun.SHARED_DATA / speedrun.TRAIN_TEXT).is_file(), reason="no shared TinyStories text")
def test_tiny_cpu_run_writes_its_record(tmp_path: Path) -> None:
    out = tmp_path / "speedrun.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # reference ops, as in a shell
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "speedrun.py"), "--steps", "4", "--eval-interval",
                           "2", "--recipes", "muon-wsd", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert list(record["evaluations"]) == ["adamw-cosine", "muon-wsd"]
    assert [e["step"] for e in record["evaluations"]["muon-wsd"]] == [2, 4]
    assert record["summary"]["recipes"]["adamw-cosine"]["tokens_ratio"] == 1.0
    assert "| muon-wsd |" in proc.stdout


def test_bad_recipe_is_one_error_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        speedrun.main(["--recipes", "sgd-cosine"])
    assert info.value.code == 2
