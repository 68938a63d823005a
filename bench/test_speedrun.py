"""bench/speedrun.py: the target and ratios come out of the evaluations right, and the command runs
end to end on CPU at a tiny budget (the AdamW baseline plus one Muon recipe) and writes its record."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
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


@pytest.mark.parametrize(("config", "curriculum"), [("cpu", "speedrun-demo"), ("gpu", "speedrun")])
def test_the_speedrun_recipe_is_the_shipped_curriculum(tmp_path: Path, config: str, curriculum: str) -> None:
    """bench/speedrun.py's speedrun recipe trains what `python train.py --preset speedrun[-demo]` trains: the
    same model, optimizer, rates, schedule, warm-ups and rows; only the data and the step count are the bench's."""
    from hamner.train.curriculum.spec import load_curriculum
    from hamner.train.settings import preset_curriculum

    recipe, setup = speedrun.RECIPES[config]["speedrun"], speedrun.CONFIGS[config]
    assert preset_curriculum(recipe.preset) == curriculum
    path = tmp_path / "bench.toml"
    path.write_text(speedrun.curriculum_text(recipe, 300, setup.warmup_steps, setup.eval_interval, setup.seq_len))
    bench, shipped = load_curriculum(str(path)), load_curriculum(curriculum)
    knobs = ("optimizer", "muon_lr", "lr", "embed_lr", "head_lr", "schedule", "min_lr_ratio", "seq_len",
             "seq_len_start", "model_knobs", "model_ramps")
    assert [{k: getattr(s, k) for k in knobs} for s in bench.stages] == [
        {k: getattr(s, k) for k in knobs} for s in shipped.stages]
    assert bench.seq_len == shipped.seq_len
    if config == "cpu":  # the demo twin also runs the bench's batch, warm-up and step count
        assert (shipped.batch_size, shipped.stages[0].warmup_steps, shipped.stages[0].steps) == (
            setup.batch_size, setup.warmup_steps, round(setup.steps * recipe.budget))
    assert recipe.seq_len_start is not None and speedrun.RECIPES[config]["speedrun-fixed-len"] == replace(
        recipe, seq_len_start=None)
