"""The evaluation suite: loss and bits per byte, length generalisation, needle in a haystack, the command."""
import json
import math
import random
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoint import save_tiny_run, tiny_config

import hamner.eval.needle as needle_mod
from hamner.commands.eval import main as eval_main
from hamner.data.shards import write_meta, write_shard
from hamner.data.stories import generate_story
from hamner.data.tokenizer import load_tokenizer
from hamner.errors import EvalError
from hamner.eval.length import extended_model, length_generalisation
from hamner.eval.loss import stream_loss
from hamner.eval.needle import NEEDLE, QUESTION, haystack_prompt, needle_recall
from hamner.model.transformer import HamnerModel

BYTES = load_tokenizer("bytes")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HamnerModel(tiny_config(max_seq_len=32)).eval()


@pytest.fixture(scope="module")
def stream():
    """ASCII story text as byte tokens, documents separated by end-of-text."""
    rng = random.Random(0)
    ids: list[int] = []
    while len(ids) < 3000:
        ids += BYTES.encode(generate_story(rng).encode("ascii", "ignore").decode()) + [BYTES.eos_id]
    return np.asarray(ids, dtype=np.int64)


def test_stream_loss_is_the_mean_over_windows_and_bits_per_byte_counts_text_bytes(model, stream):
    tokens = stream[:32 * 10 + 5]  # 10 full windows and a remainder that is not scored
    result = stream_loss(model, tokens, BYTES, batch_size=3)
    windows = torch.from_numpy(tokens[: 32 * 10 + 1])
    with torch.no_grad():
        logits = model(windows[:-1].view(10, 32))
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[1:].reshape(-1), reduction="sum").item()
    assert result["tokens"] == 320
    assert result["loss"] == pytest.approx(nats / 320, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nats / 320), rel=1e-5)
    text_bytes = int((tokens[1:321] != BYTES.eos_id).sum())  # ASCII: one byte per non-end-of-text token
    assert result["bytes"] == text_bytes
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / text_bytes, rel=1e-5)


def test_length_generalisation_reads_past_the_context_in_one_pass(model, stream):
    longer = extended_model(model, 32 * 6)
    idx = torch.from_numpy(stream[:32])[None]
    with torch.no_grad():
        assert torch.allclose(longer(idx), model(idx), atol=1e-6)
    rows = length_generalisation(model, stream, multiples=(0, 1, 5, 200))
    assert [r["multiple"] for r in rows] == [0, 1, 5]  # 200 x W does not fit in the stream: left out
    with torch.no_grad():
        first = model(torch.from_numpy(stream[:32])[None], torch.from_numpy(stream[1:33])[None]).item()
    assert rows[0]["loss"] == pytest.approx(first, rel=1e-5)
    assert all(r["tokens"] == 32 and r["start"] == 32 * r["multiple"] and math.isfinite(r["loss"]) for r in rows)
    with pytest.raises(EvalError, match="needs at least"):
        length_generalisation(model, stream[:20])


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_haystack_plants_the_needle_at_its_depth(depth):
    prompt = haystack_prompt(BYTES, 400, depth, 4821, random.Random(1))
    needle = NEEDLE.format(number=4821)
    assert prompt.endswith(QUESTION) and prompt.count(needle) == 1
    assert 300 < len(BYTES.encode(prompt)) <= 400
    where = prompt.index(needle) / len(prompt)
    assert abs(where - depth) < 0.2


def test_needle_recall_scores_the_number_in_the_answer(monkeypatch):
    model = HamnerModel(tiny_config(max_seq_len=160))

    def answer_with(right: bool):
        def fake_generate(_model, ids, max_new, **_):
            number = int(BYTES.decode(ids).split("secret number is ")[1][:4])
            return [BYTES.encode(f" The secret number is {number if right else number + 1}.")]
        return fake_generate

    for right in (True, False):
        monkeypatch.setattr(needle_mod, "generate", answer_with(right))
        rows = needle_recall(model, BYTES, lengths=(120,), depths=(0.0, 1.0), trials=3)
        assert [(r["length"], r["depth"]) for r in rows] == [(120, 0.0), (120, 1.0)]
        assert all(r["recall"] == (1.0 if right else 0.0) for r in rows)
    with pytest.raises(EvalError, match="exceeds"):
        needle_recall(model, BYTES, lengths=(140,))


def test_eval_command_writes_a_complete_report(tmp_path, stream, python, subprocess_env):
    save_tiny_run(tmp_path / "run", tiny_config(max_seq_len=64))
    source = tmp_path / "data" / "stories"
    write_shard(source / "val_000000.bin", stream)
    write_shard(source / "train_000000.bin", stream[:100])
    write_meta(source, {"tokenizer": BYTES.name, "tokenizer_fingerprint": BYTES.fingerprint})
    out = tmp_path / "report.json"
    done = subprocess.run([python, "-m", "hamner.eval", str(tmp_path / "run"), "--data", str(tmp_path / "data"),
                           "--sources", "stories", "--quick", "--samples", "1", "--difficulties", "1",
                           "--out", str(out), "--device", "cpu"],
                          env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    val = report["validation"]["stories"]
    assert val["tokens"] > 0 and all(math.isfinite(val[k]) for k in ("loss", "perplexity", "bits_per_byte"))
    assert report["synthetic"]["samples"] == 1
    assert set(report["synthetic"]["accuracy"]["arithmetic"]) == {"1"}
    assert len(report["synthetic"]["accuracy"]) == 9
    assert report["needle"] and all(0 <= r["recall"] <= 1 for r in report["needle"])
    length = report["length_generalisation"]
    assert length["window"] == 64 and [r["multiple"] for r in length["rows"]] == [0, 1, 2, 5]
    assert all(math.isfinite(r["perplexity"]) for r in length["rows"])
    for heading in ("validation", "synthetic tasks", "needle", "length generalisation"):
        assert heading in done.stdout


def test_eval_command_rejects_bad_input_with_one_line(tmp_path, capsys):
    save_tiny_run(tmp_path / "run", tiny_config(max_seq_len=32))
    for argv in ([str(tmp_path / "nothing")], [str(tmp_path / "run"), "--data", str(tmp_path / "nodata")]):
        assert eval_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_eval_command_reads_a_byte_level_model_with_a_wider_vocabulary(tmp_path, capsys):
    save_tiny_run(tmp_path / "run", tiny_config(vocab_size=4000, max_seq_len=32))
    assert eval_main([str(tmp_path / "run"), "--quick", "--samples", "2", "--difficulties", "1",
                      "--out", str(tmp_path / "report.json"), "--device", "cpu"]) == 0
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "report.json").read_text())["synthetic"]["samples"] == 2
