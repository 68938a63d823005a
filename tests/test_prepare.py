"""`hamner prepare`: real files reproduced exactly, every input format, every error case."""
import json
import subprocess

import numpy as np
import pytest

from hamner.commands.prepare import main
from hamner.data import load_tokenizer
from hamner.data.chat_format import format_conversation
from hamner.data.prepare import is_val
from hamner.data.shards import read_shard, shard_paths


def _run(python, env, *args):
    return subprocess.run([python, "-m", "hamner.data.prepare", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


def _split_docs(directory, split, eos):
    """Decoded token lists of a split, cut at end-of-text (every document ends with one)."""
    tokens = np.concatenate([read_shard(p) for p in shard_paths(directory, split)] or [np.zeros(0, np.uint16)])
    cuts = np.flatnonzero(tokens == eos)
    assert cuts.size == 0 or cuts[-1] == tokens.size - 1
    return [tokens[a + 1 : b].tolist() for a, b in zip(np.concatenate([[-1], cuts[:-1]]), cuts)]


def _docs(directory, tok, split="train"):
    return [tok.decode(ids) for ids in _split_docs(directory, split, tok.eos_id)]


def test_tinystories_reproduced_exactly(shared_data, tmp_path, python, subprocess_env):
    src = shared_data / "tinystories_train_2MiB.txt"
    tok_path = shared_data / "cosmo2_tokenizer.json"
    out = tmp_path / "tinystories"
    r = _run(python, subprocess_env, src, "--out", out, "--tokenizer", tok_path, "--shard-tokens", "200_000")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "Traceback" not in r.stderr
    expected = [d.strip() for d in src.read_text(encoding="utf-8").split("<|endoftext|>")]
    assert len(expected) == 2317 and expected[-1].endswith("She said it was")  # the cut-off last story
    tok = load_tokenizer(str(tok_path))
    assert _docs(out, tok, "train") == [d for i, d in enumerate(expected) if not is_val(i, 0.01)]
    assert _docs(out, tok, "val") == [d for i, d in enumerate(expected) if is_val(i, 0.01)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == {"train": 2294, "val": 23}
    assert [p.name for p in shard_paths(out, "train")] == meta["shards"]["train"] == [
        "train_000000.bin", "train_000001.bin", "train_000002.bin"]
    assert [read_shard(p).size for p in shard_paths(out, "train")][:2] == [200_000, 200_000]
    assert meta["tokens"]["train"] == sum(read_shard(p).size for p in shard_paths(out, "train"))
    assert (meta["tokenizer_fingerprint"], meta["vocab_size"], meta["eos_id"]) == (tok.fingerprint, 49_152, 0)
    assert meta["sources"] == [str(src)]


def test_fineweb_as_one_document(shared_data, tmp_path, python, subprocess_env):
    src = shared_data / "fineweb_edu_head_1MB.txt"
    out = tmp_path / "fineweb"
    tok_path = shared_data / "cosmo2_tokenizer.json"
    r = _run(python, subprocess_env, src, "--whole", "--out", out, "--tokenizer", tok_path, "--workers", "2")
    assert r.returncode == 0, r.stderr
    tok = load_tokenizer(str(tok_path))
    assert _docs(out, tok) == [src.read_text(encoding="utf-8").strip()]
    assert not shard_paths(out, "val")


def _prepare(tmp_path, capsys, *args, tokenizer="bytes"):
    out = tmp_path / "out"
    rc = main([*map(str, args), "--out", str(out), "--tokenizer", tokenizer, "--val-fraction", "0", "--overwrite"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return out


def test_text_separators_and_chat_markers(tmp_path, capsys):
    tok = load_tokenizer("bytes")
    blank = tmp_path / "stories.txt"
    blank.write_text("First story.\nStill first.\n\n  \nSecond story.\n\n\n")
    assert _docs(_prepare(tmp_path, capsys, blank, "--split-docs", "blank"), tok) == [
        "First story.\nStill first.", "Second story."]
    custom = tmp_path / "custom.md"
    custom.write_text("one###two### ###three")
    assert _docs(_prepare(tmp_path, capsys, custom, "--split-docs", "###"), tok) == ["one", "two", "three"]
    assert _docs(_prepare(tmp_path, capsys, custom, "--whole"), tok) == ["one###two### ###three"]
    chat = tmp_path / "chat.txt"
    turns = "<|user|>\nHi there\n<|assistant|>\nHello!\n"
    chat.write_text(f"{turns}<|endoftext|>\n{turns}")
    assert _docs(_prepare(tmp_path, capsys, chat), tok) == [turns, turns]


def test_jsonl_chat_parquet_and_folders(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tok = load_tokenizer("bytes")
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": " 4 "}]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"text": "plain one", "id": 1}, {"messages": messages}, {"text": "  "}, {"text": "plain two"}]) + "\n\n")
    pq.write_table(pa.table({"body": ["p1", "p2"], "n": [1, 2]}), folder / "b.parquet")
    assert _docs(_prepare(tmp_path, capsys, folder / "a.jsonl"), tok) == [
        "plain one", format_conversation(messages), "plain two"]
    assert format_conversation(messages).endswith("<|assistant|>\n4\n")
    assert _docs(_prepare(tmp_path, capsys, folder / "b.parquet", "--text-field", "body"), tok) == ["p1", "p2"]
    (folder / "a.jsonl").unlink()
    (folder / "c.jsonl").write_text(json.dumps({"body": "j1"}) + "\n")
    (folder / "notes.csv").write_text("ignored: not a known type")
    assert _docs(_prepare(tmp_path, capsys, folder, "--text-field", "body"), tok) == ["p1", "p2", "j1"]
    pq.write_table(pa.table({"messages": [messages]}), tmp_path / "chat.parquet")
    assert _docs(_prepare(tmp_path, capsys, tmp_path / "chat.parquet"), tok) == [format_conversation(messages)]


VTT = """WEBVTT
Kind: captions
Language: en

NOTE made by hand

00:00:00.000 --> 00:00:02.000 align:start position:0%

so<00:00:00.500><c> today</c><00:00:01.000><c> we</c>

00:00:02.000 --> 00:00:02.010 align:start position:0%
so today we


intro
00:00:02.010 --> 00:00:04.000 align:start position:0%
so today we
talk about <b>tea</b> &amp; cake
"""

SRT = """1
00:00:01,000 --> 00:00:03,000
<i>Where were you?</i>
{\\an8}At home.

2
00:00:03,500 --> 00:00:05,000
At home.
2 cups of tea, please.
"""


def test_subtitles(tmp_path, capsys):
    tok = load_tokenizer("bytes")
    (tmp_path / "talk.vtt").write_text(VTT)
    (tmp_path / "film.srt").write_text(SRT)
    out = _prepare(tmp_path, capsys, tmp_path / "talk.vtt", tmp_path / "film.srt")
    assert _docs(out, tok) == ["so today we talk about tea & cake",
                               "Where were you? At home. 2 cups of tea, please."]


def test_max_tokens_and_val_split(tmp_path, capsys):
    src = tmp_path / "many.txt"
    docs = [f"document number {i}" for i in range(300)]
    src.write_text("<|endoftext|>".join(docs))
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out), "--tokenizer", "bytes", "--val-fraction", "0.1"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == {"train": 270, "val": 30}
    tok = load_tokenizer("bytes")
    assert _docs(out, tok, "val") == [f"document number {i}" for i in range(9, 300, 10)]
    assert main([str(src), "--out", str(out), "--tokenizer", "bytes", "--max-tokens", "1_000", "--overwrite"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokens"] == {"train": 1000, "val": 0}  # the first val document (number 99) lies past the cut
    expected = tok.encode("<|endoftext|>".join(docs))[:1000]
    assert read_shard(out / "train_000000.bin").tolist() == expected
    capsys.readouterr()


def _error(tmp_path, capsys, *args, tokenizer="bytes"):
    rc = main([*map(str, args), "--out", str(tmp_path / "err"), "--tokenizer", tokenizer])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert "no such file" in _error(tmp_path, capsys, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text(" \n\n")
    assert "empty input" in _error(tmp_path, capsys, tmp_path / "empty.txt")
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    assert "no field 'text' (fields: body)" in _error(tmp_path, capsys, tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"text": \n')
    assert "line 2: invalid JSON" in _error(tmp_path, capsys, tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('{"text": 5}\n')
    assert "not text" in _error(tmp_path, capsys, tmp_path / "c.jsonl")
    (tmp_path / "d.csv").write_text("x")
    assert "unsupported file type .csv" in _error(tmp_path, capsys, tmp_path / "d.csv")
    (tmp_path / "e.parquet").write_bytes(b"not parquet")
    assert "not a readable Parquet" in _error(tmp_path, capsys, tmp_path / "e.parquet")
    (tmp_path / "f.txt").write_bytes(b"\xff\xfe bad")
    assert "not UTF-8" in _error(tmp_path, capsys, tmp_path / "f.txt")
    missing_tokenizer = str(tmp_path / "t.json")
    assert "tokenizer file not found" in _error(tmp_path, capsys, tmp_path / "f.txt", tokenizer=missing_tokenizer)
    (tmp_path / "ok.txt").write_text("fine")
    assert main([str(tmp_path / "ok.txt"), "--out", str(tmp_path / "done"), "--tokenizer", "bytes"]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "ok.txt"), "--out", str(tmp_path / "done"), "--tokenizer", "bytes"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (tmp_path / "err").write_text("a file where --out should be")
    assert "File exists" in _error(tmp_path, capsys, tmp_path / "ok.txt")


def test_command_line_errors_and_help(tmp_path, python, subprocess_env):
    r = _run(python, subprocess_env, tmp_path / "missing.txt", "--out", tmp_path / "o", "--tokenizer", "bytes")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: no such file: {tmp_path / 'missing.txt'}"]
    env = {**subprocess_env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = _run(python, env, "someone/no-such-dataset", "--out", tmp_path / "o", "--tokenizer", "bytes")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "cannot open Hugging Face dataset" in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    r = _run(python, subprocess_env, "--help")
    assert r.returncode == 0
    for flag in ("--split-docs", "--text-field", "--val-fraction", "--max-tokens", "--shard-tokens", "--hf-config",
                 "--hf-split", "--workers", "--whole", "examples:"):
        assert flag in r.stdout


def test_hub_dataset_is_streamed(tmp_path, capsys, monkeypatch):
    import sys
    import types

    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"story": "Tom ran."}, {"story": " "}, {"story": "Ann sat."}])

    quiet = types.SimpleNamespace(set_verbosity_error=lambda: None)
    fake = types.SimpleNamespace(load_dataset=load_dataset, logging=quiet)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    out = _prepare(tmp_path, capsys, "someone/stories", "--hf-config", "small", "--hf-split", "validation",
                   "--text-field", "story")
    assert calls == [("someone/stories", "small", "validation", True)]
    assert _docs(out, load_tokenizer("bytes")) == ["Tom ran.", "Ann sat."]
    assert "no field 'text' (fields: story)" in _error(tmp_path, capsys, "someone/stories")
