"""--init-from a plain state-dict file (.pt, .pth, .safetensors) of a Llama-style model: the layouts
training scripts save, Hamner, Hugging Face Llama and the original Hamner project's names, read with
weights_only; every tensor that does not fit is named on one line."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from tiny_checkpoint import tiny_config
from train_helpers import tiny_settings, write_curriculum

from hamner.errors import CheckpointError
from hamner.model.transformer import HamnerModel
from hamner.train.trainer import train
from hamner.use.hf import to_hf_state_dict
from hamner.use.load import load_model, load_state_file

CONFIG = tiny_config()


def source_model(seed: int = 3) -> HamnerModel:
    torch.manual_seed(seed)
    return HamnerModel(CONFIG).eval()


def original_names(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original Hamner project's names (model.py: embed_tokens, attention.*_proj, attn_norm, mlp_norm,
    final_norm, a tied lm_head) for a Hugging Face Llama state dict."""
    out = {}
    for name, tensor in hf.items():
        name = name.removeprefix("model.").replace("self_attn.", "attention.")
        name = name.replace("input_layernorm", "attn_norm").replace("post_attention_layernorm", "mlp_norm")
        out["final_norm.weight" if name == "norm.weight" else name] = tensor
    out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def assert_same_weights(model: HamnerModel, source: HamnerModel) -> None:
    theirs = source.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name


def layouts(source: HamnerModel) -> dict[str, tuple[str, object]]:
    """file name -> what it holds, one per layout and prefix."""
    ours = source.state_dict()
    hf = to_hf_state_dict(ours, CONFIG)
    return {
        "top.pt": ("torch", ours),
        "compiled.pt": ("torch", {"model_state_dict": {"_orig_mod." + k: v for k, v in ours.items()}, "step": 7,
                                  "config": {"hidden_size": 64}, "optimizer_state_dict": {"state": {}}}),
        "ddp.pth": ("torch", {"model": {"module." + k: v for k, v in hf.items()}, "timestamp": "2026-02-18"}),
        "original.pt": ("torch", {"model_state_dict": original_names(hf), "avg_loss": 3.4}),
        "hf.safetensors": ("safetensors", {**hf, "lm_head.weight": hf["model.embed_tokens.weight"].clone()}),
    }


def write(path, kind, content):
    if kind == "torch":
        torch.save(content, path)
    else:
        save_file({k: v.contiguous() for k, v in content.items()}, str(path))
    return path


@pytest.mark.parametrize("name", ["top.pt", "compiled.pt", "ddp.pth", "original.pt", "hf.safetensors"])
def test_every_layout_loads_the_same_weights(tmp_path, name):
    source = source_model()
    kind, content = layouts(source)[name]
    path = write(tmp_path / name, kind, content)
    model, config = load_model(path, config=CONFIG)
    assert config is CONFIG
    assert_same_weights(model, source)
    idx = torch.randint(0, 257, (2, 16))
    assert torch.equal(model.eval()(idx, None), source(idx, None))


def test_a_bare_file_needs_a_model_config(tmp_path):
    path = write(tmp_path / "top.pt", *layouts(source_model())["top.pt"])
    with pytest.raises(CheckpointError, match="without a model config"):
        load_model(path)


def test_misshapen_missing_and_extra_tensors_are_named_on_one_line(tmp_path):
    state = dict(source_model().state_dict())
    state["layers.1.mlp.down.weight"] = torch.zeros(3, 3)
    del state["norm.weight"]
    state["rotary.inv_freq"] = torch.ones(8)
    path = write(tmp_path / "bad.pt", "torch", state)
    with pytest.raises(CheckpointError) as err:
        load_state_file(path, CONFIG)
    message = str(err.value)
    assert "\n" not in message
    assert "missing: norm.weight" in message and "not in the model: rotary.inv_freq" in message
    assert "wrong shape: layers.1.mlp.down.weight (3, 3) vs (64, 90)" in message


def test_missing_llama_tensors_are_named_as_the_file_names_them(tmp_path):
    hf = to_hf_state_dict(source_model().state_dict(), CONFIG)
    del hf["model.layers.0.self_attn.k_proj.weight"]
    hf["lm_head.weight"] = torch.randn_like(hf["model.embed_tokens.weight"])  # untied: Hamner cannot hold it
    path = write(tmp_path / "hf.safetensors", "safetensors", hf)
    with pytest.raises(CheckpointError, match=r"missing: model\.layers\.0\.self_attn\.k_proj\.weight; "
                                              r"not in the model: lm_head\.weight"):
        load_state_file(path, CONFIG)


class Payload:
    """An object a pickle can only restore by running code."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content", [[1, 2, 3], {"step": 3, "note": "no tensors"}, b"garbage", Payload()])
def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path, content, capsys):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        with open(path, "wb") as handle:
            pickle.dump(content, handle, protocol=2) if isinstance(content, Payload) else torch.save(content, handle)
    with pytest.raises(CheckpointError, match="x.pt") as err:
        load_state_file(path, CONFIG)
    assert "\n" not in str(err.value)
    assert "never run" not in capsys.readouterr().out


def test_training_warm_starts_from_a_plain_checkpoint(tmp_path):
    """The demo preset continued from a .pt file its own model was saved to, as the original's latest.pt."""
    from hamner.model.config import model_config

    torch.manual_seed(5)
    source = HamnerModel(model_config("demo"))
    hf = to_hf_state_dict(source.state_dict(), model_config("demo"))
    torch.save({"model_state_dict": original_names(hf), "step": 122_000}, tmp_path / "latest.pt")
    curriculum = write_curriculum(tmp_path, first=1, second=1)
    run = tmp_path / "warm"
    train(tiny_settings(run, curriculum, max_steps=1, lr=1e-12, init_from=str(tmp_path / "latest.pt")))
    trained, _ = load_model(run)
    assert "initialised from" in (run / "train.log").read_text()
    theirs = source.state_dict()
    for name, tensor in trained.state_dict().items():  # one step at LR 1e-12 leaves the weights as loaded
        assert torch.allclose(tensor, theirs[name], atol=1e-9), name
