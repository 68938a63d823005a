"""Hugging Face export and import: transformers loads the export with our logits, and it reads back exactly."""
import json
import subprocess

import pytest
import torch
from tiny_checkpoint import tiny_config

from hamner.commands.export import main as export_main
from hamner.data.tokenizer import load_tokenizer
from hamner.errors import CheckpointError
from hamner.model.config import HamnerConfig
from hamner.model.transformer import HamnerModel
from hamner.run.checkpoint import save_checkpoint
from hamner.use.hf import byte_tokenizer_json, export_hf, load_hf_model


def trained_looking(config: HamnerConfig) -> HamnerModel:
    """A random model whose norm weights are not all ones, so a swapped norm would show in the logits."""
    torch.manual_seed(0)
    model = HamnerModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_transformers_loads_export_with_our_logits(tmp_path, n_kv_heads):
    from transformers import AutoModelForCausalLM

    config = tiny_config(n_kv_heads=n_kv_heads, rope_theta=5000.0)
    model = trained_looking(config)
    export_hf(model, config, tmp_path, eos_id=256)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.tie_word_embeddings and hf.dtype == torch.float32
    idx = torch.randint(0, config.vocab_size, (2, config.max_seq_len))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    assert rel_err(theirs, ours) <= 1e-5
    # What transformers itself saves (e.g. after fine-tuning there) reads back into the same model.
    hf.save_pretrained(tmp_path / "resaved")
    back, back_config = load_hf_model(tmp_path / "resaved")
    assert back_config == config
    with torch.no_grad():
        assert torch.equal(back(idx), ours)


def test_round_trip_restores_model_and_config(tmp_path):
    config = tiny_config()
    model = trained_looking(config)
    export_hf(model, config, tmp_path, eos_id=256)
    back, back_config = load_hf_model(tmp_path)
    assert back_config == config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_byte_tokenizer_file_matches_builtin_bytes():
    from tokenizers import Tokenizer

    exported = Tokenizer.from_str(json.dumps(byte_tokenizer_json()))
    ours = load_tokenizer("bytes")
    text = "Grüße, 日本!\n\ttabs and  spaces <|endoftext|>next ÿ\x00"
    assert exported.encode(text).ids == ours.encode(text)
    assert exported.get_vocab_size() == ours.vocab_size == 257
    assert exported.decode(ours.encode("héllo wörld")) == "héllo wörld"


def test_export_copies_tokenizer_json_and_import_uses_it(tmp_path, shared_data):
    from transformers import AutoTokenizer

    spec = str(shared_data / "cosmo2_tokenizer.json")
    config = tiny_config(vocab_size=49152, tokenizer=spec)
    model = HamnerModel(config)
    export_hf(model, config, tmp_path, eos_id=0)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Once upon a time, there was a little cat."
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == load_tokenizer(spec).encode(text)
    assert hf_tok.eos_token_id == 0
    _, back_config = load_hf_model(tmp_path)
    assert load_tokenizer(back_config.tokenizer).fingerprint == load_tokenizer(spec).fingerprint


def test_import_refuses_what_hamner_cannot_represent(tmp_path):
    config = tiny_config()
    export_hf(HamnerModel(config), config, tmp_path, eos_id=256)
    fields = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "attention_bias": True}))
    with pytest.raises(CheckpointError, match="attention_bias"):
        load_hf_model(tmp_path)
    with pytest.raises(CheckpointError, match="not a Hugging Face Llama directory"):
        load_hf_model(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps(fields))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_hf_model(tmp_path)


def test_export_command(tmp_path, python, subprocess_env, capsys):
    config = tiny_config()
    model = trained_looking(config)
    save_checkpoint(tmp_path / "run", ["step-00000001"], model, {"model": config.to_dict()}, None)
    out = tmp_path / "hf"
    done = subprocess.run([python, "-m", "hamner", "export", str(tmp_path / "run"), str(out)],
                          env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    back, _ = load_hf_model(out)
    idx = torch.randint(0, config.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(back(idx), model(idx))
    assert export_main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err


def test_export_refuses_run_and_checkpoint_directories_and_needs_force_elsewhere(tmp_path, capsys):
    config = tiny_config()
    run = tmp_path / "run"
    written = save_checkpoint(run, ["step-00000001"], trained_looking(config), {"model": config.to_dict()}, None)
    (run / "config.json").write_text(json.dumps({"settings": {"preset": "demo"}}))
    before = {p: p.read_bytes() for p in (run / "config.json", written / "config.json")}

    def export(out, *flags):
        rc = export_main([str(run), str(out), *flags])
        return rc, capsys.readouterr().err

    for target in (run, run / "checkpoints", written):
        rc, err = export(target, "--force")
        assert rc == 2 and "Hamner run or checkpoint directory" in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in before} == before  # the run is untouched and still resumable

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    rc, err = export(busy)
    assert rc == 2 and "pass --force" in err
    assert export(busy, "--force")[0] == 0
    assert (busy / "notes.txt").read_text() == "mine" and (busy / "model.safetensors").is_file()
    assert export(busy, "--force")[0] == 0  # a previous export may be overwritten
    assert export(tmp_path / "fresh")[0] == 0
