"""The Hamner model: presets, config checks, forward/loss semantics, layout, init, checkpointing, kernel parity."""
import math

import pytest
import torch
import torch.nn.functional as F

from hamner import PRESETS, HamnerConfig, HamnerModel, kernels, model_config
from hamner.errors import ConfigError
from hamner.kernels import dispatch

# Tiny models run much faster on one thread than on two contended ones.
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(**overrides) -> HamnerConfig:
    fields = dict(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
                  intermediate_size=96, max_seq_len=32)
    fields.update(overrides)
    return HamnerConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> HamnerModel:
    torch.manual_seed(seed)
    return HamnerModel(tiny_config(**overrides))


@pytest.mark.parametrize("name, expected", [("v3-50m", 47_190_528), ("v2-164m", 163_609_344)])
def test_preset_parameter_counts_are_exact(name, expected):
    with torch.device("meta"):
        model = HamnerModel(model_config(name))
    assert model.num_parameters() == expected
    assert model.config.tokenizer == "HuggingFaceTB/cosmo2-tokenizer"


def test_demo_preset_is_byte_level_and_small():
    config = model_config("demo")
    assert (config.vocab_size, config.tokenizer) == (257, "bytes")
    with torch.device("meta"):
        assert HamnerModel(config).num_parameters() < 5_000_000


def test_model_config_returns_copies_and_rejects_unknown_names():
    config = model_config("demo")
    config.n_layers = 99
    assert PRESETS["demo"].n_layers != 99
    with pytest.raises(ConfigError, match="v3-50m, v2-164m, demo"):
        model_config("gpt-5")


@pytest.mark.parametrize("overrides, message", [
    (dict(n_heads=5), "must divide hidden_size"),
    (dict(n_kv_heads=3), "must divide n_heads"),
    (dict(hidden_size=36, n_heads=4, n_kv_heads=2), "must be even"),
    (dict(n_layers=0), "n_layers must be a positive integer"),
    (dict(norm_eps=0.0), "norm_eps must be positive"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_config_dict_round_trip_and_unknown_keys():
    config = tiny_config(scale_residual_init=True, tokenizer="some/tokenizer.json")
    assert HamnerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown HamnerConfig keys: dropout"):
        HamnerConfig.from_dict({**config.to_dict(), "dropout": 0.1})


def test_forward_shapes_and_dtypes():
    model = tiny_model()
    idx = torch.randint(0, 97, (3, 10))
    logits = model(idx)
    assert logits.shape == (3, 10, 97) and logits.dtype == torch.float32
    loss = model(idx, idx)
    assert loss.shape == () and loss.dtype == torch.float32
    with pytest.raises(ValueError, match="exceeds max_seq_len 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="targets shape"):
        model(idx, idx[:, :-1])


def test_loss_equals_cross_entropy_of_logits_without_shifting():
    model = tiny_model()
    window = torch.randint(0, 97, (2, 13))
    idx, targets = window[:, :-1], window[:, 1:].clone()
    targets[0, :4] = -100
    logits = model(idx)
    expected = F.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(model(idx, targets), expected, rtol=1e-5, atol=1e-6)


def _llama_logits(model: HamnerModel, idx: torch.Tensor) -> torch.Tensor:
    """Independent plain-PyTorch Llama forward reading the documented state_dict layout (q|k|v rows in
    rotate-half order, gate|up rows)."""
    c = model.config
    params = model.state_dict()
    T, D, q_dim, kv_dim = idx.shape[1], c.head_dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim

    def norm(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps)

    def rope(x):  # x [B, H, T, D], rotate-half
        inv_freq = c.rope_theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq).float()
        cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
        rotated = torch.cat((-x[..., D // 2:], x[..., :D // 2]), -1)
        return x * cos + rotated * sin

    x = params["embed.weight"][idx]
    for i in range(c.n_layers):
        p = f"layers.{i}."
        h = norm(x, params[p + "attn_norm.weight"])
        w = params[p + "attn.qkv.weight"]
        q = (h @ w[:q_dim].T).view(-1, T, c.n_heads, D).transpose(1, 2)
        k = (h @ w[q_dim:q_dim + kv_dim].T).view(-1, T, c.n_kv_heads, D).transpose(1, 2)
        v = (h @ w[q_dim + kv_dim:].T).view(-1, T, c.n_kv_heads, D).transpose(1, 2)
        group = c.n_heads // c.n_kv_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        x = x + y.transpose(1, 2).reshape(-1, T, q_dim) @ params[p + "attn.out.weight"].T
        h = norm(x, params[p + "mlp_norm.weight"])
        gate_up = params[p + "mlp.gate_up.weight"]
        hidden = F.silu(h @ gate_up[:c.intermediate_size].T) * (h @ gate_up[c.intermediate_size:].T)
        x = x + hidden @ params[p + "mlp.down.weight"].T
    return norm(x, params["norm.weight"]) @ params["embed.weight"].T


def test_parameter_names_and_layout_match_a_plain_llama_forward():
    model = tiny_model()
    names = {name for name, _ in model.named_parameters()}
    assert names == {"embed.weight", "norm.weight"} | {
        f"layers.{i}.{part}.weight" for i in range(2)
        for part in ("attn_norm", "attn.qkv", "attn.out", "mlp_norm", "mlp.gate_up", "mlp.down")}
    with torch.no_grad():
        for p in model.parameters():  # break the symmetry of the init so every weight matters
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), _llama_logits(model, idx), rtol=1e-4, atol=1e-5)


def test_init_statistics_and_residual_scaling():
    plain = tiny_model(hidden_size=256, intermediate_size=512, n_layers=8, n_heads=4)
    scaled = tiny_model(hidden_size=256, intermediate_size=512, n_layers=8, n_heads=4, scale_residual_init=True)
    for model, residual_std in ((plain, 0.02), (scaled, 0.02 / math.sqrt(16))):
        for name, p in model.named_parameters():
            if p.dim() == 1:
                assert torch.all(p == 1), name
            else:
                std = residual_std if name.endswith(("attn.out.weight", "mlp.down.weight")) else 0.02
                assert abs(p.std().item() - std) < 0.1 * std, name
                assert abs(p.mean().item()) < 0.1 * std, name


def test_tied_embedding_and_param_groups():
    model = tiny_model()
    per_layer = 64 * (64 + 2 * 2 * 16) + 64 * 64 + 64 * 2 * 96 + 96 * 64 + 2 * 64
    assert model.num_parameters() == 97 * 64 + 2 * per_layer + 64  # the output head adds nothing
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(p) for n, p in model.named_parameters() if "norm" not in n}
    assert {id(p) for p in no_decay["params"]} == {id(p) for n, p in model.named_parameters() if "norm" in n}
    assert len(model.layers) == 2
    c = model.config
    matmul = model.num_parameters() - 64 * (2 * c.n_layers + 1)
    assert model.flops_per_token(32) == 6 * matmul + 12 * c.n_layers * c.n_heads * c.head_dim * 32


def test_meta_build_then_to_empty_and_load_matches_a_direct_build():
    with torch.device("meta"):
        model = HamnerModel(tiny_config())
    model.to_empty(device="cpu")  # also fills the RoPE tables (non-persistent buffers, not in the state dict)
    direct = tiny_model()
    model.load_state_dict(direct.state_dict())
    idx = torch.randint(0, 97, (1, 8))
    torch.testing.assert_close(model(idx), direct(idx))


def test_rope_tables_stay_float32_when_the_model_is_cast():
    model = tiny_model().to(torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16 and model.rope_cos.dtype == torch.float32
    cos, _ = kernels.rope_cache(32, 16)
    torch.testing.assert_close(model.rope_cos, cos, rtol=0, atol=0)
    assert model(torch.randint(0, 97, (1, 8))).dtype == torch.float32


def _loss_and_grads(model: HamnerModel, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_gives_same_loss_and_grads():
    plain = tiny_model()
    checkpointed = tiny_model(activation_checkpointing=True)
    idx = torch.randint(0, 97, (2, 17))
    loss, grads = _loss_and_grads(plain, idx)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, idx)
    torch.testing.assert_close(loss_ckpt, loss)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], msg=name)


@pytest.mark.triton
def test_triton_kernels_match_reference_ops():
    model = tiny_model(hidden_size=64, n_layers=2, vocab_size=97, n_heads=4, n_kv_heads=2)
    idx = torch.randint(0, 97, (2, 9))
    with dispatch.cpu_kernels(False):
        loss_ref, grads_ref = _loss_and_grads(model, idx)
    before = sum(dispatch.launches.values())
    loss, grads = _loss_and_grads(model, idx)
    assert sum(dispatch.launches.values()) > before, "no Triton kernel launched"
    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=0)
    for name, grad in grads.items():
        relative = (grad - grads_ref[name]).norm() / grads_ref[name].norm()
        assert relative < 1e-4, f"{name}: relative gradient error {relative:.2e}"


@pytest.mark.triton
def test_triton_kernels_under_bf16_autocast_match_reference_ops():
    """Under autocast the fused cross-entropy gets bf16 hidden states and a bf16 copy of the fp32 tied weight."""
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with dispatch.cpu_kernels(False):
            loss_ref, grads_ref = _loss_and_grads(model, idx)
        before = dispatch.launches["fused_linear_cross_entropy"]
        loss, grads = _loss_and_grads(model, idx)
    assert dispatch.launches["fused_linear_cross_entropy"] > before
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_ref, rtol=2e-2, atol=0)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        relative = (grad - grads_ref[name]).norm() / grads_ref[name].norm()
        assert relative < 5e-2, f"{name}: relative gradient error {relative:.2e}"


def test_attention_parameter_holds_pair_order_and_state_dict_rotate_half():
    """The q/k rows sit in pair order in memory; state_dict and load_state_dict speak rotate-half."""
    from hamner.model.mixers.attention import pair_order

    config = HamnerConfig(vocab_size=97, hidden_size=64, n_layers=1, n_heads=4, n_kv_heads=2, intermediate_size=96,
                          max_seq_len=32)
    model = HamnerModel(config)
    attn = model.layers[0].attn
    saved = model.state_dict()["layers.0.attn.qkv.weight"]
    order = pair_order(6, 16, attn.qkv.out_features)
    assert order[:4].tolist() == [0, 8, 1, 9] and order[96:].tolist() == list(range(96, 128))
    assert torch.equal(attn.qkv.weight[:, :].detach(), saved[order])
    assert torch.equal(attn.to_rotate_half(attn.to_pair_order(saved)), saved)
    other = HamnerModel(config)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.layers[0].attn.qkv.weight, attn.qkv.weight)
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict({**model.state_dict(), "layers.0.attn.qkv.weight": torch.zeros(3, 64)})


def test_a_batch_with_no_counted_target_has_zero_loss_and_zero_gradient():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 12))
    loss = model(idx, torch.full_like(idx, -100))
    assert loss.item() == 0.0  # not the NaN of an empty mean
    loss.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


def test_a_batch_with_counted_targets_keeps_the_kernel_loss_bit_for_bit():
    model = tiny_model()
    window = torch.randint(0, 97, (2, 13))
    idx, targets = window[:, :-1], window[:, 1:].clone()
    targets[1] = -100
    hidden = model.hidden_states(idx).reshape(-1, 64)
    expected = kernels.fused_linear_cross_entropy(hidden, model.embed.weight, targets.reshape(-1))
    assert torch.equal(model(idx, targets), expected)
