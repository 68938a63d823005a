"""--resume continues exactly: 2N steps in one run and N steps + resume + N steps give identical
losses and weights (model, optimizer, controller, sampler and RNG state all restored)."""
import pytest
import torch
from train_helpers import metrics, tiny_settings, write_curriculum

from hamner.errors import TrainError
from hamner.train.settings import resume_settings
from hamner.train.trainer import train
from hamner.use.load import load_model

TOTAL = 10


@pytest.mark.parametrize("split", [4, 5, 7])  # inside stage 0, at its end, inside the ramped stage 1
def test_resume_gives_identical_losses(tmp_path, split):
    curriculum = write_curriculum(tmp_path, first=5, second=8, eval_interval=3)
    whole = train(tiny_settings(tmp_path / "whole", curriculum, max_steps=TOTAL))
    first = train(tiny_settings(tmp_path / "parts", curriculum, max_steps=split))
    assert (whole.step, first.step, first.reason) == (TOTAL, split, "max_steps")
    rest = train(resume_settings(tmp_path / "parts", {"max_steps": TOTAL}))
    assert rest.step == TOTAL

    expected = [(r["step"], r["loss"], r["val_loss"]) for r in metrics(tmp_path / "whole")]
    got = [(r["step"], r["loss"], r["val_loss"]) for r in metrics(tmp_path / "parts")]
    assert len(expected) == TOTAL and got == expected
    a, _ = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "parts")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_resume_refuses_changed_settings_and_finished_runs(tmp_path):
    curriculum = write_curriculum(tmp_path, first=2, second=2)
    train(tiny_settings(tmp_path / "run", curriculum))
    with pytest.raises(TrainError, match="batch-size cannot change"):
        resume_settings(tmp_path / "run", {"batch_size": 4})
    with pytest.raises(TrainError, match="already finished"):
        train(resume_settings(tmp_path / "run", {}))
    with pytest.raises(TrainError, match="no config.json"):
        resume_settings(tmp_path / "elsewhere", {})


def test_muon_resume_with_grad_accum_and_layer_scales_gives_identical_losses(tmp_path):
    curriculum = write_curriculum(tmp_path, first=4, second=4, eval_interval=3)
    curriculum.write_text(curriculum.read_text().replace(
        "fresh_optimizer = true", 'fresh_optimizer = true\nlayer_lr_scale = { layers = "middle:2", scale = 0.2 }'))
    muon = dict(optimizer="muon", grad_accum=2)
    train(tiny_settings(tmp_path / "whole", curriculum, max_steps=8, **muon))
    train(tiny_settings(tmp_path / "parts", curriculum, max_steps=6, **muon))  # resumes inside stage 1
    assert train(resume_settings(tmp_path / "parts", {"max_steps": 8})).step == 8

    expected = [(r["step"], r["loss"], r["val_loss"], r["lr"]) for r in metrics(tmp_path / "whole")]
    assert [(r["step"], r["loss"], r["val_loss"], r["lr"]) for r in metrics(tmp_path / "parts")] == expected
    assert "optimizer muon" in (tmp_path / "whole" / "train.log").read_text()
    a, _ = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "parts")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


WARMUP = """\
name = "warmup"
tokenizer = "bytes"

[[stages]]
name = "ramp"
steps = 6
weights = { synthetic = 1.0 }
difficulty = 1
lr = 3e-3
seq_len = [16, 48]
model = { window = [3, 12] }

[[stages]]
name = "after"
steps = 3
weights = { synthetic = 1.0 }
difficulty = 1
lr = 1e-3
"""


def test_resume_inside_seq_len_and_window_warm_ups_gives_identical_losses(tmp_path):
    """Rows grow 16 -> 48 tokens and a sliding window 3 -> 12 over the first stage; stopped at step 3 (window
    3 + 9 x 2/5 -> 6, rows of 32 tokens next) and resumed, the run trains the same rows at the same windows."""
    curriculum = tmp_path / "warmup.toml"
    curriculum.write_text(WARMUP)
    swa = tmp_path / "swa.toml"
    swa.write_text('mixer = "swa"\nwindow = 12\nn_layers = 2\n')
    ramped = dict(seq_len=None, model=str(swa))
    train(tiny_settings(tmp_path / "whole", curriculum, max_steps=8, **ramped))
    train(tiny_settings(tmp_path / "parts", curriculum, max_steps=3, **ramped))
    saved, _ = load_model(tmp_path / "parts")
    assert [int(layer.attn.current_window) for layer in saved.layers] == [6, 6]
    assert train(resume_settings(tmp_path / "parts", {"max_steps": 8})).step == 8

    expected = [(r["step"], r["loss"], r["tokens"]) for r in metrics(tmp_path / "whole")]
    assert [(r["step"], r["loss"], r["tokens"]) for r in metrics(tmp_path / "parts")] == expected
    a, _ = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "parts")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_resume_of_a_model_with_every_stack_option_gives_identical_losses(tmp_path):
    """qk_norm, the relu2 MLP, value embeddings and U-net skips on the demo preset, under Muon (its matrices) and
    AdamW (the tables, lambdas and skip weights): stopped inside stage 1 and resumed, the run is the same."""
    model_file = tmp_path / "options.toml"
    model_file.write_text('qk_norm = true\nmlp = "relu2"\nvalue_embeddings = 1\nskip = "unet"\n')
    curriculum = write_curriculum(tmp_path, first=3, second=4, eval_interval=3)
    options = dict(model=str(model_file), optimizer="muon")
    train(tiny_settings(tmp_path / "whole", curriculum, max_steps=7, **options))
    train(tiny_settings(tmp_path / "parts", curriculum, max_steps=5, **options))
    assert train(resume_settings(tmp_path / "parts", {"max_steps": 7})).step == 7

    expected = [(r["step"], r["loss"], r["val_loss"]) for r in metrics(tmp_path / "whole")]
    assert [(r["step"], r["loss"], r["val_loss"]) for r in metrics(tmp_path / "parts")] == expected
    a, config = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "parts")
    assert (config.qk_norm, config.mlp, config.value_embeddings, config.skip) == (True, "relu2", 1, "unet")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def _as_version_1(ckpt_dir, config) -> None:
    """Rewrite a checkpoint as format version 1 wrote it: attention's q/k moments in rotate-half row order."""
    import json

    from hamner.model.mixers.attention import Attention
    from hamner.model.transformer import HamnerModel
    from hamner.train.optim import build_optimizer

    model = HamnerModel(config)
    index = {id(p): i for i, p in enumerate(
        p for group in build_optimizer(model, 1e-3, torch.device("cpu")).param_groups for p in group["params"])}
    state = torch.load(ckpt_dir / "trainer.pt", weights_only=False)
    converted = 0
    for module in model.modules():
        if isinstance(module, Attention):
            moments = state["optimizer"]["state"][index[id(module.qkv.weight)]]
            for key in ("exp_avg", "exp_avg_sq"):
                moments[key] = module.to_rotate_half(moments[key])
                converted += 1
    assert converted == 2 * config.n_layers
    torch.save(state, ckpt_dir / "trainer.pt")
    meta = json.loads((ckpt_dir / "config.json").read_text())
    (ckpt_dir / "config.json").write_text(json.dumps({**meta, "version": 1}))


def test_resume_from_a_version_1_checkpoint_gives_identical_losses(tmp_path):
    """Version 1 held attention's q/k rows, and so their optimizer moments, in rotate-half order;
    resuming such a checkpoint converts them and continues exactly."""
    from hamner.run.checkpoint import resolve_checkpoint

    curriculum = write_curriculum(tmp_path, first=4, second=4)
    train(tiny_settings(tmp_path / "whole", curriculum, max_steps=6))
    train(tiny_settings(tmp_path / "parts", curriculum, max_steps=3))
    _, config = load_model(tmp_path / "parts")
    _as_version_1(resolve_checkpoint(tmp_path / "parts"), config)
    assert train(resume_settings(tmp_path / "parts", {"max_steps": 6})).step == 6
    expected = [(r["step"], r["loss"]) for r in metrics(tmp_path / "whole")]
    assert [(r["step"], r["loss"]) for r in metrics(tmp_path / "parts")] == expected
