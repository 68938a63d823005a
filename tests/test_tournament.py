"""The tournament: specs and their errors, resizing to the tolerance, a resumed half-finished run, the report."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path

import matplotlib.pyplot
import pytest

from hamner.commands.tournament import main
from hamner.errors import TournamentError
from hamner.tournament import rounds as rounds_module
from hamner.tournament import runs
from hamner.tournament.report import draw_round, plot_round, seed_spread, write_report
from hamner.tournament.rounds import RoundOutcome, is_tie, mean_and_spread, run_tournament, size_entrants
from hamner.tournament.sizing import match_size, model_size
from hamner.tournament.spec import load_spec

SPEC = """\
name = "tiny"
base = "demo"
model = {{ hidden_size = 32, n_layers = 1, n_heads = 2, n_kv_heads = 1, intermediate_size = 64, max_seq_len = 64 }}
measure = "non_embedding"
tolerance = {tolerance}
seeds = [3, 4]
batch_size = 2
seq_len = 16
lr = 3e-3
evals = 2
eval_batches = 1
task_samples = 0
threads = 1
device = "cpu"

[data]
weights = {{ synthetic = 1.0 }}
difficulty = 1

[[rounds]]
tokens = 256
[[rounds]]
tokens = 256

[[entrants]]
name = "dense"

[[entrants]]
name = "deep"
model = {{ n_layers = 2 }}

[[entrants]]
name = "mqa-wide"
model = {{ hidden_size = 48, n_heads = 2, n_kv_heads = 1 }}
{extra}
"""


def write_spec(tmp_path: Path, tolerance: float = 0.02, extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC.format(tolerance=tolerance, extra=extra))
    return path


def test_shipped_specs_load_and_resize_within_tolerance():
    for name in ("demo", "hamner-10"):
        spec = load_spec(name)
        target = model_size(spec.base, spec.seq_len).measure(spec.measure)
        for sized in size_entrants(spec).values():
            measured = sized.resized.size.measure(spec.measure)
            assert abs(measured / target - 1) <= spec.tolerance, sized.name


def test_resizing_lands_within_tolerance_and_refuses_a_coarse_knob(tmp_path):
    spec = load_spec(write_spec(tmp_path, tolerance=0.01))
    target = model_size(spec.base, spec.seq_len).non_embedding
    deep = size_entrants(spec)["deep"].resized
    assert deep.config.n_layers == 2 and deep.knob == "intermediate_size"
    assert deep.config.intermediate_size < spec.base.intermediate_size  # two layers share the base's budget
    assert abs(deep.size.non_embedding / target - 1) <= 0.01
    # One step of the knob either side is further from the target: the search found the closest value.
    for step in (-1, 1):
        other = model_size(dataclasses.replace(deep.config, intermediate_size=deep.value + step), spec.seq_len)
        assert abs(other.non_embedding - target) >= abs(deep.size.non_embedding - target)
    # Whole layers of a wide model cannot land within 1% of a target that sits between two layer counts.
    wide = dataclasses.replace(spec.base, hidden_size=48, intermediate_size=64)
    one, two = (model_size(dataclasses.replace(wide, n_layers=n), 16).non_embedding for n in (1, 2))
    with pytest.raises(TournamentError, match="outside the tolerance"):
        match_size(wide, (one + two) / 2, "non_embedding", "n_layers", 16, 0.01)
    by_flops = match_size(spec.entrant("deep").config, model_size(spec.base, 16).flops_per_token,
                          "flops_per_token", "intermediate_size", 16, 0.02)
    assert abs(by_flops.error) <= 0.02


def test_spec_errors_name_the_field(tmp_path, capsys):
    bad = write_spec(tmp_path, extra='[[entrants]]\nname = "typo"\nmodel = { hiden_size = 64 }\n')
    with pytest.raises(TournamentError, match=r"entrants\[3\]\.model: unknown key 'hiden_size'"):
        load_spec(bad)
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    text = write_spec(tmp_path).read_text()
    (tmp_path / "r.toml").write_text(text.replace("tokens = 256\n[[rounds]]", "tokens = 0\n[[rounds]]"))
    with pytest.raises(TournamentError, match=r"rounds\[0\]\.tokens: must be >= 1, got 0"):
        load_spec(tmp_path / "r.toml")
    typed = write_spec(tmp_path, extra='[[entrants]]\nname = "flagged"\nmodel = { scale_residual_init = 1 }\n')
    with pytest.raises(TournamentError, match=r"entrants\[3\]\.model\.scale_residual_init: must be bool, got 1$"):
        load_spec(typed)


def test_a_half_finished_tournament_resumes_and_reports(tmp_path, monkeypatch, single_thread):
    spec = load_spec(write_spec(tmp_path))
    out = tmp_path / "t"
    real = runs.train_model
    calls: list[tuple[str, bool]] = []

    def interrupted_on_third(plan, resume):
        calls.append((plan.directory.relative_to(out).as_posix(), resume))
        if len(calls) == 3:  # train half the run, then stop as Ctrl-C would
            real(dataclasses.replace(plan, steps=plan.steps // 2), resume)
            raise runs.Interrupted(str(plan.directory))
        return real(plan, resume)

    monkeypatch.setattr(runs, "train_model", interrupted_on_third)
    with pytest.raises(runs.Interrupted):
        run_tournament(spec, out, say=lambda _: None)
    assert calls == [("round-1/dense/seed-3", False), ("round-1/deep/seed-3", False),
                     ("round-1/mqa-wide/seed-3", False)]
    assert runs.checkpoint_step(out / "round-1/mqa-wide/seed-3") == 4

    calls.clear()
    monkeypatch.setattr(runs, "train_model", lambda plan, resume: calls.append(
        (plan.directory.relative_to(out).as_posix(), resume)) or real(plan, resume))
    outcome = run_tournament(spec, out, say=lambda _: None)
    finalists = outcome.rounds[0].ranking[:2]
    assert calls == [("round-1/mqa-wide/seed-3", True)] + [
        (f"round-2/{name}/seed-{seed}", False) for name in finalists for seed in (3, 4)]
    resumed = outcome.rounds[0].results["mqa-wide"][0]
    assert resumed.steps == 8 and resumed.tokens == 8 * 2 * 16 and len(resumed.curve) == 2

    calls.clear()
    outcome = run_tournament(spec, out, say=lambda _: None)  # everything finished: nothing trains
    assert calls == []
    report = write_report(outcome, out)
    saved = json.loads((out / "report.json").read_text())
    assert saved == report
    assert [e["rank"] for e in saved["entrants"]] == [1, 2, 3]
    for entrant in saved["entrants"]:
        for key in ("name", "parameters", "tokens", "val_loss", "rank"):
            assert entrant[key] is not None, (entrant["name"], key)
    by_name = {e["name"]: e for e in saved["entrants"]}
    eliminated = outcome.rounds[0].ranking[2]
    assert by_name[eliminated]["round_reached"] == 1 and by_name[eliminated]["tokens"] == 256
    winner = saved["entrants"][0]
    assert winner["round_reached"] == 2 and len(winner["val_loss_seeds"]) == 2
    assert saved["final"]["winner"] == outcome.rounds[1].ranking[0]
    text = (out / "report.md").read_text()
    assert "| dense |" in text and "## Verdict" in text and "![round-2](round-2.png)" in text
    assert (out / "round-1.png").stat().st_size > 0 and (out / "round-2.png").stat().st_size > 0


def test_sweep_picks_the_best_lr_flags_the_edge_and_ties_within_the_spread(tmp_path, monkeypatch):
    sweep = '[lr_sweep]\nfactors = [0.5, 1.0, 2.0]\ntokens = 64\n'
    text = write_spec(tmp_path).read_text()
    (tmp_path / "s.toml").write_text(text.replace("[[entrants]]", sweep + "[[entrants]]", 1))
    spec = load_spec(tmp_path / "s.toml")
    # Fake runs: "dense" is best at the middle LR, "deep" at the largest; the final seeds differ by 0.01.
    best_factor = {"dense": 1.0, "deep": 2.0, "mqa-wide": 1.0}
    entrant_loss = {"dense": 2.0, "deep": 2.005, "mqa-wide": 4.0}
    trained = []

    def fake_run(plan, say):
        name = plan.directory.parts[-2]
        factor = plan.lr / spec.lr
        trained.append((plan.directory.relative_to(tmp_path / "t").as_posix(), factor))
        loss = entrant_loss[name] + abs(factor - best_factor[name]) + 0.01 * (plan.seed == 4)
        return runs.RunResult(directory=str(plan.directory), steps=plan.steps, tokens=plan.steps * 32, lr=plan.lr,
                              seed=plan.seed, val_loss=loss, curve=[(plan.steps * 32, 1.0, loss)])

    monkeypatch.setattr(rounds_module, "ensure_run", fake_run)
    outcome = run_tournament(spec, tmp_path / "t", say=lambda _: None)
    assert outcome.rounds[0].ranking == ["dense", "deep", "mqa-wide"]
    assert outcome.sweeps["dense"].best_lr == spec.lr and not outcome.sweeps["dense"].at_edge
    assert outcome.sweeps["deep"].best_lr == 2 * spec.lr and outcome.sweeps["deep"].at_edge
    assert "mqa-wide" not in outcome.sweeps  # eliminated before the sweep
    final = [(d, f) for d, f in trained if d.startswith("round-2")]
    assert final == [("round-2/dense/seed-3", 1.0), ("round-2/dense/seed-4", 1.0),
                     ("round-2/deep/seed-3", 2.0), ("round-2/deep/seed-4", 2.0)]
    dense, deep = outcome.rounds[1].results["dense"], outcome.rounds[1].results["deep"]
    assert mean_and_spread(dense) == pytest.approx((2.005, 0.01 / 2 ** 0.5))
    assert is_tie(dense, deep)  # 0.005 apart, well within the seeds' spread
    assert not is_tie(dense, outcome.rounds[0].results["mqa-wide"] * 2)
    report = write_report(outcome, tmp_path / "t")
    assert report["final"]["tie"] and "**Tie**" in (tmp_path / "t" / "report.md").read_text()
    by_name = {e["name"]: e for e in report["entrants"]}
    assert by_name["deep"]["lr_at_edge"] and "(edge)" in (tmp_path / "t" / "report.md").read_text()


def test_ctrl_c_stops_cleanly_and_a_rerun_finishes(tmp_path, python, subprocess_env):
    text = write_spec(tmp_path).read_text()
    rounds = text[text.index("[[rounds]]"):text.index("[[entrants]]")]
    one_round = text.replace(rounds, "[[rounds]]\ntokens = 4096\n\n").replace(
        '[[entrants]]\nname = "mqa-wide"', '[[entrants]]\nname = "mqa-wide"\nresize = false')
    spec = tmp_path / "one.toml"
    spec.write_text(one_round)
    out = tmp_path / "t"
    proc = subprocess.Popen([python, "-m", "hamner.tournament", str(spec), "--out", str(out)], env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "round-1" / "dense" / "seed-3" / "metrics.csv"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) > 1:  # training, past step 32 of 128
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command to continue" in err
    assert runs.checkpoint_step(out / "round-1" / "dense" / "seed-3") < 128
    assert main([str(spec), "--out", str(out)]) == 0
    assert "resumed from" in (out / "round-1" / "dense" / "seed-3" / "train.log").read_text()
    report = json.loads((out / "report.json").read_text())
    assert {e["name"]: e["tokens"] for e in report["entrants"]} == {"dense": 4096, "mqa-wide": 4096, "deep": 4096}


def made_up_run(seed: int, curve: list[tuple[float, float, float]]) -> runs.RunResult:
    return runs.RunResult(directory=f"seed-{seed}", steps=4, tokens=int(curve[-1][0]), lr=1e-3, seed=seed,
                          val_loss=curve[-1][2], curve=curve)


def test_round_plot_draws_each_entrants_seed_mean_and_a_min_max_band(tmp_path):
    rnd = RoundOutcome(index=1, tokens=200, steps=4, ranking=["a", "b", "single"], results={
        "a": [made_up_run(1, [(100, 1.0, 3.0), (200, 2.0, 2.0)]), made_up_run(2, [(100, 3.0, 4.0), (200, 6.0, 2.5)])],
        "b": [made_up_run(1, [(100, 2.0, 3.5), (200, 4.0, float("nan"))]),
              made_up_run(2, [(100, 2.0, 3.1), (200, 4.0, 2.9)])],
        "single": [made_up_run(1, [(100, 1.0, 3.3), (200, 2.0, 3.0)])]})
    assert seed_spread(rnd.results["a"]) == [(100, 2.0, 3.5, 3.0, 4.0), (200, 4.0, 2.25, 2.0, 2.5)]
    assert seed_spread(rnd.results["b"]) == [(100, 2.0, 3.3, 3.1, 3.5), (200, 4.0, 2.9, 2.9, 2.9)]
    fig = draw_round(rnd)
    by_tokens, by_time = fig.axes
    for ax in (by_tokens, by_time):
        assert len(ax.lines) == 3 and len(ax.collections) == 2  # a mean per entrant, a band per multi-seed one
        assert [line.get_color() for line in ax.lines] == ["C0", "C1", "C2"]
    assert list(by_tokens.lines[0].get_xdata()) == [100, 200] and list(by_time.lines[0].get_xdata()) == [2.0, 4.0]
    assert list(by_tokens.lines[0].get_ydata()) == [3.5, 2.25]
    band = by_tokens.collections[0].get_paths()[0].vertices
    assert (band[:, 1].min(), band[:, 1].max()) == (2.0, 4.0)
    assert [t.get_text() for t in by_tokens.get_legend().get_texts()] == ["a", "b", "single"]
    matplotlib.pyplot.close(fig)
    assert plot_round(rnd, tmp_path / "round-1.png").stat().st_size > 0


def test_a_curriculum_that_needs_shard_data_is_refused_without_data_and_one_that_cannot_fit_a_budget(
        tmp_path, capsys):
    text = write_spec(tmp_path).read_text().replace("[data]\nweights = { synthetic = 1.0 }\ndifficulty = 1\n",
                                                    'curriculum = "hamner-v2"\n')
    (tmp_path / "shards.toml").write_text(text)
    assert load_spec(tmp_path / "shards.toml").data_sources == ("fineweb",)
    assert main([str(tmp_path / "shards.toml"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err == ("error: shards.toml: its runs read prepared sources (fineweb); give --data DIR, the directory "
                   "holding them (made by hamner prepare)\n")
    assert not (tmp_path / "t" / "round-1").exists()
    (tmp_path / "plateau.toml").write_text(text.replace("hamner-v2", "hamner-v3.1"))
    with pytest.raises(TournamentError, match=r"plateau\.toml\.curriculum: hamner-v3\.1\.toml: stages\[0\] ends on "
                                              "a plateau or early stop, but a tournament gives every run the same "
                                              "tokens"):
        load_spec(tmp_path / "plateau.toml")


def test_the_speedrun_ablation_undoes_one_option_per_arm():
    """Every arm of speedrun-ablation-demo is the recipe (preset and curriculum speedrun-demo) with exactly one
    option changed: one of its own undone (a model field, or the embeddings' rate), or the untied head added."""
    spec = load_spec("speedrun-ablation-demo")
    recipe = spec.entrant("recipe")
    assert (recipe.preset, recipe.curriculum, recipe.config) == ("speedrun-demo", "speedrun-demo",
                                                               spec.base)
    undone = {"no-qk-norm": ({"qk_norm"}, None), "swiglu": ({"mlp", "intermediate_size"}, None),
              "no-value-embeddings": ({"value_embeddings"}, None), "no-unet": ({"skip"}, None),
              "untied-head": ({"tie_embeddings"}, "speedrun-demo-untied"), "no-softcap": ({"logit_softcap"}, None),
              "one-lr": (set(), "speedrun-demo-one-lr")}
    assert {e.name for e in spec.entrants} == {"recipe", *undone}
    for name, (fields, curriculum) in undone.items():
        entrant = spec.entrant(name)
        changed = {f.name for f in dataclasses.fields(entrant.config)
                   if getattr(entrant.config, f.name) != getattr(recipe.config, f.name)}
        assert changed == fields, name
        assert entrant.curriculum == (curriculum or recipe.curriculum) and not entrant.resize, name
    # Same size where the option is not itself parameters: ReLU² against SwiGLU at the same width budget.
    sizes = {name: sized.resized.size.non_embedding for name, sized in size_entrants(spec).items()}
    assert abs(sizes["swiglu"] / sizes["recipe"] - 1) < 0.01
