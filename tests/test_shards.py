"""llm.c shards: exact format, atomic writes, corrupt-file refusal, tokenizer checks, window reading."""
import os

import numpy as np
import pytest

from hamner.data import DataError, load_tokenizer
from hamner.data.shards import MAGIC, check_source_dir, read_shard, write_meta, write_shard
from hamner.data.windows import ShardSource


def test_write_read_roundtrip_and_llmc_header(tmp_path):
    tokens = np.array([0, 1, 65_535, 300, 7], dtype=np.int64)
    path = tmp_path / "train_000000.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * tokens.size
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:3]) == [MAGIC, 1, 5] and not header[3:].any()
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == tokens.tolist()
    back = read_shard(path)
    assert back.dtype == np.uint16 and back.tolist() == tokens.tolist()
    assert os.listdir(tmp_path) == ["train_000000.bin"]  # no temp file left behind
    write_shard(tmp_path / "val_000000.bin", [])
    assert read_shard(tmp_path / "val_000000.bin").size == 0


def test_refuses_out_of_range_tokens(tmp_path):
    with pytest.raises(DataError, match="uint16"):
        write_shard(tmp_path / "x.bin", [1, 65_536])
    with pytest.raises(DataError, match="uint16"):
        write_shard(tmp_path / "x.bin", [-1])
    assert not list(tmp_path.iterdir())


def test_interrupted_write_leaves_no_shard(tmp_path, monkeypatch):
    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        write_shard(tmp_path / "train_000000.bin", np.arange(1000))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[:-2], "truncated"),
        (lambda raw: raw + b"\0\0", "truncated"),
        (lambda raw: b"\1" + raw[1:], "bad magic"),
        (lambda raw: raw[:4] + np.int32(2).tobytes() + raw[8:], "version 2"),
        (lambda raw: raw[:100], "bad magic|truncated"),
    ],
)
def test_refuses_corrupt_shards(tmp_path, damage, message):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(100))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        read_shard(path)
    with pytest.raises(DataError, match=message):
        ShardSource(tmp_path)


def test_missing_shard_file(tmp_path):
    with pytest.raises(DataError, match="cannot read shard"):
        read_shard(tmp_path / "nope.bin")


def _source_dir(root, tokenizer, shards, name="src"):
    """A source directory with the given train shards and a meta.json for `tokenizer`."""
    directory = root / name
    for i, tokens in enumerate(shards):
        write_shard(directory / f"train_{i:06d}.bin", tokens)
    write_shard(directory / "val_000000.bin", np.arange(50) % 7)
    write_meta(directory, {"tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint})
    return directory


def test_tokenizer_check(tmp_path, shared_data):
    byte_tok = load_tokenizer("bytes")
    directory = _source_dir(tmp_path, byte_tok, [np.arange(100)])
    assert check_source_dir(directory, byte_tok)["tokenizer"] == "bytes"
    cosmo = load_tokenizer(str(shared_data / "cosmo2_tokenizer.json"))
    with pytest.raises(DataError, match="tokenized with 'bytes'.*--tokenizer") as err:
        ShardSource(directory, tokenizer=cosmo)
    assert "\n" not in str(err.value)
    (directory / "meta.json").unlink()  # shards from another tool: readable, with a warning
    with pytest.warns(UserWarning, match="no meta.json"):
        assert ShardSource(directory, tokenizer=cosmo).tokens == 100
    with pytest.raises(DataError, match="no such data directory"):
        ShardSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no val shards"):
        ShardSource(tmp_path / "empty", split="val")


def test_windows_cover_each_window_once_per_epoch(tmp_path):
    tok = load_tokenizer("bytes")
    sizes = [37, 5, 61]  # windows span shard boundaries
    stream = np.arange(sum(sizes)) % 251
    shards = np.split(stream, np.cumsum(sizes)[:-1])
    src = ShardSource(_source_dir(tmp_path, tok, shards), tokenizer=tok)
    assert src.name == "src" and src.tokens == 103 and src.split == "train"
    row_len = 10
    n = src.num_windows(row_len)
    assert n == 10
    rows = src.windows(np.arange(3 * n), row_len, seed=3)
    assert rows.dtype == np.int32 and rows.shape == (3 * n, row_len)
    starts = [int(np.flatnonzero((stream[: n * row_len].reshape(n, row_len) == r).all(1))[0]) for r in rows]
    for e in range(3):
        assert sorted(starts[e * n : (e + 1) * n]) == list(range(n))  # each window exactly once per epoch
    assert starts[:n] != starts[n : 2 * n]  # a new order each epoch
    assert np.array_equal(src.windows(np.arange(7, 12), row_len, 3), rows[7:12])  # positions are addresses
    assert np.array_equal(src.rows(4, row_len, seed=3, difficulty=2.0), rows[:4])  # pure function
    assert not np.array_equal(src.rows(n, row_len, seed=4, difficulty=0), rows[:n])
    val = ShardSource(tmp_path / "src", "val").rows(2, 25, seed=0)
    halves = (np.arange(50) % 7).reshape(2, 25)
    assert sorted(map(tuple, val.tolist())) == sorted(map(tuple, halves.tolist()))
    with pytest.raises(DataError, match="fewer than one row"):
        src.rows(1, 104, 0)
