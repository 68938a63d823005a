"""GGUF export: gguf's reader reads back every key and tensor, llama.cpp itself (llama-cpp-python) tokenizes like
Hamner and computes Hamner's logits, and `hamner export --format gguf` guards its target like the HF export."""
from __future__ import annotations

import errno
import importlib.util
import json
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from test_fault_injection import kill_points, record, run_killed
from test_fault_injection import pytestmark as needs_fork
from tiny_checkpoint import tiny_config

from hamner.commands.export import main as export_main
from hamner.data.chat_format import prompt_for_reply
from hamner.data.tokenizer import load_tokenizer
from hamner.errors import ExportError
from hamner.model.config import HamnerConfig, model_config
from hamner.model.transformer import HamnerModel
from hamner.run.checkpoint import save_checkpoint
from hamner.use.generate import generate
from hamner.use.gguf_file import chat_template, export_gguf

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one torch thread
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason=(
    "llama-cpp-python is not installed: pip install -e '.[llama]' (it compiles llama.cpp; .ci/run installs it)"))

TEXT = "Grüße, 日本!\n\ttabs and  spaces 3.14159 don't <|endoftext|>next ÿ\x00\x7f end"
PROMPT = "Once upon a time, there was a little"
STORY = (" girl named Lily. She loved to play outside in the park with her red ball. One day, the ball rolled "
         "into a big puddle and Lily laughed.")


def sharp_model(config: HamnerConfig, seed: int = 0) -> HamnerModel:
    """A seeded random model with norms away from one (a swapped norm shows in the logits) and weights 4x the
    init's (logits far from uniform; `memorise` then takes a few dozen steps)."""
    torch.manual_seed(seed)
    model = HamnerModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.mul_(4.0)
    return model


def converter_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's Hugging Face converter's q/k permutation (convert_hf_to_gguf.py, LlamaModel.permute):
    rotate-half rows -> the adjacent pairs llama.cpp's RoPE rotates."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected_tensors(model: HamnerModel, config: HamnerConfig) -> dict[str, np.ndarray]:
    """What llama.cpp's converter would write for the Hugging Face export of `model`, from the state dict."""
    state = model.state_dict()
    q, kv, inter = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim, config.intermediate_size
    out = {"token_embd.weight": state["embed.weight"], "output_norm.weight": state["norm.weight"]}
    for i in range(config.n_layers):
        ours = {k.removeprefix(f"layers.{i}."): v for k, v in state.items() if k.startswith(f"layers.{i}.")}
        wq, wk, wv = ours["attn.qkv.weight"].split((q, kv, kv))
        gate, up = ours["mlp.gate_up.weight"].split((inter, inter))
        out.update({f"blk.{i}.{k}": v for k, v in {
            "attn_norm.weight": ours["attn_norm.weight"], "attn_q.weight": converter_permute(wq, config.n_heads),
            "attn_k.weight": converter_permute(wk, config.n_kv_heads), "attn_v.weight": wv,
            "attn_output.weight": ours["attn.out.weight"], "ffn_norm.weight": ours["mlp_norm.weight"],
            "ffn_gate.weight": gate, "ffn_up.weight": up, "ffn_down.weight": ours["mlp.down.weight"]}.items()})
    return {k: v.float().numpy() for k, v in out.items()}


def read_fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_reader_reads_back_every_key_and_tensor(tmp_path, quant):
    config = tiny_config(rope_theta=5000.0, norm_eps=1e-6, intermediate_size=96)
    model = sharp_model(config)
    path = export_gguf(model, config, tmp_path / "m.gguf", eos_id=256, quant=quant, name="tiny",
                       source={"run": "tiny", "checkpoint": "step-00000007", "step": 7})
    fields = read_fields(path)
    byte_chars = [chr(b) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255 else None for b in range(256)]
    assert sum(c is None for c in byte_chars) == 68
    shifted = iter(range(256, 256 + 68))
    byte_chars = [c or chr(next(shifted)) for c in byte_chars]
    file_type = {"f32": 0, "f16": 1, "q8_0": 7}[quant]
    assert fields == {
        "general.architecture": "llama", "general.type": "model", "general.name": "tiny",
        "general.file_type": file_type, "general.quantization_version": 2,
        "llama.context_length": 64, "llama.embedding_length": 64, "llama.block_count": 2,
        "llama.feed_forward_length": 96, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16, "llama.rope.freq_base": 5000.0,
        "llama.attention.layer_norm_rms_epsilon": pytest.approx(1e-6), "llama.vocab_size": 257,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": [*byte_chars, "<|endoftext|>"], "tokenizer.ggml.token_type": [1] * 256 + [3],
        "tokenizer.ggml.merges": ["<|endoftext|> <|endoftext|>"], "tokenizer.chat_template": chat_template(),
        "tokenizer.ggml.bos_token_id": 256, "tokenizer.ggml.eos_token_id": 256,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": False,
        "hamner.tokenizer": "bytes", "hamner.run": "tiny", "hamner.checkpoint": "step-00000007", "hamner.step": 7,
    }
    expected = expected_tensors(model, config)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert list(tensors) == list(expected)  # output.weight absent: llama.cpp ties the head to token_embd
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, want in expected.items():
        t = tensors[name]
        assert tuple(int(n) for n in t.shape) == want.shape[::-1], name
        if want.ndim == 1 or quant == "f32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(t.data, want), name
        elif quant == "f16":
            assert t.tensor_type == gguf.GGMLQuantizationType.F16 and np.array_equal(t.data, want.astype(np.float16))
        else:
            assert t.tensor_type == q8, name
            back = gguf.quants.dequantize(t.data, q8)
            assert np.abs(back - want).max() <= np.abs(want).max(axis=-1, keepdims=True).max() / 127, name


def test_cosmo2_vocabulary_goes_in_whole_with_its_merges(tmp_path, shared_data):
    spec = str(shared_data / "cosmo2_tokenizer.json")
    config = tiny_config(vocab_size=49152 + 3, tokenizer=spec)  # three rows past the tokenizer: padding
    path = export_gguf(HamnerModel(config), config, tmp_path / "c.gguf", eos_id=0, quant="f16")
    fields = read_fields(path)
    source = json.loads(Path(spec).read_text())
    vocab = source["model"]["vocab"]
    assert fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get) + ["[PAD49152]", "[PAD49153]",
                                                                             "[PAD49154]"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m)
                                               for m in source["model"]["merges"]]
    special = {t["id"] for t in source["added_tokens"] if t["special"]}
    assert [i for i, t in enumerate(fields["tokenizer.ggml.token_type"]) if t == 3] == sorted(special)
    assert fields["tokenizer.ggml.token_type"][-3:] == [5, 5, 5]
    assert fields["tokenizer.ggml.eos_token_id"] == 0 and fields["hamner.tokenizer"] == spec


def test_refuses_models_and_tokenizers_llama_cpp_cannot_run(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    swa = tiny_config(mixer="swa", window=16)
    with pytest.raises(ExportError, match="mixer.*swa.*only attention \\+ swiglu"):
        export_gguf(HamnerModel(swa), swa, tmp_path / "swa.gguf", eos_id=256)
    for option, named in ((dict(qk_norm=True), "qk_norm"), (dict(logit_softcap=15.0), "logit_softcap")):
        config = tiny_config(**option)
        with pytest.raises(ExportError, match=f"cannot export to GGUF.*{named}"):
            export_gguf(HamnerModel(config), config, tmp_path / "option.gguf", eos_id=256)
    spm_like = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "<|endoftext|>": 2}, merges=[]))
    spm_like.pre_tokenizer = pre_tokenizers.Metaspace()
    spm_like.save(str(tmp_path / "tokenizer.json"))
    config = tiny_config(vocab_size=3, tokenizer=str(tmp_path / "tokenizer.json"))
    with pytest.raises(ExportError, match="pre-tokenizer .*Metaspace"):
        export_gguf(HamnerModel(config), config, tmp_path / "spm.gguf", eos_id=2)
    with pytest.raises(ExportError, match="--quant"):
        export_gguf(HamnerModel(tiny_config()), tiny_config(), tmp_path / "q.gguf", eos_id=256, quant="q4_0")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_export_command_writes_gguf_and_guards_its_target(tmp_path, python, subprocess_env, capsys):
    run, config = tmp_path / "run", tiny_config()
    save_checkpoint(run, ["step-00000001"], sharp_model(config), {"model": config.to_dict(), "step": 1}, None)
    (run / "config.json").write_text(json.dumps({"settings": {"preset": "demo"}}))
    out = tmp_path / "out" / "tiny.gguf"
    done = subprocess.run([python, "-m", "hamner", "export", str(run), str(out), "--quant", "q8_0"],
                          env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and "q8_0" in done.stdout
    fields = read_fields(out)
    assert (fields["general.name"], fields["hamner.run"], fields["hamner.step"]) == ("run", "run", 1)
    assert fields["hamner.checkpoint"] == "step-00000001" and fields["general.file_type"] == 7

    def export(target, *flags):
        rc = export_main([str(run), str(target), *flags])
        return rc, capsys.readouterr().err

    before = out.read_bytes()
    rc, err = export(out)
    assert rc == 2 and "exists; pass --force" in err and err.count("\n") == 1 and out.read_bytes() == before
    assert export(out, "--force")[0] == 0 and out.read_bytes() != before  # f32 now, over the q8_0 file
    for target in (run / "m.gguf", run / "checkpoints" / "m.gguf", run / "checkpoints" / "step-00000001" / "m.gguf",
                   run / "config.json"):
        rc, err = export(target, "--force", "--format", "gguf")
        assert rc == 2 and "Hamner run or checkpoint directory" in err and err.count("\n") == 1, err
    rc, err = export(tmp_path / "out", "--format", "gguf", "--force")
    assert rc == 2 and "is a directory" in err
    with pytest.raises(SystemExit, match="2"):
        export(tmp_path / "hf", "--quant", "f16")
    assert "--quant applies to --format gguf only" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.gguf"]  # no temporary left behind


@needs_fork
def test_a_kill_at_any_point_leaves_the_old_file_or_the_new_one(tmp_path):
    """The GGUF file appears whole under its name or not at all: killed at every fsync and rename (and with
    the temporary torn at its fsync), the target holds the previous export, or the complete new one."""
    config = tiny_config()
    old_model, new_model = sharp_model(config, seed=1), sharp_model(config, seed=2)
    root = tmp_path / "exports"
    target = root / "m.gguf"

    def fresh() -> bytes:
        if root.exists():
            for p in root.iterdir():
                p.unlink()
        export_gguf(old_model, config, target, eos_id=256)
        return target.read_bytes()

    old = fresh()
    events = record(root, lambda: export_gguf(new_model, config, target, eos_id=256))
    new = target.read_bytes()
    assert [call for call, _, _ in events] == ["fsync", "replace", "fsync"], events
    for kill_at, torn, what in kill_points(events):
        assert fresh() == old
        run_killed(root, lambda: export_gguf(new_model, config, target, eos_id=256), kill_at, torn)
        assert target.read_bytes() in (old, new), what
        gguf.GGUFReader(target)
        export_gguf(new_model, config, target, eos_id=256)  # the next export goes through and clears the temporary
        assert target.read_bytes() == new and [p.name for p in root.iterdir()] == ["m.gguf"], what


def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    with pytest.raises(ExportError, match="cannot write the GGUF export to .*: No space left on device") as info:
        export_gguf(HamnerModel(tiny_config()), tiny_config(), tmp_path / "m.gguf", eos_id=256)
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


# ----- llama.cpp itself -----

def llama(path: Path, n_ctx: int):
    """llama.cpp on `path` with every position's logits kept and an f32 KV cache (its default, f16, rounds)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, type_k=GGML_TYPE_F32,
                 type_v=GGML_TYPE_F32, flash_attn=False, n_threads=1, verbose=False)


def llama_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)]))


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation: the argmax of its logits, fed back one token at a time."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


@pytest.fixture(params=["bytes", "cosmo2", "untied"])
def case(request, shared_data) -> tuple[HamnerModel, HamnerConfig]:
    """A demo-sized byte-level model, a small model with cosmo2's 49,152-token vocabulary (one KV head, a
    RoPE base and norm epsilon of its own), and the demo with an untied head that llama.cpp must read as
    `output.weight`, not take the embedding for (the head and the residual projections, zero-initialised with
    it, given random weights)."""
    if request.param == "cosmo2":
        config = tiny_config(vocab_size=49152, tokenizer=str(shared_data / "cosmo2_tokenizer.json"), max_seq_len=128,
                             n_kv_heads=1, rope_theta=50000.0, norm_eps=1e-6)
    else:
        config = model_config("demo")
    if request.param == "untied":
        config = HamnerConfig(**{**config.to_dict(), "tie_embeddings": False})
    model = sharp_model(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(0.0, 0.5 if p is model.lm_head.weight else 0.08)
    return model, config


@needs_llama_cpp
def test_llama_cpp_tokenizes_like_hamner(tmp_path, shared_data):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    gpt2_like = Tokenizer(models.BPE())  # GPT-2's pre-tokenizer (a regex split, then bytes), trained here
    gpt2_like.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2_like.train_from_iterator([(shared_data / "tinystories_valid_794KB.txt").read_text()[:200_000]],
                                  trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    gpt2_like.save(str(tmp_path / "gpt2_like.json"))
    for spec in ("bytes", str(shared_data / "cosmo2_tokenizer.json"), str(tmp_path / "gpt2_like.json")):
        ours = load_tokenizer(spec)
        config = tiny_config(vocab_size=ours.vocab_size, tokenizer=spec)
        path = export_gguf(HamnerModel(config), config, tmp_path / "t.gguf", eos_id=ours.eos_id, quant="f16")
        llm = llama(path, 64)
        for text in (TEXT, PROMPT, " leading space, 1234567 digits\n\nand a new paragraph"):
            ids = ours.encode(text)
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, (spec, text)
            assert llm.detokenize(ids, special=True).decode() == text, (spec, text)
        assert llm.token_eos() == ours.eos_id and llm.n_vocab() == ours.vocab_size
        del llm


@needs_llama_cpp
def test_the_chat_template_writes_hamners_chat_format(tmp_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    config = tiny_config()
    path = export_gguf(HamnerModel(config), config, tmp_path / "m.gguf", eos_id=256, quant="f16")
    llm = llama(path, 64)
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|endoftext|>",
                                    bos_token="<|endoftext|>")
    messages = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "2 + 2 = ?"},
                {"role": "assistant", "content": "4\n"}, {"role": "user", "content": "and <|assistant|> 1 + 1?"}]
    assert formatter(messages=messages).prompt == prompt_for_reply(messages)


@needs_llama_cpp
def test_llama_cpp_f32_logits_match_hamner(tmp_path, case):
    model, config = case
    tokenizer = load_tokenizer(config.tokenizer)
    ids = tokenizer.encode(PROMPT + " " + TEXT)[: config.max_seq_len]
    path = export_gguf(model, config, tmp_path / "m.gguf", eos_id=tokenizer.eos_id, quant="f32")
    theirs = llama_logits(llama(path, config.max_seq_len), ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    assert float((theirs - ours).norm() / ours.norm()) <= 1e-4


def memorise(model: HamnerModel, ids: list[int], target: float = 0.05, max_steps: int = 150) -> float:
    """Train `model` on the one text `ids` until its loss is under `target` (every next token a clear choice,
    as in a trained model's confident stretches; a few dozen steps); returns the final loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    x, y = torch.tensor([ids[:-1]]), torch.tensor(ids[1:])
    model.train()
    for _ in range(max_steps):
        loss = torch.nn.functional.cross_entropy(model(x)[0], y)
        if loss.item() < target:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


@needs_llama_cpp
def test_llama_cpp_q8_0_continues_like_hamner(tmp_path, case):
    model, config = case
    tokenizer = load_tokenizer(config.tokenizer)
    ids = tokenizer.encode(PROMPT)
    assert memorise(model, tokenizer.encode(PROMPT + STORY)) < 0.05
    path = export_gguf(model, config, tmp_path / "m.gguf", eos_id=tokenizer.eos_id, quant="q8_0")
    ours = generate(model, ids, 32, temperature=0.0)[0]
    assert tokenizer.decode(ours) in STORY  # Hamner's greedy continuation is the memorised story
    assert llama_greedy(llama(path, config.max_seq_len), ids, 32) == ours
