"""`hamner eval RUN --memory` on a tiny agiformer-shaped run (SWA + Hebbian memory side by side, two stages
at plasticity 0.1 then 0.99): the measured decay, norm and share, and the figures across checkpoints."""
import json
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_settings

from hamner.commands.eval import main as eval_main
from hamner.errors import ConfigError, CurriculumError, EvalError
from hamner.eval.memory import measure_memory, study_memory
from hamner.model.config import HamnerConfig
from hamner.model.transformer import HamnerModel
from hamner.train.settings import resume_settings
from hamner.train.trainer import train
from hamner.use.load import load_model

MODEL = """\
hidden_size = 32
n_layers = 2
n_heads = 2
n_kv_heads = 2
intermediate_size = 64
max_seq_len = 64
mixer = "swa+hebbian"
window = 8
"""

CURRICULUM = """\
name = "memory-test"
tokenizer = "bytes"

[[stages]]
name = "low"
steps = 2
weights = { stories = 1.0 }
lr = 3e-3
model = { plasticity = 0.1 }

[[stages]]
name = "high"
steps = 2
weights = { stories = 1.0 }
lr = 3e-3
model = { plasticity = 0.99 }
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("memory")
    (root / "model.toml").write_text(MODEL)
    (root / "curriculum.toml").write_text(CURRICULUM)
    run = root / "run"
    train(tiny_settings(run, root / "curriculum.toml", preset="agiformer-31m", model=str(root / "model.toml")))
    return run


def test_the_memory_across_stages(run, capsys):
    assert eval_main([str(run), "--memory", "--all-checkpoints", "--sequences", "2", "--length", "48",
                      "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "memory_evolution.png" in out and "share" in out
    report = json.loads((run / "memory" / "memory.json").read_text())
    low, high = report["checkpoints"]
    assert (low["step"], high["step"]) == (2, 4)
    for checkpoint, alpha in ((low, 0.1), (high, 0.99)):
        assert [layer["layer"] for layer in checkpoint["layers"]] == [0, 1]
        for layer in checkpoint["layers"]:
            assert layer["plasticity"] == pytest.approx(alpha)
            assert all(alpha * 0.99 <= d <= alpha for d in layer["decay"]) and len(layer["decay"]) == 2
            assert len(layer["memory_norm"]) == 2 and len(layer["memory_norm"][0]) == 48
            assert len(layer["share"]) == 48 and all(0 < s < 1 for s in layer["share"])
            assert all(0 < s < 1 for head in layer["head_share"] for s in head)
    # a slow decay lets the memory build up along the text; a fast one keeps it near one token's worth
    grow = [layer["memory_norm"][0][-1] / layer["memory_norm"][0][0] for layer in high["layers"]]
    assert all(g > 5 for g in grow)
    for name in ("memory.png", "memory_evolution.png"):
        assert (run / "memory" / name).stat().st_size > 10_000
    assert eval_main([str(run), "--memory", "--length", "65", "--device", "cpu"]) == 2
    assert "longer than the model's context (64)" in capsys.readouterr().err


def test_the_norm_is_the_recurrence_of_the_layers_keys_and_values():
    config = HamnerConfig(vocab_size=257, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=2, intermediate_size=64,
                          max_seq_len=32, mixer="hebbian", tokenizer="bytes")
    torch.manual_seed(0)
    model = HamnerModel(config).eval()
    memory = model.layers[0].attn
    memory.set_knob("plasticity", 0.5)
    tokens = torch.randint(0, 257, (1, 5))
    seen = {}
    hook = memory.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    (layer,) = measure_memory(model, tokens)
    hook.remove()
    assert layer["share"] == pytest.approx([1.0] * 5)  # the memory is the layer's only mixer
    lam = memory.log_decay().exp()
    assert layer["decay"] == pytest.approx(lam.tolist())
    assert layer["horizon_tokens"] == pytest.approx([1 / (1 - v) for v in lam.tolist()])
    with torch.no_grad():
        _, k, v = memory.qkv(seen["x"]).view(1, 5, 3, 2, 16).unbind(2)
        k = torch.nn.functional.elu(k) + 1
        for head in range(2):  # M_t = sum over s <= t of lam^(t - s) phi(k_s) v_s^T
            for t in range(5):
                m = sum(lam[head] ** (t - s) * torch.outer(k[0, s, head], v[0, s, head]) for s in range(t + 1))
                assert layer["memory_norm"][head][t] == pytest.approx(float(m.norm()), rel=1e-4)


def test_a_model_without_memory_is_one_error():
    config = HamnerConfig(vocab_size=257, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=2, intermediate_size=64,
                          max_seq_len=32, tokenizer="bytes")
    with pytest.raises(EvalError, match="no Hebbian memory"):
        measure_memory(HamnerModel(config).eval(), torch.zeros(1, 4, dtype=torch.long))


PER_LAYER = CURRICULUM.replace("model = { plasticity = 0.99 }", "model = { plasticity = [0.3, 0.9] }")


def layer_plasticity(model: HamnerModel) -> list[float]:
    return [round(float(layer.attn["hebbian"].plasticity), 6) for layer in model.layers]


def test_per_layer_plasticity_is_set_saved_and_resumed(tmp_path):
    (tmp_path / "model.toml").write_text(MODEL)
    (tmp_path / "curriculum.toml").write_text(PER_LAYER)
    run = tmp_path / "run"
    settings = dict(preset="agiformer-31m", model=str(tmp_path / "model.toml"))
    train(tiny_settings(run, tmp_path / "curriculum.toml", max_steps=3, **settings))
    model, _ = load_model(run)  # the checkpoint of step 3, in the per-layer stage
    assert layer_plasticity(model) == [0.3, 0.9]
    train(resume_settings(run, {"max_steps": 4}))
    model, _ = load_model(run)
    assert layer_plasticity(model) == [0.3, 0.9]
    assert layer_plasticity(load_model(run / "checkpoints" / "stage-0-end")[0]) == [0.1, 0.1]

    with pytest.raises(CurriculumError, match="has 3 values, one per layer, but the model has 2 layers"):
        model.set_knob("plasticity", (0.5, 0.5, 0.5))
    with pytest.raises(CurriculumError, match="plasticity must be in"):
        model.check_knob("plasticity", (0.5, 1.5))
    (tmp_path / "bad.toml").write_text(CURRICULUM.replace("0.99 }", "[0.5, 1.5, 0.5] }"))
    with pytest.raises(CurriculumError, match=r"stages\[1\]\.model.*3 values.*2 layers"):
        train(tiny_settings(tmp_path / "bad-run", tmp_path / "bad.toml", **settings))
    (tmp_path / "bad.toml").write_text(CURRICULUM.replace("0.99 }", "[0.5, \"x\"] }"))
    with pytest.raises(CurriculumError, match=r"plasticity\.1: must be a finite number"):
        train(tiny_settings(tmp_path / "bad-run", tmp_path / "bad.toml", **settings))


LEARNT = CURRICULUM.replace("model = { plasticity = 0.1 }\n", "").replace("model = { plasticity = 0.99 }\n", "")


def test_learnt_plasticity_trains_stays_bounded_and_resumes(tmp_path):
    (tmp_path / "model.toml").write_text(MODEL + "hebbian_learnt_plasticity = true\nhebbian_plasticity = 0.9\n")
    (tmp_path / "curriculum.toml").write_text(LEARNT)
    run = tmp_path / "run"
    settings = dict(preset="agiformer-31m", model=str(tmp_path / "model.toml"))
    train(tiny_settings(run, tmp_path / "curriculum.toml", max_steps=2, **settings))
    model, config = load_model(run)
    assert config.hebbian_learnt_plasticity
    alphas = [layer.attn["hebbian"].alpha().item() for layer in model.layers]
    assert all(0 < a < 1 for a in alphas) and alphas != pytest.approx([0.9, 0.9], abs=1e-7)  # it moved
    train(resume_settings(run, {"max_steps": 4}))
    straight = tmp_path / "straight"
    train(tiny_settings(straight, tmp_path / "curriculum.toml", max_steps=4, **settings))
    resumed, uninterrupted = ([layer.attn["hebbian"].alpha().item() for layer in load_model(r)[0].layers]
                              for r in (run, straight))
    assert resumed != pytest.approx(alphas, abs=1e-7) and resumed == uninterrupted
    assert study_memory(run, sequences=1, length=16)[0]["checkpoints"][0]["layers"][0]["plasticity"] \
        == pytest.approx(resumed[0])

    (tmp_path / "knob.toml").write_text(CURRICULUM)
    with pytest.raises(CurriculumError, match="plasticity is learnt in this model"):
        train(tiny_settings(tmp_path / "other", tmp_path / "knob.toml", **settings))
    with pytest.raises(ConfigError, match="starts below 1"):
        HamnerModel(HamnerConfig(vocab_size=257, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                 intermediate_size=64, max_seq_len=32, mixer="hebbian", hebbian_learnt_plasticity=True,
                                 hebbian_plasticity=1.0, tokenizer="bytes"))
