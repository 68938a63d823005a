"""The mixture sampler: weights, determinism, exact resume, disjoint ranks; opening sources by name."""
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from hamner.data import DataError, MixtureSampler, load_tokenizer, open_sources
from hamner.data.mixture import Mixture, open_validation
from hamner.data.shards import write_meta, write_shard
from hamner.data.windows import ShardSource
from hamner.model.packing import document_ids

ROOT = Path(__file__).resolve().parent.parent
ROW = 8
MARK = 200  # shard rows start with MARK + window number: above the generator's 7, inside the byte vocabulary


class Counting:
    """A generator source whose rows encode (seed, difficulty), so tests can see what it was asked for."""

    def __init__(self, name, token):
        self.name, self.token = name, token

    def rows(self, n_rows, row_len, seed, difficulty):
        out = np.full((n_rows, row_len), self.token, dtype=np.int32)
        out[:, 1] = int(difficulty * 10)
        out[:, 2:] = np.random.default_rng(seed).integers(0, 1000, (n_rows, row_len - 2))
        return out


def _shard_dir(root, tok, name="stream", n_windows=40):
    """A source dir whose windows of ROW tokens are [MARK + w, w, w, ...]: each row names its window."""
    windows = np.repeat(np.arange(n_windows)[:, None], ROW, axis=1)
    windows[:, 0] += MARK
    directory = root / name
    write_shard(directory / "train_000000.bin", windows[: n_windows // 2].ravel())
    write_shard(directory / "train_000001.bin", windows[n_windows // 2 :].ravel())
    write_shard(directory / "val_000000.bin", windows[:3].ravel())
    write_meta(directory, {"tokenizer": tok.name, "tokenizer_fingerprint": tok.fingerprint})
    return directory


@pytest.fixture
def sources(tmp_path):
    tok = load_tokenizer("bytes")
    return {"gen": Counting("gen", 7), "stream": ShardSource(_shard_dir(tmp_path, tok), tokenizer=tok)}


def _window_ids(batch):
    rows = batch[batch[:, 0] >= MARK]
    return (rows[:, 0] - MARK).tolist()


def test_weights_difficulty_and_determinism(sources):
    s = MixtureSampler(sources, seed=5)
    b = s.rows(0, Mixture({"gen": 1.0}, difficulty=2.5), 16, ROW)
    assert b.dtype == np.int64 and b.shape == (16, ROW)
    assert (b[:, 0] == 7).all() and (b[:, 1] == 25).all()
    mixture = Mixture({"gen": 3, "stream": 1}, difficulty=1.0)
    counts = np.zeros(2)
    for step in range(1, 41):
        b = s.rows(step, mixture, 16, ROW)
        counts += [(b[:, 0] == 7).sum(), (b[:, 0] >= MARK).sum()]
    assert 0.68 < counts[0] / counts.sum() < 0.82
    twins = [MixtureSampler(sources, seed=seed) for seed in (8, 8, 9)]
    even = Mixture({"gen": 1, "stream": 1}, difficulty=1.0)
    made = [np.stack([t.rows(step, even, 16, ROW) for step in range(5)]) for t in twins]
    assert np.array_equal(made[0], made[1]) and not np.array_equal(made[0], made[2])


def test_shard_windows_once_per_epoch_and_resume_exactly(sources):
    s = MixtureSampler(sources, seed=1)
    mixture = Mixture({"stream": 1.0, "gen": 1.0}, 1.0)
    batches = [s.rows(step, mixture, 6, ROW) for step in range(30)]
    seen = [w for b in batches for w in _window_ids(b)]
    assert len(seen) > 40 and sorted(seen[:40]) == list(range(40))  # every window once in epoch 0
    # a prefetcher made steps up to 29; the checkpoint is taken after step 26
    state = s.state_dict()
    resumed = MixtureSampler(sources, seed=99)  # the saved seed wins
    resumed.load_state_dict(state)
    for step in range(27, 35):
        expected = batches[step] if step < 30 else s.rows(step, mixture, 6, ROW)
        assert np.array_equal(resumed.rows(step, mixture, 6, ROW), expected)
    assert np.array_equal(s.rows(28, mixture, 6, ROW), batches[28])  # asking again for a made step repeats it
    with pytest.raises(ValueError, match="in order"):
        s.rows(100, mixture, 6, ROW)


def test_ranks_are_disjoint_and_share_one_state(sources):
    world = [MixtureSampler(sources, seed=3, rank=r, world_size=2) for r in range(2)]
    mixture = Mixture({"stream": 1.0, "gen": 1.0}, 3.0)
    per_rank = [[s.rows(step, mixture, 4, ROW) for step in range(6)] for s in world]
    ids = [[w for b in batches for w in _window_ids(b)] for batches in per_rank]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    assert len(ids[0] + ids[1]) <= 40 and len(set(ids[0] + ids[1])) == len(ids[0] + ids[1])
    gen_rows = [np.concatenate([b[b[:, 0] == 7] for b in batches]) for batches in per_rank]
    assert not np.array_equal(gen_rows[0][:1], gen_rows[1][:1])  # generators get a per-rank seed
    rank1 = MixtureSampler(sources, seed=3, rank=1, world_size=2)
    rank1.load_state_dict(world[0].state_dict())  # rank 0's checkpoint is enough for every rank
    assert np.array_equal(rank1.rows(6, mixture, 4, ROW), world[1].rows(6, mixture, 4, ROW))


def test_batches_cut_rows_and_number_documents_when_asked(sources):
    mixture = Mixture({"stream": 1.0, "gen": 1.0}, 2.0)
    rows = MixtureSampler(sources, seed=4).rows(0, mixture, 6, ROW)
    stream = MixtureSampler(sources, seed=4).batch(0, mixture, 6, ROW - 1)
    assert np.array_equal(stream.idx.numpy(), rows[:, :-1]) and np.array_equal(stream.targets.numpy(), rows[:, 1:])
    assert stream.segment_ids is None
    packed = MixtureSampler(sources, seed=4, document_end=7).batch(0, mixture, 6, ROW - 1)
    assert torch.equal(packed.segment_ids, document_ids(packed.idx, 7))
    assert packed.segment_ids[rows[:, 0] == 7, 1].eq(1).all()  # a generator row starts with the end token 7


def test_bad_mixtures(sources):
    s = MixtureSampler(sources, seed=0)
    with pytest.raises(DataError, match="unknown source.*web.*open sources: gen, stream"):
        s.rows(0, Mixture({"web": 1.0}, 1.0), 4, ROW)
    with pytest.raises(DataError, match="non-negative"):
        s.rows(0, Mixture({"gen": -1.0, "stream": 2.0}, 1.0), 4, ROW)
    with pytest.raises(DataError, match="positive sum"):
        s.rows(0, Mixture({"gen": 0.0}, 1.0), 4, ROW)
    with pytest.raises(ValueError, match="rank"):
        MixtureSampler(sources, seed=0, rank=2, world_size=2)


def test_open_sources(tmp_path, shared_data, monkeypatch):
    tok = load_tokenizer("bytes")
    _shard_dir(tmp_path, tok, "tinystories")
    made = {}
    builtins = [("hamner.data.synthetic", "SyntheticSource"), ("hamner.data.stories", "StorySource"),
                ("hamner.data.chat_gen", "ChatSource")]
    for module, cls in builtins:
        fake = types.ModuleType(module)
        setattr(fake, cls, lambda tokenizer, cls=cls: made.setdefault(cls, (tokenizer, Counting(cls, 1)))[1])
        monkeypatch.setitem(sys.modules, module, fake)
    opened = open_sources(["synthetic", "tinystories", "stories", "chat", "synthetic"], str(tmp_path), tok)
    assert list(opened) == ["synthetic", "tinystories", "stories", "chat"]
    assert {cls: t for cls, (t, _) in made.items()} == {cls: tok for _, cls in builtins}
    assert isinstance(opened["tinystories"], ShardSource) and opened["tinystories"].split == "train"
    val = open_validation(["tinystories"], str(tmp_path), tok)["tinystories"]
    assert val.split == "val" and val.tokens == 3 * ROW
    with pytest.raises(DataError, match=r"hamner prepare .* --out .*fineweb --tokenizer bytes") as err:
        open_sources(["fineweb"], str(tmp_path), tok)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no data root"):
        open_sources(["fineweb"], None, tok)
    with pytest.raises(DataError, match="tokenized with 'bytes'"):
        open_sources(["tinystories"], str(tmp_path), load_tokenizer(str(shared_data / "cosmo2_tokenizer.json")))


def test_open_one_task_synthetic_source():
    tok = load_tokenizer("bytes")
    source = open_sources(["synthetic/arithmetic"], None, tok)["synthetic/arithmetic"]
    text = tok.decode(source.rows(1, 200, 5, 1.0)[0].tolist())
    assert text.count("Calculate:") >= 5 and "Sort" not in text and "Count" not in text
    with pytest.raises(DataError, match="unknown synthetic task 'poetry'"):
        open_sources(["synthetic/poetry"], None, tok)


def test_reader_benchmark_command(tmp_path, capsys):
    """bench/bench_reader.py, the developer's measurement of the shard reader (a script, not a module)."""
    spec = importlib.util.spec_from_file_location("bench_reader", ROOT / "bench" / "bench_reader.py")
    bench_reader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_reader)
    main = bench_reader.main
    _shard_dir(tmp_path, load_tokenizer("bytes"))
    args = [str(tmp_path / "stream"), "--tokenizer", "bytes", "--batch", "4", "--row-len", str(ROW), "--seconds", "0.2"]
    assert main(args) == 0
    assert "batches/s" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), "--tokenizer", "bytes"]) == 2
    assert capsys.readouterr().err.startswith("error: no such data directory")
