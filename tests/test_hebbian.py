"""The Hebbian fast-weight memory: its decayed-linear-attention op (chunked = token-by-token
recurrence in float64, no overflow at any decay) and the mixer (causality, cached decoding =
full recomputation = a float64 loop over the equations, the fp32 island, the plasticity knob)."""
import math

import pytest
import torch
import torch.nn.functional as F
from kernel_checks import rel_error

from hamner import kernels
from hamner.errors import ConfigError, CurriculumError
from hamner.kernels import linear_attention, reference
from hamner.kernels.linear_attention import chunked_decayed_linear_attention, decayed_linear_attention
from hamner.model.config import HamnerConfig
from hamner.model.mixers import hebbian
from hamner.model.mixers.hebbian import HebbianMemory

pytestmark = pytest.mark.usefixtures("single_thread")


def inputs(B=2, T=37, H=3, K=8, V=5, decay=(0.5, 1.0), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    low, high = decay
    log_decay = (low + (high - low) * torch.rand(B, T, H, generator=g, dtype=dtype)).log()
    state = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, k, v, log_decay, state


@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_chunked_form_equals_the_recurrence_with_gradients(chunk_size):
    leaves = [t.requires_grad_() for t in inputs()]
    out = chunked_decayed_linear_attention(*leaves, chunk_size=chunk_size)
    ref = reference.decayed_linear_attention(*leaves)
    for a, b in zip(out, ref):
        assert rel_error(a, b) < 1e-12
    weights = [torch.randn_like(t) for t in out]
    grads = torch.autograd.grad(sum((a * w).sum() for a, w in zip(out, weights)), leaves)
    ref_grads = torch.autograd.grad(sum((b * w).sum() for b, w in zip(ref, weights)), leaves)
    for a, b in zip(grads, ref_grads):
        assert rel_error(a, b) < 1e-12


@pytest.mark.parametrize("alpha", [0.01, 0.99])
def test_no_overflow_over_long_sequences_at_any_decay(alpha):
    # 4096 tokens at decay 0.01 is a total decay of 1e-8192: inverting it (the lambda^-t form)
    # overflows float32 within a few dozen tokens; the chunked form stays exact.
    q, k, v, _, _ = inputs(B=1, T=4096, H=2, K=4, V=3, dtype=torch.float32, seed=1)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    log_decay = torch.full((1, 4096, 2), math.log(alpha))
    out, state = decayed_linear_attention(q, k, v, log_decay)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    ref, ref_state = reference.decayed_linear_attention(q.double(), k.double(), v.double(), log_decay.double())
    assert rel_error(out, ref) < 1e-5 and rel_error(state, ref_state) < 1e-5


def test_the_fla_custom_op_wrapper_forward_backward_and_compile(monkeypatch):
    # flash-linear-attention needs CUDA; its stand-in here is the chunked form with fla's keywords,
    # which checks everything the wrapper adds: the custom ops, their fake kernels and the
    # backward that re-runs the forward under autograd inside an op.
    def stand_in(*, q, k, v, g, scale, initial_state, output_final_state):
        assert scale == 1.0 and output_final_state
        return chunked_decayed_linear_attention(q, k, v, g, initial_state, chunk_size=8)

    monkeypatch.setattr(linear_attention, "_fla_chunk_simple_gla", stand_in)
    leaves = [t.requires_grad_() for t in inputs(T=20)]
    weights = torch.randn(2, 20, 3, 5, dtype=torch.float64), torch.randn(2, 3, 8, 5, dtype=torch.float64)

    def grads(outputs, wrt):
        return torch.autograd.grad(sum((t * w).sum() for t, w in zip(outputs, weights)), wrt)

    ref = reference.decayed_linear_attention(*leaves)
    ref_grads = grads(ref, leaves)
    compiled = torch.compile(linear_attention._fla_forward, backend="aot_eager", fullgraph=True)
    for out in (linear_attention._fla_forward(*leaves), compiled(*leaves)):
        assert out[1].dtype == torch.float32  # fla hands its final state on in fp32
        assert rel_error(out[0], ref[0]) < 1e-12 and rel_error(out[1], ref[1]) < 1e-6
        assert all(rel_error(a, b) < 1e-6 for a, b in zip(grads(out, leaves), ref_grads))
    # no initial state, and only the output used (no gradient reaches the final state)
    q, k, v, log_decay, _ = leaves
    out = linear_attention._fla_forward(q, k, v, log_decay, None)[:1]
    ref = reference.decayed_linear_attention(q, k, v, log_decay)[:1]
    assert all(rel_error(a, b) < 1e-12 for a, b in zip(grads(out, leaves[:4]), grads(ref, leaves[:4])))


def tiny_config(**overrides) -> HamnerConfig:
    fields = dict(vocab_size=50, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=4,
                  intermediate_size=64, max_seq_len=256)
    return HamnerConfig(**(fields | overrides))


def memory(seed=0, dtype=torch.float64, **overrides) -> HebbianMemory:
    torch.manual_seed(seed)
    m = HebbianMemory(tiny_config(**overrides), layer_index=0).to(dtype)
    with torch.no_grad():
        m.decay_logit.normal_()  # distinct per-head decays
        for extra in (m.qkv.bias, m.out.bias, *(m.out_norm.parameters() if m.out_norm is not None else ())):
            if extra is not None:
                extra.normal_()  # biases and norm affine away from their zero / unit init, so they count
    return m


# The bare memory (the default) and AGIFORMER's block: biased projections, a LayerNorm on the output.
BLOCKS = [{}, {"hebbian_out_norm": True, "hebbian_bias": True}]


def naive_memory(m: HebbianMemory, x: torch.Tensor) -> torch.Tensor:
    """The module docstring's equations, token by token, with lambda itself (not its log)."""
    B, T, _ = x.shape
    H, D = m.n_heads, m.head_dim
    q, k, v = m.qkv(x).view(B, T, 3, H, D).unbind(2)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    lam = (m.plasticity * (0.99 + 0.01 * torch.sigmoid(m.decay_logit)))[None, :, None]
    M, z, outs = x.new_zeros(B, H, D, D), x.new_zeros(B, H, D), []
    for t in range(T):
        M = lam[..., None] * M + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = lam * z + k[:, t]
        outs.append((q[:, t, :, :, None] * M).sum(-2) / ((q[:, t] * z).sum(-1, keepdim=True) + hebbian.NORMALISER_EPS))
    out = m.out(torch.stack(outs, dim=1).reshape(B, T, H * D))
    if m.out_norm is None:
        return out
    mean, var = out.mean(-1, keepdim=True), out.var(-1, unbiased=False, keepdim=True)
    return (out - mean) / torch.sqrt(var + m.out_norm.eps) * m.out_norm.weight + m.out_norm.bias


@pytest.mark.parametrize("block", BLOCKS)
def test_full_pass_equals_cached_decoding_equals_a_float64_loop(block):
    m = memory(hebbian_plasticity=0.9, **block)
    x = torch.randn(2, 150, 32, dtype=torch.float64)  # three chunks of the op, the last partial
    with torch.no_grad():
        full = m(x, None, None)
        state = m.new_state(2, 150, x.device, x.dtype)
        pieces, start = [], 0
        for n in (1, 70, 1, 1, 64, 13):
            pieces.append(m(x[:, start:start + n], None, None, state))
            start += n
        assert rel_error(full, naive_memory(m, x)) < 1e-12
        assert rel_error(torch.cat(pieces, dim=1), full) < 1e-12
        # select() keeps the chosen rows: continuing row 1 alone matches the full pass of row 1.
        state = m.new_state(2, 150, x.device, x.dtype)
        m(x[:, :100], None, None, state)
        state.select(torch.tensor([1]))
        assert rel_error(m(x[1:, 100:], None, None, state), full[1:, 100:]) < 1e-12


@pytest.mark.parametrize("block", BLOCKS)
def test_causal(block):
    m = memory(**block)
    x = torch.randn(1, 80, 32, dtype=torch.float64)
    changed = x.clone()
    changed[:, 50:] = torch.randn(1, 30, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(m(x, None, None)[:, :50], m(changed, None, None)[:, :50])
        assert not torch.allclose(m(x, None, None)[:, 50:], m(changed, None, None)[:, 50:])


def test_low_plasticity_forgets_and_high_plasticity_remembers():
    # The decay keeps applying at low alpha (a clamped exponent would stop it): a change at token
    # 0 has vanished from token 100's output at alpha 0.01 but is still felt at alpha 0.99.
    x = torch.randn(1, 101, 32, dtype=torch.float64)
    changed = x.clone()
    changed[:, 0] += 5.0
    effects = {}
    for alpha in (0.01, 0.99):
        m = memory()
        m.set_knob("plasticity", alpha)
        with torch.no_grad():
            effects[alpha] = (m(x, None, None)[:, -1] - m(changed, None, None)[:, -1]).abs().max().item()
    assert effects[0.01] < 1e-12 and effects[0.99] > 1e-4


def test_fp32_island_under_bf16_autocast(monkeypatch):
    m = memory(dtype=torch.float32)
    x = torch.randn(2, 300, 32)
    seen = []

    def recording(*args):
        seen.append({t.dtype for t in args if t is not None})
        return decayed_linear_attention(*args)

    monkeypatch.setattr(kernels, "decayed_linear_attention", recording)
    with torch.no_grad():
        fp32 = m(x, None, None)
        for alpha in (0.01, 0.99):
            m.set_knob("plasticity", alpha)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = m(x, None, None)
            assert torch.isfinite(mixed).all()
        m.set_knob("plasticity", 0.99)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = m(x, None, None)
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)
    assert mixed.dtype == torch.bfloat16  # only the projections around the memory run in bf16
    assert rel_error(mixed, fp32) < 3e-2


def test_plasticity_knob_is_a_checkpointed_buffer_with_checked_values():
    m = memory(hebbian_plasticity=0.5)
    assert m.plasticity.item() == 0.5
    m.set_knob("plasticity", 0.1)
    state = m.state_dict()
    assert state["plasticity"].item() == pytest.approx(0.1)
    fresh = memory()
    fresh.load_state_dict(state)
    assert fresh.plasticity.item() == pytest.approx(0.1)
    assert torch.allclose(fresh.log_decay(torch.float64).exp(), 0.1 * (0.99 + 0.01 * torch.sigmoid(fresh.decay_logit)))
    with pytest.raises(CurriculumError, match="plasticity must be in"):
        m.set_knob("plasticity", 1.5)
    with pytest.raises(CurriculumError, match="unknown knob 'rate'"):
        m.set_knob("rate", 0.5)
    with pytest.raises(ConfigError, match="hebbian_plasticity must be in"):
        tiny_config(mixer="hebbian", hebbian_plasticity=0.0)
    tiny_config(hebbian_plasticity=0.0)  # ignored by the other mixers


def test_agiformer_block_settings_are_off_by_default_and_checked():
    bare = HebbianMemory(tiny_config(), layer_index=0)
    assert bare.qkv.bias is None and bare.out.bias is None and bare.out_norm is None
    block = HebbianMemory(tiny_config(**BLOCKS[1]), layer_index=0)
    block.init_weights()
    assert torch.equal(block.qkv.bias, torch.zeros(96)) and torch.equal(block.out.bias, torch.zeros(32))
    assert torch.equal(block.out_norm.weight, torch.ones(32)) and torch.equal(block.out_norm.bias, torch.zeros(32))
    with pytest.raises(ConfigError, match="hebbian_bias must be true or false, got 'yes'"):
        tiny_config(mixer="hebbian", hebbian_bias="yes")
