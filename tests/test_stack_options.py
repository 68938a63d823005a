"""The stack options qk_norm, value_embeddings and skip = "unet" (and the relu2 MLP with them): a hand-written
plain-residual forward, their parameters and counts, the saved names and order, the optimizer groups, the export's
refusal, torch.compile, and learning. Causality and cached decoding run in test_mixers' VARIANTS; the relu2 kernel
in test_relu2; resume in test_resume."""
import dataclasses

import pytest
import torch
from kernel_checks import assert_model_step_matches_reference_ops
from train_helpers import assert_compiled_step_matches_eager, plain_training_losses

from hamner import kernels
from hamner.errors import ExportError
from hamner.kernels import dispatch
from hamner.model.config import PRESETS, HamnerConfig
from hamner.model.transformer import HamnerModel
from hamner.train.optim import build_optimizer
from hamner.use.hf import export_hf

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(vocab_size=97, hidden_size=64, n_layers=5, n_heads=4, n_kv_heads=2, intermediate_size=96,
            max_seq_len=40)
ALL = dict(qk_norm=True, mlp="relu2", value_embeddings=2, skip="unet")


def random_model(seed: int = 0, **fields) -> HamnerModel:
    """Float64 model whose every parameter, the options' included, is random (none at its init value)."""
    torch.manual_seed(seed)
    model = HamnerModel(HamnerConfig(**{**TINY, "init_std": 0.3, **fields})).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() < 2:
                p.add_(0.3 * torch.randn_like(p))
    return model


def plain_residual_forward(model: HamnerModel, idx: torch.Tensor) -> torch.Tensor:
    """The logits as the equations write them: x = x + attn(norm(x)), x = x + mlp(norm(x)) per block, block
    n + j first adding w_j times block n - 1 - j's output, value embeddings looked up for the layers that take one."""
    c, T = model.config, idx.shape[1]
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    n = c.n_layers // 2 if c.skip == "unet" else 0
    x, outputs = model.embed(idx), []
    for i, layer in enumerate(model.layers):
        if n <= i < 2 * n:
            x = x + model.skip_weights[i - n] * outputs[2 * n - 1 - i]
        table = c.value_table(i)
        extra = {} if table is None else {"value_embedding": model.value_embeds[table](idx)}
        x = x + layer.attn(layer.attn_norm(x)[0], cos, sin, **extra)
        x = x + layer.mlp(layer.mlp_norm(x)[0])
        outputs.append(x)
    return model.logits(model.norm(x)[0])


@pytest.mark.parametrize("fields", [dict(skip="unet"), dict(value_embeddings=2), dict(skip="unet", n_layers=4),
                                    dict(ALL, mixer="swa", window=4)])
def test_the_model_equals_the_plain_residual_equations(fields):
    model = random_model(**fields)
    idx = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(model(idx), plain_residual_forward(model, idx))


def test_value_embedding_tables_are_shared_first_and_last_in_order():
    config = HamnerConfig(**{**TINY, "n_layers": 7, "value_embeddings": 3})
    assert [config.value_table(i) for i in range(7)] == [0, 1, 2, None, 0, 1, 2]
    assert [HamnerConfig(**{**TINY, "n_layers": 4, "value_embeddings": 2}).value_table(i) for i in range(4)] == \
        [0, 1, 0, 1]


def test_switched_off_by_their_weights_the_options_give_the_plain_model():
    """Lambdas (1, 0) and skip weights 0 take the value embeddings and skips out: the plain model remains."""
    model = random_model(value_embeddings=2, skip="unet")
    plain = HamnerModel(HamnerConfig(**{**TINY, "init_std": 0.3})).double().eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"skip_weights", "value_embeds.0.weight", "value_embeds.1.weight",
                                               *(f"layers.{i}.attn.value_lambdas" for i in (0, 1, 3, 4))}
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        model.skip_weights.zero_()
        for layer in model.layers:
            if layer.attn.value_lambdas is not None:
                layer.attn.value_lambdas.copy_(torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(model(idx), plain(idx))


def test_with_lambda_0_at_zero_the_values_are_the_value_embedding_alone():
    model = random_model(value_embeddings=1, n_layers=2)
    idx = torch.randint(0, 97, (2, 12))
    attn = model.layers[0].attn
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.value_lambdas[0] = 0.0
        before = model(idx)
        attn.qkv.weight[-TINY["n_kv_heads"] * 16:].normal_()  # the v rows (head_dim 16)
    torch.testing.assert_close(model(idx), before)


def test_qk_norm_makes_the_scores_blind_to_the_scale_of_q_and_k():
    idx = torch.randint(0, 97, (2, 12))
    for qk_norm in (True, False):
        model = random_model(qk_norm=qk_norm, norm_eps=1e-12)  # eps would tell the scales apart by ~1e-5
        before = model(idx)
        with torch.no_grad():
            for layer in model.layers:
                layer.attn.qkv.weight[:(TINY["n_heads"] + TINY["n_kv_heads"]) * 16] *= 7.0
        assert torch.allclose(model(idx), before) == qk_norm


def test_qk_norm_weight_is_saved_in_rotate_half_order_and_loads_back():
    model = random_model(qk_norm=True)
    attn = model.layers[0].attn
    with torch.no_grad():  # element j of the parameter scales element head_pair_order[j] of a rotate-half head
        attn.qk_norm_weight.copy_(attn.head_pair_order.double())
    saved = model.state_dict()
    assert saved["layers.0.attn.qk_norm_weight"].tolist() == list(range(16))
    other = random_model(seed=1, qk_norm=True)
    other.load_state_dict(saved)
    torch.testing.assert_close(other.layers[0].attn.qk_norm_weight, attn.qk_norm_weight)


def test_saved_names_load_into_a_fresh_model_and_give_the_same_logits():
    config = dict(ALL, mixer="swa", window=4)
    model, fresh = random_model(**config), random_model(seed=1, **config)
    saved = model.state_dict()
    assert {"layers.0.attn.qk_norm_weight", "layers.0.attn.value_lambdas", "layers.4.attn.value_lambdas",
            "value_embeds.0.weight", "value_embeds.1.weight", "skip_weights", "layers.0.mlp.up.weight",
            "layers.0.mlp.down.weight"} <= set(saved)
    assert "layers.2.attn.value_lambdas" not in saved
    fresh.load_state_dict(saved)
    idx = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(fresh(idx), model(idx))


def test_parameter_counts_and_init():
    C, V, L, D, I = 64, 97, 5, 16, 96  # noqa: E741
    kv_dim = TINY["n_kv_heads"] * D
    plain = HamnerModel(HamnerConfig(**TINY)).num_parameters()
    assert HamnerModel(HamnerConfig(**TINY, qk_norm=True)).num_parameters() == plain + L * D
    assert HamnerModel(HamnerConfig(**TINY, mlp="relu2")).num_parameters() == plain - L * C * I
    assert HamnerModel(HamnerConfig(**TINY, skip="unet")).num_parameters() == plain + L // 2
    ve = HamnerModel(HamnerConfig(**TINY, value_embeddings=2))
    assert ve.num_parameters() == plain + 2 * V * kv_dim + 4 * 2
    assert ve.flops_per_token(8) == HamnerModel(HamnerConfig(**TINY)).flops_per_token(8)  # lookups, not matmuls
    model = HamnerModel(HamnerConfig(**TINY, **ALL))
    assert model.skip_weights.tolist() == [1.0, 1.0]
    assert model.layers[0].attn.value_lambdas.tolist() == [0.5, 0.5] and model.layers[0].attn.qk_norm_weight.eq(1).all()
    assert 0.015 < model.value_embeds[0].weight.std().item() < 0.025  # N(0, init_std) like the token embedding


@pytest.mark.triton
def test_qk_norm_is_one_rms_norm_launch_per_layer_and_matches_the_reference_ops():
    torch.manual_seed(0)
    idx = torch.randint(0, 97, (2, 12))
    launches, fields = {}, {**TINY, "n_layers": 2}
    for qk_norm in (False, True):
        model = HamnerModel(HamnerConfig(**fields, qk_norm=qk_norm))
        before = dispatch.launches.copy()
        loss = model(idx, idx)
        launches[qk_norm] = dispatch.launches - before
    assert launches[True]["rms_norm_fwd"] - launches[False]["rms_norm_fwd"] == 2  # one a layer for q and k
    assert_model_step_matches_reference_ops(model, loss, idx)


def test_compile_traces_every_option_in_one_graph():
    torch.manual_seed(0)
    model = HamnerModel(HamnerConfig(**TINY, **ALL, mixer="swa", window=4)).train()
    idx = torch.randint(0, 97, (2, 12))
    assert_compiled_step_matches_eager(model, idx, idx)


def test_muon_leaves_the_options_parameters_on_adamw_and_value_embeddings_do_not_decay():
    model = HamnerModel(HamnerConfig(**TINY, **ALL))
    adamw, muon = build_optimizer(model, 1e-3, torch.device("cpu"), kind="muon")
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in adamw.param_groups for p in g["params"]}
    assert on_muon == {n for n, p in model.named_parameters() if n.startswith("layers.") and p.dim() == 2}
    for name in ("value_embeds.0.weight", "value_embeds.1.weight", "skip_weights", "layers.0.attn.value_lambdas",
                 "layers.0.attn.qk_norm_weight"):
        assert decay[name] == 0.0, name
    assert decay["embed.weight"] > 0


@pytest.mark.parametrize("fields, named", [(dict(qk_norm=True), "qk_norm"), (dict(value_embeddings=1),
                                           "value_embeddings"), (dict(skip="unet"), "skip"),
                                           (dict(mlp="relu2"), "MLP relu2")])
def test_export_refuses_each_option_with_one_line(tmp_path, fields, named):
    config = HamnerConfig(**TINY, **fields)
    assert not config.llama_compatible
    with pytest.raises(ExportError, match=f"cannot export to Hugging Face Llama: the model uses .*{named}") as info:
        export_hf(HamnerModel(config), config, tmp_path / "hf", eos_id=0)
    assert "\n" not in str(info.value) and not (tmp_path / "hf").exists()


def test_the_presets_leave_every_option_off_but_the_speedrun_ones():
    for name, config in PRESETS.items():
        if name.startswith("speedrun"):
            continue
        assert (config.qk_norm, config.value_embeddings, config.skip) == (False, 0, "none"), name
        assert config.mlp != "relu2", name
        assert (config.tie_embeddings, config.logit_softcap) == (True, None), name


@pytest.mark.parametrize(("name", "like", "tables", "parameters"), [("speedrun", "v3-50m", 2, 59_778_060),
                                                                    ("speedrun-demo", "demo", 1, 771_526)])
def test_the_speedrun_presets_are_their_base_with_every_option(name, like, tables, parameters):
    config, base = PRESETS[name], PRESETS[like]
    shape = ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "tokenizer")
    assert [getattr(config, f) for f in shape] == [getattr(base, f) for f in shape]
    assert (config.qk_norm, config.mlp, config.intermediate_size, config.value_embeddings, config.skip) == (
        True, "relu2", 4 * config.hidden_size, tables, "unet")
    assert (config.tie_embeddings, config.logit_softcap) == (True, 15.0)
    with torch.device("meta"):
        assert HamnerModel(config).num_parameters() == parameters


@pytest.mark.parametrize("fields", [dict(qk_norm=True), dict(mlp="relu2"), dict(value_embeddings=2),
                                    dict(skip="unet"), ALL])
def test_a_tiny_model_with_each_option_learns_in_30_steps(fields):
    torch.manual_seed(0)
    model = HamnerModel(dataclasses.replace(HamnerConfig(**TINY), **fields)).train()
    pattern = torch.randint(0, 97, (12,))
    windows = torch.stack([pattern.roll(-s).repeat(4)[:33] for s in range(4)])
    losses = plain_training_losses(model, windows, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_relu2_op_is_exported_by_kernels():
    x = torch.tensor([[-1.0, 2.0]])
    assert kernels.relu2(x).tolist() == [[0.0, 4.0]]
