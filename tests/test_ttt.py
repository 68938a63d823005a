"""TTT-Linear: the dual-form op against the token-by-token primal form (float64, any length),
and the mixer (causality, cached decoding = full recomputation across mini-batch boundaries,
the fp32 island)."""
import pytest
import torch
from kernel_checks import rel_error

from hamner import kernels
from hamner.errors import ConfigError
from hamner.kernels import reference
from hamner.kernels.ttt import layer_norm_l2_grad, ttt_linear
from hamner.model.config import HamnerConfig
from hamner.model.mixers.ttt import TTTLinear

pytestmark = pytest.mark.usefixtures("single_thread")


def op_inputs(B=2, T=37, H=3, D=8, K=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    lr = 0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    token_scale = 1 / torch.arange(1, K + 1, dtype=torch.float64)
    token_scale = token_scale + 0.05 * torch.rand(K, generator=g, dtype=torch.float64)
    weight = 0.3 * torch.randn(B, H, D, D, generator=g, dtype=torch.float64)
    bias = 0.3 * torch.randn(B, H, D, generator=g, dtype=torch.float64)
    ln_weight = 1 + 0.2 * torch.randn(H, D, generator=g, dtype=torch.float64)
    ln_bias = 0.2 * torch.randn(H, D, generator=g, dtype=torch.float64)
    return q, k, v, lr, token_scale, weight, bias, ln_weight, ln_bias


@pytest.mark.parametrize("T, K", [(37, 16), (32, 16), (5, 16), (12, 4)])
def test_dual_form_equals_the_token_by_token_primal_form(T, K):
    args = op_inputs(T=T, K=K)
    out, weight, bias = ttt_linear(*args)
    ref_out, ref_weight, ref_bias = reference.ttt_linear(*args)
    assert rel_error(out, ref_out) < 1e-12
    assert rel_error(weight, ref_weight) < 1e-12 and rel_error(bias, ref_bias) < 1e-12
    if T < K:  # no complete mini-batch: the weights have not moved
        assert torch.equal(weight, args[5]) and torch.equal(bias, args[6])


def test_layer_norm_l2_grad_is_the_gradient_of_the_reconstruction_loss():
    z = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    target, weight, bias = (torch.randn(8, dtype=torch.float64) for _ in range(3))
    loss = 0.5 * (torch.nn.functional.layer_norm(z, (8,), eps=1e-6) * weight + bias - target).pow(2).sum()
    (expected,) = torch.autograd.grad(loss, z)
    assert rel_error(layer_norm_l2_grad(z, target, weight, bias, 1e-6), expected) < 1e-12


def tiny_config(**overrides) -> HamnerConfig:
    fields = dict(vocab_size=50, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=4,
                  intermediate_size=64, max_seq_len=128, ttt_mini_batch=8)
    return HamnerConfig(**(fields | overrides))


def mixer(seed=0, dtype=torch.float64) -> TTTLinear:
    torch.manual_seed(seed)
    m = TTTLinear(tiny_config(), layer_index=0).to(dtype)
    with torch.no_grad():  # away from the identity init, so every parameter matters
        for p in (m.token_scale_offset, m.inner_bias, m.inner_norm_bias, m.lr_gate.bias):
            p.normal_(std=0.1)
    return m


def test_cached_decoding_equals_full_recomputation():
    m = mixer()
    x = torch.randn(2, 45, 32, dtype=torch.float64)
    with torch.no_grad():
        full = m(x, None, None)
        state = m.new_state(2, 45, x.device, x.dtype)
        pieces, start = [], 0
        for n in (3, 1, 1, 1, 1, 1, 9, 20, 1, 7):  # starts and ends inside and on mini-batches
            pieces.append(m(x[:, start:start + n], None, None, state))
            start += n
        assert rel_error(torch.cat(pieces, dim=1), full) < 1e-12
        state = m.new_state(2, 45, x.device, x.dtype)
        m(x[:, :21], None, None, state)
        state.select(torch.tensor([1]))
        assert rel_error(m(x[1:, 21:], None, None, state), full[1:, 21:]) < 1e-12


def test_causal_and_learns_from_the_context():
    m = mixer()
    x = torch.randn(1, 40, 32, dtype=torch.float64)
    changed = x.clone()
    changed[:, 20:] = torch.randn(1, 20, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(m(x, None, None)[:, :20], m(changed, None, None)[:, :20])
        # the inner model carries what tokens 20..23 taught it into the next mini-batch
        early = x.clone()
        early[:, 20:24] += 1.0
        assert not torch.allclose(m(x, None, None)[:, 24:], m(early, None, None)[:, 24:])


def test_fp32_island_under_bf16_autocast_and_gradients_reach_every_parameter(monkeypatch):
    m = mixer(dtype=torch.float32)
    x = torch.randn(2, 50, 32)
    seen = []

    def recording(*args):
        seen.append({t.dtype for t in args if isinstance(t, torch.Tensor)})
        return ttt_linear(*args)

    monkeypatch.setattr(kernels, "ttt_linear", recording)
    with torch.no_grad():
        fp32 = m(x, None, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = m(x, None, None)
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)
    assert rel_error(mixed, fp32) < 3e-2
    mixed.float().pow(2).mean().backward()
    missing = [name for name, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_config_checks():
    with pytest.raises(ConfigError, match="ttt_mini_batch must be a positive integer"):
        tiny_config(mixer="ttt_linear", ttt_mini_batch=0)
    with pytest.raises(ConfigError, match="ttt_base_lr must be positive"):
        tiny_config(mixer="swa+ttt_linear", window=4, ttt_base_lr=-1.0)
