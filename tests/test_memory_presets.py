"""The presets built on the Hebbian memory and TTT-Linear (agiformer-31m, ttt-125m): pinned
parameter counts, and tiny models of the same blocks through the whole model: causality, cached
greedy decoding = recomputation, a loss that falls, the plasticity knob through curriculum stages
and resume, and agiformer-31m training on agiformer-3stage from prepared byte shards."""
import dataclasses

import numpy as np
import pytest
import torch
from train_helpers import assert_compiled_step_matches_eager, plain_training_losses, tiny_settings

from hamner import HamnerConfig, HamnerModel, model_config
from hamner.data.shards import write_meta, write_shard
from hamner.data.tokenizer import load_tokenizer
from hamner.errors import CurriculumError
from hamner.model.config import PRESETS
from hamner.train.settings import resume_settings
from hamner.train.trainer import train
from hamner.use.generate import generate
from hamner.use.load import load_model

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "agiformer-31m": HamnerConfig(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=4,
                                  intermediate_size=96, max_seq_len=48, mixer="swa+hebbian", window=8),
    "ttt-125m": HamnerConfig(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=4,
                             intermediate_size=96, max_seq_len=48, mixer="ttt_linear", ttt_mini_batch=8),
}


@pytest.mark.parametrize("name, expected", [("agiformer-31m", 31_024_176), ("ttt-125m", 123_449_424)])
def test_preset_parameter_counts_are_exact(name, expected):
    config = model_config(name)
    with torch.device("meta"):
        assert HamnerModel(config).num_parameters() == expected
    # the tiny stand-ins share the presets' blocks
    assert (TINY[name].mixer, TINY[name].mlp) == (config.mixer, config.mlp)


def test_agiformer_shape():
    c = model_config("agiformer-31m")
    assert (c.vocab_size, c.tokenizer, c.hidden_size, c.n_layers, c.max_seq_len) == (257, "bytes", 512, 6, 1024)
    assert c.layer_mixer_names(0) == ["swa", "hebbian"]


def tiny_model(name: str, seed: int = 0, dtype=torch.float64) -> HamnerModel:
    torch.manual_seed(seed)
    config = dataclasses.replace(TINY[name], init_std=0.3)  # peaked logits: no near-ties in greedy choices
    return HamnerModel(config).to(dtype)


@pytest.mark.parametrize("name", TINY)
def test_causal_through_the_model(name):
    model = tiny_model(name)
    idx = torch.randint(0, 97, (2, 40))
    changed = idx.clone()
    changed[:, 21:] = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :21], b[:, :21]) and not torch.allclose(a[:, 21:], b[:, 21:])


@pytest.mark.parametrize("name", TINY)
def test_cached_greedy_decoding_equals_recomputation(name):
    model = tiny_model(name)
    prompts = [[5, 17, 3, 60, 2], [9, 1, 4, 4, 8], [7]]  # the batch shrinks as rows stop on eos
    cached = generate(model, prompts, 30, temperature=0, use_cache=True, eos_id=11)
    assert cached == generate(model, prompts, 30, temperature=0, use_cache=False, eos_id=11)
    assert max(len(ids) for ids in cached) == 30
    # past the context (48): the context is cropped and decoding goes on, cached or not
    long = list(range(1, 45))
    assert generate(model, long, 10, temperature=0) == generate(model, long, 10, temperature=0, use_cache=False)


@pytest.mark.parametrize("name", TINY)
def test_a_tiny_model_lowers_its_loss_in_30_steps(name):
    torch.manual_seed(0)
    model = HamnerModel(TINY[name])
    batch = torch.randint(0, 97, (4, 1)).repeat(1, 33) + torch.arange(33) % 5  # a learnable pattern
    losses = plain_training_losses(model, batch, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0]


def test_the_plasticity_knob_on_the_model():
    agiformer, ttt = tiny_model("agiformer-31m"), tiny_model("ttt-125m")
    assert agiformer.knob_names() == ["plasticity", "window"] and ttt.knob_names() == []  # swa+hebbian
    agiformer.set_knob("plasticity", 0.25)
    values = [v.item() for k, v in agiformer.state_dict().items() if k.endswith("plasticity")]
    assert values == [0.25, 0.25]  # one per layer, saved with the weights
    with pytest.raises(CurriculumError, match=r"plasticity must be in \(0, 1\], got 2"):
        agiformer.check_knob("plasticity", 2)
    with pytest.raises(CurriculumError, match="the model has no knob 'plasticity' \\(its knobs: none\\)"):
        ttt.set_knob("plasticity", 0.5)


KNOB_CURRICULUM = """\
name = "knobs"
tokenizer = "bytes"
[defaults]
weights = { stories = 1.0 }
lr = 1e-3
[[stages]]
name = "low"
steps = 2
model = { plasticity = 0.10 }
[[stages]]
name = "mid"
steps = 3
model = { plasticity = 0.50 }
[[stages]]
name = "high"
steps = 2
model = { plasticity = 0.99 }
"""


def plasticities(run) -> set[float]:
    model, _ = load_model(run)
    return {round(v.item(), 6) for k, v in model.state_dict().items() if k.endswith("plasticity")}


def test_the_trainer_sets_each_stage_s_plasticity_and_resume_restores_it(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny-agiformer", dataclasses.replace(TINY["agiformer-31m"], vocab_size=257))
    curriculum = tmp_path / "knobs.toml"
    curriculum.write_text(KNOB_CURRICULUM)
    run = tmp_path / "run"
    # Stops right at the end of stage "low": its stage-end checkpoint still holds 0.10, the
    # controller is already in "mid".
    train(tiny_settings(run, curriculum, preset="tiny-agiformer", max_steps=2, seq_len=16))
    assert plasticities(run) == {0.10}
    train(resume_settings(run, {"max_steps": 3}))  # resumed mid-stage: one step of "mid"
    assert plasticities(run) == {0.50}
    curriculum.write_text(KNOB_CURRICULUM.replace("plasticity = 0.99", "plasticity = 1.5"))
    with pytest.raises(CurriculumError, match=r"knobs.toml: stages\[2\]\.model\.plasticity: plasticity must be in"):
        train(tiny_settings(tmp_path / "bad", curriculum, preset="tiny-agiformer", max_steps=1, seq_len=16))
    curriculum.write_text(KNOB_CURRICULUM)
    with pytest.raises(CurriculumError, match=r"stages\[0\]\.model\.plasticity: the model has no knob 'plasticity'"):
        train(tiny_settings(tmp_path / "demo", curriculum, max_steps=1, seq_len=16))


def test_agiformer_31m_trains_on_agiformer_3stage_from_prepared_byte_shards(tmp_path, shared_data):
    text = (shared_data / "tinystories_valid_794KB.txt").read_bytes()[:20_000]
    tokens = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    data = tmp_path / "data"
    bytes_tokenizer = load_tokenizer("bytes")
    for source in ("dictionary", "children_stories", "encyclopedia"):
        write_shard(data / source / "train_000000.bin", tokens)
        write_shard(data / source / "val_000000.bin", tokens[:4_000])
        write_meta(data / source, {"tokenizer": bytes_tokenizer.name,
                                   "tokenizer_fingerprint": bytes_tokenizer.fingerprint})
    run = tmp_path / "run"
    result = train(tiny_settings(run, "agiformer-3stage", preset="agiformer-31m", data=str(data),
                                 max_steps=2, batch_size=1, seq_len=32))
    assert result.step == 2 and plasticities(run) == {0.10}


@pytest.fixture
def fresh_dynamo():
    """Compile with no state from other tests, and leave none (shapes seen here would make later
    compiles of the same model code dynamic)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_traces_the_memory_and_ttt_in_one_graph(fresh_dynamo):
    torch.manual_seed(0)
    config = dataclasses.replace(TINY["agiformer-31m"], layer_mixers=["hebbian", "ttt_linear"], ttt_mini_batch=4)
    model = HamnerModel(config).train()
    idx = torch.randint(0, 97, (2, 10))  # the last TTT mini-batch is partial
    assert_compiled_step_matches_eager(model, idx, idx)
