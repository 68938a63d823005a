"""The length-generalisation study: where the chunks sit, what they score, and the study over two runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoint import tiny_config

from hamner.commands.eval import main as eval_main
from hamner.commands.length_study import main
from hamner.errors import EvalError
from hamner.eval.length_study import ChunkGrid, chunk_losses, chunk_perplexity
from hamner.model.transformer import HamnerModel
from hamner.run.checkpoint import save_checkpoint


def test_chunk_positions_follow_the_grid():
    grid = ChunkGrid()  # the TTT study: W = 64, K = S = 16, 1x..20x W
    assert grid.length == 1280
    assert [grid.span(m) for m in grid.multiples] == [(48, 64), (112, 128), (304, 320), (624, 640), (1264, 1280)]
    odd = ChunkGrid(window=40, chunk=16, stride=12, multiples=(1, 2, 3))
    # The last chunk of the stride grid (starts 0, 12, 24, ...) that ends by m x W.
    assert [odd.span(m) for m in (1, 2, 3)] == [(24, 40), (60, 76), (96, 112)]
    with pytest.raises(EvalError, match="must not exceed the window"):
        ChunkGrid(window=8, chunk=16)


@pytest.fixture(scope="module")
def model() -> HamnerModel:
    torch.manual_seed(0)
    return HamnerModel(tiny_config(max_seq_len=16)).eval()


@torch.no_grad()
def test_chunks_score_the_predictions_at_their_positions(model):
    grid = ChunkGrid(window=8, chunk=4, stride=4, multiples=(1, 2, 5))
    seq = torch.randint(0, 256, (grid.length + 1,))
    long = HamnerModel(tiny_config(max_seq_len=grid.length))
    long.load_state_dict(model.state_dict())
    per_token = F.cross_entropy(long.eval()(seq[None, :-1])[0], seq[1:], reduction="none")
    single = chunk_losses(long, seq, grid, "single")
    for m in grid.multiples:
        start, end = grid.span(m)
        assert single[m] == pytest.approx(float(per_token[start:end].mean()), rel=1e-5)
    # Sliding: each chunk is read with only the `context` tokens that end with it.
    sliding = chunk_losses(long, seq, grid, "sliding", context=12)
    start, end = grid.span(5)
    window = F.cross_entropy(long(seq[None, end - 12:end])[0][-4:], seq[start + 1:end + 1])
    assert sliding[5] == pytest.approx(float(window), rel=1e-5)
    assert sliding[1] == pytest.approx(single[1], rel=1e-5)  # the context reaches back to token 0


def test_perplexity_averages_sequences_and_needs_enough_tokens(model):
    grid = ChunkGrid(window=8, chunk=4, stride=4, multiples=(1, 5))
    tokens = np.random.default_rng(0).integers(0, 256, 3 * grid.length + 1)
    rows = chunk_perplexity(model, tokens, grid, sequences=5)
    assert [(r["multiple"], r["position"], r["sequences"]) for r in rows] == [(1, 8, 3), (5, 40, 3)]
    assert all(r["perplexity"] == pytest.approx(np.exp(r["loss"])) for r in rows)
    with pytest.raises(EvalError, match="needs 41 tokens"):
        chunk_perplexity(model, tokens[:30], grid)


def _save_run(run: Path, seeds: dict[int, int]) -> None:
    for step, seed in seeds.items():
        torch.manual_seed(seed)
        config = tiny_config(max_seq_len=16)
        save_checkpoint(run, [f"step-{step:08d}"], HamnerModel(config), {"model": config.to_dict(), "step": step},
                        None)


def test_the_study_over_two_runs_writes_evolution_and_comparison(tmp_path, capsys):
    _save_run(tmp_path / "sw", {10: 1, 20: 2})
    _save_run(tmp_path / "ttt", {20: 3})
    flags = ["--window", "8", "--chunk", "4", "--stride", "4", "--multiples", "1,2,5", "--sequences", "2",
             "--device", "cpu", "--out", str(tmp_path / "study")]
    assert main([str(tmp_path / "sw"), str(tmp_path / "ttt"), "--all-checkpoints", *flags]) == 0
    report = json.loads((tmp_path / "study" / "length_gen.json").read_text())
    study = report["study"]
    assert [c["step"] for c in study["checkpoints"]] == [10, 20]
    assert [r["position"] for r in study["checkpoints"][0]["rows"]] == [8, 16, 40]
    last = {r["multiple"]: r["perplexity"] for r in study["checkpoints"][-1]["rows"]}
    other = {r["multiple"]: r["perplexity"] for r in report["other"]["checkpoints"][0]["rows"]}
    assert [r["ratio"] for r in report["comparison"]] == pytest.approx([last[m] / other[m] for m in (1, 2, 5)])
    for name in ("evolution.png", "comparison.png", "length_gen.csv"):
        assert (tmp_path / "study" / name).stat().st_size > 0
    assert "ratio" in capsys.readouterr().out
    # `hamner eval RUN --length-gen` is the same study.
    assert eval_main([str(tmp_path / "ttt"), "--length-gen", *flags]) == 0
    study = json.loads((tmp_path / "study" / "length_gen.json").read_text())["study"]
    assert study["run"] == str(tmp_path / "ttt") and study["checkpoints"][0]["step"] == 20
    assert main([str(tmp_path / "nowhere"), *flags]) == 2
    assert capsys.readouterr().err.startswith("error: ")
