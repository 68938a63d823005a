"""Token mixers: the window and differential attention ops against their references, causality,
cached decoding = full recomputation, parameter names, config and model-file checks, presets."""
import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_checks import rel_error
from tiny_checkpoint import save_tiny_run, tiny_config
from train_helpers import assert_compiled_step_matches_eager, plain_training_losses, tiny_settings, write_curriculum

from hamner.commands.export import main as export_command
from hamner.errors import ConfigError, ExportError
from hamner.kernels import reference
from hamner.kernels.attention_dispatch import attention, differential_attention
from hamner.model.config import PRESETS, HamnerConfig, load_model_file, model_config
from hamner.model.decoding_cache import DecodingCache
from hamner.model.mixers import MIXERS, DecodingState, Mixer
from hamner.model.mlps import MLP, MLPS
from hamner.model.transformer import HamnerModel
from hamner.train.settings import TrainSettings, preset_curriculum, resolve_run, resume_settings
from hamner.train.trainer import train
from hamner.use.generate import generate
from hamner.use.hf import export_hf

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=96,
            max_seq_len=40)
# Every mixer alone, two side by side, a hybrid stack, and the stack options (qk_norm, relu2, value embeddings,
# U-net skips) alone and together, on stacks of an odd depth too.
VARIANTS = {
    "attention": dict(),
    "swa": dict(mixer="swa", window=4),
    "diff_attention": dict(mixer="diff_attention"),
    "swa+diff_attention": dict(mixer="swa+diff_attention", window=3),
    "hybrid": dict(layer_mixers=["swa", "attention"], window=5),
    "gelu_mlp": dict(mlp="gelu"),  # GPT-2's MLP under plain attention
    "relu2_mlp": dict(mlp="relu2"),
    "qk_norm": dict(qk_norm=True),
    "value_embeddings": dict(value_embeddings=1),
    "value_embeddings_hybrid": dict(n_layers=3, layer_mixers=["attention", "hebbian", "swa"], window=4,
                                    value_embeddings=1),
    "unet": dict(n_layers=5, skip="unet"),
    "all_options": dict(n_layers=5, mixer="swa", window=4, qk_norm=True, mlp="relu2", value_embeddings=2, skip="unet"),
}


def random_model(seed: int = 0, **fields) -> HamnerModel:
    """Untrained float64 model with a wide init: peaked, varied greedy choices and no float ties."""
    torch.manual_seed(seed)
    return HamnerModel(HamnerConfig(**{**TINY, "init_std": 0.3, **fields})).double().eval()


# ----- kernels: the ops against the float64 references -----

def test_causal_mask_window_sees_the_last_w_keys_up_to_each_query():
    mask = reference.causal_mask(3, 6, window=2)  # queries at positions 3, 4, 5
    assert mask.tolist() == [[False, False, True, True, False, False],
                             [False, False, False, True, True, False],
                             [False, False, False, False, True, True]]


@pytest.mark.parametrize("tq, tk, window", [(9, 9, 3), (9, 9, 1), (9, 9, 20), (4, 11, 5), (1, 11, 5), (1, 3, 5)])
def test_window_attention_matches_reference(tq, tk, window):
    torch.manual_seed(0)
    q = torch.randn(2, tq, 4, 16, requires_grad=True)
    k, v = (torch.randn(2, tk, 2, 16, requires_grad=True) for _ in range(2))
    out = attention(q, k, v, causal=True, window=window)
    leaves64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference.attention(*leaves64, causal=True, window=window)
    grad = torch.randn_like(ref)
    out.backward(grad.float())
    ref.backward(grad)
    assert rel_error(out, ref) < 1e-5
    for t, t64 in zip((q, k, v), leaves64):  # window 1 gives q no gradient: compare absolutely
        torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-4, atol=1e-5)


def test_window_attention_equals_a_naive_loop_over_the_visible_keys():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 10, 2, 8, dtype=torch.float64) for _ in range(3))
    out = attention(q, k, v, causal=True, window=3)
    for t in range(10):
        keys = slice(max(0, t - 2), t + 1)
        scores = torch.einsum("hd,thd->ht", q[0, t], k[0, keys]) / 8 ** 0.5
        expected = torch.einsum("ht,thd->hd", scores.softmax(-1), v[0, keys])
        torch.testing.assert_close(out[0, t], expected)


def test_window_needs_causal_attention():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="window needs causal"):
        attention(q, q, q, causal=False, window=2)


@pytest.mark.parametrize("tq, tk", [(7, 7), (3, 9), (1, 9)])
def test_differential_attention_matches_reference(tq, tk):
    torch.manual_seed(2)
    q = torch.randn(2, tq, 2, 4, 8, requires_grad=True)
    k = torch.randn(2, tk, 2, 2, 8, requires_grad=True)
    v = torch.randn(2, tk, 2, 16, requires_grad=True)
    lam = torch.tensor(0.37, requires_grad=True)
    out = differential_attention(q, k, v, lam)
    leaves64 = [t.detach().double().requires_grad_() for t in (q, k, v, lam)]
    ref = reference.differential_attention(*leaves64)
    assert out.shape == ref.shape == (2, tq, 4, 16)
    grad = torch.randn_like(ref)
    out.backward(grad.float())
    ref.backward(grad)
    assert rel_error(out, ref) < 1e-5
    for t, t64 in zip((q, k, v, lam), leaves64):
        assert rel_error(t.grad, t64.grad) < 1e-5


# ----- mixers in the model -----

@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_up_to_t_ignore_later_tokens(variant):
    model = random_model(**VARIANTS[variant])
    idx = torch.randint(0, 97, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_logits_equal_full_recomputation(variant):
    model = random_model(**VARIANTS[variant])
    idx = torch.randint(0, 97, (2, 20))
    cache = DecodingCache(model, batch_size=2)
    with torch.no_grad():
        full = model(idx)
        torch.testing.assert_close(model(idx[:, :7], cache=cache), full[:, :7])
        for t in range(7, 16):  # one token at a time, past the window
            torch.testing.assert_close(model(idx[:, t:t + 1], cache=cache)[:, -1], full[:, t])
        torch.testing.assert_close(model(idx[:, 16:], cache=cache), full[:, 16:])  # a chunk after a prefix


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_with_cache_equals_without_including_past_window_and_context(variant):
    model = random_model(**VARIANTS[variant])
    prompts = [[5, 17, 3, 60, 2], [9, 9, 1, 4, 33], [7, 8]]
    cached = generate(model, prompts, 45, temperature=0)  # 45 + 5 > max_seq_len 40: re-prefill too
    assert cached == generate(model, prompts, 45, temperature=0, use_cache=False)
    eos = cached[0][6]  # a row that ends early is dropped from its batch (and from every mixer state)
    assert generate(model, prompts, 20, temperature=0, eos_id=eos) == \
        generate(model, prompts, 20, temperature=0, eos_id=eos, use_cache=False)


def test_sliding_window_cache_stays_bounded():
    model = random_model(mixer="swa", window=4)
    cache = DecodingCache(model, batch_size=1)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 12)), cache=cache)
        for _ in range(5):
            model(torch.randint(0, 97, (1, 1)), cache=cache)
    assert cache.pos == 17
    assert all(state.k.shape[1] == 3 and state.length == 17 for state in cache.states)


def test_parameter_names():
    dense = dict(random_model().named_parameters())
    assert "layers.1.attn.qkv.weight" in dense and "layers.1.mlp.gate_up.weight" in dense
    parallel = dict(random_model(mixer="swa+diff_attention", window=3).named_parameters())
    assert {"layers.0.attn.swa.qkv.weight", "layers.0.attn.diff_attention.qkv.weight",
            "layers.0.attn.diff_attention.lambda_q1"} <= set(parallel)


def test_differential_attention_matches_dense_parameters_plus_lambdas_and_head_norm():
    dense, diff = random_model(), random_model(mixer="diff_attention")
    head_dim = TINY["hidden_size"] // TINY["n_heads"]
    assert diff.num_parameters() == dense.num_parameters() + TINY["n_layers"] * (4 * head_dim + 2 * head_dim)
    layers = [m for m in diff.modules() if type(m).__name__ == "DifferentialAttention"]
    assert [round(m.lambda_init, 4) for m in layers] == [0.2, round(0.8 - 0.6 * 0.7408182, 4)]


# ----- config, model file, presets -----

@pytest.mark.parametrize("fields, message", [
    (dict(mixer="mamba"), "mixer: unknown mixer 'mamba'"),
    (dict(mixer="swa+swa", window=2), "names a mixer twice"),
    (dict(mixer="swa"), "window must be a positive integer"),
    (dict(layer_mixers=["attention"]), "layer_mixers must be a list of 2"),
    (dict(layer_mixers=["attention", "nope"]), "layer_mixers: unknown mixer 'nope'"),
    (dict(mlp="relu"), "mlp: unknown MLP 'relu'"),
    (dict(mixer="diff_attention", n_kv_heads=1), "must be even for diff_attention"),
    (dict(qk_norm=1), "qk_norm must be true or false"),
    (dict(mixer="diff_attention", qk_norm=True), "qk_norm: the diff_attention mixer does not take it"),
    (dict(mixer="swa+hebbian", window=2, qk_norm=True), "qk_norm: the hebbian mixer does not take it"),
    (dict(mixer="ttt_linear", qk_norm=True), "qk_norm: the ttt_linear mixer does not take it"),
    (dict(value_embeddings=2, n_layers=3), "value_embeddings must be an integer from 0 to n_layers / 2"),
    (dict(value_embeddings=-1), "value_embeddings must be an integer"),
    (dict(layer_mixers=["attention", "hebbian"], value_embeddings=1),
     "value_embeddings: layer 1 gets a value embedding but its mixer is 'hebbian'"),
    (dict(mixer="swa+attention", window=2, value_embeddings=1), "only attention and swa alone take one"),
    (dict(skip="dense"), "skip must be one of 'none', 'unet'"),
    (dict(skip="unet", n_layers=1), "skip = 'unet' needs at least 2 layers"),
])
def test_bad_block_choices_are_one_line_errors_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message) as info:
        HamnerConfig(**{**TINY, **fields})
    assert "\n" not in str(info.value)


# The HamnerConfig fields of checkpoints written before the mixer and MLP choices existed.
LEGACY_FIELDS = ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "max_seq_len",
                 "rope_theta", "norm_eps", "init_std", "scale_residual_init", "activation_checkpointing", "tokenizer")


def test_configs_saved_before_the_mixer_fields_load_and_compare_equal():
    config = model_config("v3-50m")
    saved = {k: v for k, v in config.to_dict().items() if k in LEGACY_FIELDS}
    assert HamnerConfig.from_dict(saved).to_dict() == config.to_dict()
    assert config.llama_compatible and not model_config("swa-125m").llama_compatible


def test_model_file_overrides_preset_fields(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text('mixer = "swa"\nwindow = 16\nn_layers = 2\nlayer_mixers = ["swa", "attention"]\n')
    config = load_model_file(path, model_config("demo"))
    assert (config.window, config.n_layers, config.hidden_size) == (16, 2, 128)
    assert config.layer_mixer_names(0) == ["swa"]


@pytest.mark.parametrize("text, message", [
    ("windw = 3", "unknown key 'windw'"),
    ('window = "x"', r"\.window: must be int \| None, got 'x'"),
    ("scale_residual_init = 1", r"\.scale_residual_init: must be bool, got 1"),
    ('mixer = "swa"', "window must be a positive integer for the swa mixer"),
    ("n_layers = ", "not valid TOML"),
])
def test_model_file_mistakes_are_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "model.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_model_file(path, model_config("demo"))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# Pinned parameter counts of the presets (total, active per token).
PRESET_PARAMETERS = {
    "swa-125m": (122_702_592, 122_702_592),
    "diffattn-50m": (47_193_600, 47_193_600),
    "moe-50m": (98_083_328, 47_358_464),
    "tinygpt-50m": (50_926_592, 50_926_592),
}


@pytest.mark.parametrize("name", PRESET_PARAMETERS)
def test_preset_parameter_counts(name):
    with torch.device("meta"):
        model = HamnerModel(model_config(name))
    assert (model.num_parameters(), model.num_parameters(active=True)) == PRESET_PARAMETERS[name]


def shrunk(name: str) -> HamnerConfig:
    """The preset's block choices at a tiny size."""
    return dataclasses.replace(PRESETS[name], vocab_size=97, hidden_size=64, n_layers=2, n_heads=4,
                               n_kv_heads=2, intermediate_size=96, max_seq_len=64, window=8,
                               moe_intermediate_size=48, n_experts=4)


@pytest.mark.parametrize("name", PRESET_PARAMETERS)
def test_a_tiny_model_of_each_preset_learns_in_30_steps(name):
    torch.manual_seed(0)
    model = HamnerModel(shrunk(name)).train()
    pattern = torch.randint(0, 97, (12,))
    windows = torch.stack([pattern.roll(-s).repeat(4)[:33] for s in range(4)])
    losses = plain_training_losses(model, windows, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", ["swa-125m", "diffattn-50m", "moe-50m", "agiformer-31m", "ttt-125m"])
def test_the_new_presets_train_built_in_sources_by_default(name):
    resolved, curriculum, _ = resolve_run(TrainSettings(preset=name, device="cpu"))
    assert resolved.curriculum == "builtin" and curriculum.data_sources() == []
    assert curriculum.tokenizer in (None, PRESETS[name].tokenizer)
    assert (preset_curriculum("v3-50m"), preset_curriculum("v2-164m"), preset_curriculum("demo")) == \
        ("hamner-v3.1", "hamner-v3.1", "demo")


def test_export_refuses_a_non_llama_model(tmp_path):
    config = shrunk("diffattn-50m")
    with pytest.raises(ExportError, match="cannot export to Hugging Face Llama: the model uses mixer") as info:
        export_hf(HamnerModel(config), config, tmp_path / "hf", eos_id=0)
    assert "\n" not in str(info.value) and not (tmp_path / "hf").exists()


def test_the_export_command_refuses_a_non_llama_checkpoint_with_one_line(tmp_path, capsys):
    save_tiny_run(tmp_path / "run", tiny_config(mixer="swa", window=8))
    assert export_command([str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot export to Hugging Face Llama: the model uses mixer(s) swa") and \
        err.count("\n") == 1
    assert not (tmp_path / "hf").exists()


# ----- train.py --model -----

def test_training_from_a_model_file(tmp_path):
    model_file = tmp_path / "hybrid.toml"
    model_file.write_text('n_layers = 2\nlayer_mixers = ["swa+attention", "diff_attention"]\nwindow = 8\n'
                          'mlp = "moe"\nn_experts = 4\nmoe_intermediate_size = 64\n')
    curriculum = write_curriculum(tmp_path, first=2, second=1)
    result = train(tiny_settings(tmp_path / "run", curriculum, model=str(model_file)))
    assert result.reason == "finished"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["layer_mixers"] == ["swa+attention", "diff_attention"]
    assert saved["active_parameters"] < saved["parameters"]
    assert "expert load max" in (tmp_path / "run" / "train.log").read_text()


def test_a_run_saved_before_the_mixer_fields_resumes(tmp_path):
    curriculum = write_curriculum(tmp_path, first=2, second=2)
    train(tiny_settings(tmp_path / "run", curriculum, max_steps=2))
    new_fields = {f.name for f in dataclasses.fields(HamnerConfig)} - set(LEGACY_FIELDS)
    for meta_file in (tmp_path / "run" / "checkpoints").glob("*/config.json"):
        meta = json.loads(meta_file.read_text())
        meta["model"] = {k: v for k, v in meta["model"].items() if k not in new_fields}
        meta_file.write_text(json.dumps(meta))
    assert train(resume_settings(tmp_path / "run", {"max_steps": 3})).step == 3


def test_a_bad_model_file_stops_training_with_one_line(tmp_path):
    model_file = tmp_path / "bad.toml"
    model_file.write_text('mixer = "flash"\n')
    with pytest.raises(ConfigError, match="model file .*bad.toml: mixer: unknown mixer 'flash'"):
        train(tiny_settings(tmp_path / "run", write_curriculum(tmp_path), model=str(model_file)))


def test_every_registered_mixer_and_mlp_keeps_the_contract_and_checks_its_own_settings():
    """The protocols hold, and the torch-free check the config runs is the class's own `check_config`."""
    config = HamnerConfig(**TINY, window=4, mlp="moe", n_experts=4)
    for name in MIXERS:
        mixer = MIXERS[name](config, 0)
        assert isinstance(mixer, Mixer), name
        assert isinstance(mixer.new_state(2, 8, torch.device("cpu"), torch.float32), DecodingState), name
        assert MIXERS[name].check_config.__func__ is MIXERS.settings(name).check_config.__func__, name
        assert mixer.keeps_documents_apart or mixer.mixes_documents_because, name
    for name in MLPS:
        assert isinstance(MLPS[name](config, 0), MLP), name
        assert MLPS[name].check_config.__func__ is MLPS.settings(name).check_config.__func__, name


def test_no_mixer_imports_another():
    """What several mixers use lives in hamner.model.mixers.shared (or .settings), never in one of them."""
    modules = {sys.modules[MIXERS[name].__module__] for name in MIXERS}
    names = {module.__name__ for module in modules}
    for module in modules:
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & (names - {module.__name__}), module.__name__


@pytest.mark.parametrize("mixer, reason", [("diff_attention", "its attention kernel takes no document mask"),
                                           ("swa+hebbian", "its memory runs across document boundaries"),
                                           ("ttt_linear", "its inner model keeps learning across document")])
def test_the_block_refuses_segment_ids_naming_the_mixer_and_why(mixer, reason):
    model = random_model(mixer=mixer, window=3)
    idx = torch.randint(1, 97, (1, 6))
    name = mixer.split("+")[-1]
    with pytest.raises(ConfigError, match=f"mixer '{name}' cannot keep packed documents apart: {reason}"):
        model(idx, segment_ids=torch.zeros_like(idx))


def test_config_validates_mixer_names_without_importing_torch(python, subprocess_env):
    code = ("import sys; from hamner.model.config import PRESETS; from hamner.model.mixers import MIXERS; "
            "assert 'diff_attention' in MIXERS and PRESETS['swa-125m'].window == 64; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([python, "-c", code], env=subprocess_env, check=True, timeout=60)


def test_compile_traces_every_new_op_in_one_graph():
    """Window attention, differential attention and the grouped-matmul MoE under fullgraph=True."""
    torch.manual_seed(0)
    config = HamnerConfig(**TINY, layer_mixers=["swa", "diff_attention"], window=4, mlp="moe", n_experts=4,
                          moe_intermediate_size=32)
    model = HamnerModel(config).train()
    idx = torch.randint(0, 97, (2, 12))
    assert_compiled_step_matches_eager(model, idx, idx)


def test_document_packing_keeps_windowed_documents_apart_and_stateful_mixers_refuse_it():
    """A packed row through sliding-window attention equals each document run alone; mixers whose
    state runs across documents say so up front and refuse segment ids."""
    model = random_model(mixer="swa", window=3)
    assert model.keeps_documents_apart()
    a, b = torch.randint(1, 97, (1, 7)), torch.randint(1, 97, (1, 5))
    packed = model(torch.cat((a, b), dim=1), segment_ids=torch.tensor([[0] * 7 + [1] * 5]))
    torch.testing.assert_close(packed, torch.cat((model(a), model(b)), dim=1))
    hybrid = random_model(mixer="swa+diff_attention", window=3)
    assert not hybrid.keeps_documents_apart()
    with pytest.raises(ConfigError, match="cannot keep packed documents apart"):
        hybrid(a, segment_ids=torch.zeros_like(a))
