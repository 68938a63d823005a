"""Mixture-of-experts MLP: the grouped-matmul path against the per-expert loop, the auxiliary
losses, active parameters and expert load."""
import pytest
import torch
from kernel_checks import rel_error

from hamner.kernels import dispatch, moe_experts, reference
from hamner.model.config import HamnerConfig
from hamner.model.mlps.moe import MoE, balance_loss, expert_fraction, z_loss
from hamner.model.transformer import HamnerModel

pytestmark = pytest.mark.usefixtures("single_thread")

N_EXPERTS, WIDTH, HIDDEN = 4, 32, 16


def routed(n_tokens: int = 24, dtype=torch.float32, seed: int = 0):
    """Tokens, a top-2 routing that leaves expert 3 without tokens, and expert weights."""
    torch.manual_seed(seed)
    x = torch.randn(n_tokens, HIDDEN, dtype=dtype, requires_grad=True)
    expert_ids = torch.stack([torch.randint(0, 3, (n_tokens,)), torch.randint(0, 3, (n_tokens,))], dim=1)
    weights = torch.rand(n_tokens, 2, dtype=dtype).softmax(-1).requires_grad_()
    w_gate_up = (0.2 * torch.randn(N_EXPERTS, 2 * WIDTH, HIDDEN, dtype=dtype)).requires_grad_()
    w_down = (0.2 * torch.randn(N_EXPERTS, HIDDEN, WIDTH, dtype=dtype)).requires_grad_()
    return x, expert_ids, weights, w_gate_up, w_down


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_grouped_path_equals_the_reference_loop(dtype, tol):
    x, expert_ids, weights, w_gate_up, w_down = routed(dtype=dtype)
    launches = dispatch.launches["moe_grouped_mm"]
    out = moe_experts(x, expert_ids, weights, w_gate_up, w_down)
    assert dispatch.launches["moe_grouped_mm"] == launches + 2  # gate/up, then down
    leaves = (x, weights, w_gate_up, w_down)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference.moe_experts(leaves64[0], expert_ids, *leaves64[1:])
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert out.dtype == dtype and rel_error(out, ref) < tol
    for t, t64 in zip(leaves, leaves64):
        assert rel_error(t.grad, t64.grad) < tol
    assert w_gate_up.grad[3].abs().sum() == 0  # the idle expert gets no gradient


def test_reference_only_runs_the_loop_with_the_same_result():
    x, expert_ids, weights, w_gate_up, w_down = routed()
    with torch.no_grad():
        grouped = moe_experts(x, expert_ids, weights, w_gate_up, w_down)
        launches = dispatch.launches["moe_grouped_mm"]
        with dispatch.reference_only():
            loop = moe_experts(x, expert_ids, weights, w_gate_up, w_down)
        assert dispatch.launches["moe_grouped_mm"] == launches
    torch.testing.assert_close(grouped, loop)


def test_balance_loss_is_minimal_for_a_uniform_router():
    n_tokens = 64
    uniform = torch.full((n_tokens, N_EXPERTS), 1.0 / N_EXPERTS)
    ids = uniform.topk(2, dim=-1).indices  # ties: every token picks the same two experts
    assert balance_loss(uniform, expert_fraction(ids, N_EXPERTS)).item() == pytest.approx(1.0)
    torch.manual_seed(0)
    for scale in (0.5, 2.0, 8.0):
        probs = (scale * torch.randn(n_tokens, N_EXPERTS)).softmax(-1)
        ids = probs.topk(2, dim=-1).indices
        assert balance_loss(probs, expert_fraction(ids, N_EXPERTS)).item() > 1.0
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).expand(n_tokens, -1)
    assert balance_loss(skewed, expert_fraction(skewed.topk(2, dim=-1).indices, N_EXPERTS)).item() == \
        pytest.approx(4 * (0.5 * 0.7 + 0.5 * 0.1))


def test_z_loss_is_the_mean_squared_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    expected = (torch.log(torch.tensor(2.0)) ** 2 + torch.logsumexp(torch.tensor([1.0, 3.0]), 0) ** 2) / 2
    assert z_loss(logits).item() == pytest.approx(expected.item())


def moe_model(**fields) -> HamnerModel:
    torch.manual_seed(0)
    config = HamnerConfig(vocab_size=97, hidden_size=HIDDEN * 2, n_layers=2, n_heads=2, n_kv_heads=1,
                          intermediate_size=64, max_seq_len=32, mlp="moe", n_experts=N_EXPERTS,
                          moe_intermediate_size=WIDTH, **fields)
    return HamnerModel(config)


def test_training_loss_adds_the_weighted_aux_losses_and_evaluation_does_not():
    model = moe_model(moe_balance_weight=0.5, moe_z_weight=0.1)
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        train_loss = model.train()(idx, idx)
        layers = [m for m in model.modules() if isinstance(m, MoE)]
        aux = sum(m.aux_loss for m in layers)
        eval_loss = model.eval()(idx, idx)
    assert model.aux_losses() == []  # an evaluation forward sets none
    assert aux > 0.5 * 2  # two layers, each balance loss >= 1
    torch.testing.assert_close(train_loss, eval_loss + aux)


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_language_model_loss_alone_trains_the_router(top_k):
    """With the auxiliary losses off, the router still gets a gradient: for k = 1 the expert is weighted by
    its probability (Switch), not by the renormalised p / p = 1."""
    model = moe_model(moe_top_k=top_k, moe_balance_weight=0.0, moe_z_weight=0.0).train()
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    model(idx, idx).backward()
    for layer in (m for m in model.modules() if isinstance(m, MoE)):  # p / p leaves only rounding (~1e-11)
        assert layer.router.weight.grad.abs().max() > 1e-3 * layer.gate_up.grad.abs().max()


def test_one_expert_per_token_is_weighted_by_its_router_probability():
    layer = [m for m in moe_model(moe_top_k=1).modules() if isinstance(m, MoE)][0]
    x = torch.randn(5, HIDDEN * 2, generator=torch.Generator().manual_seed(2))
    probs = layer.router(x).float().softmax(-1)
    weight, expert = probs.max(-1, keepdim=True)
    expected = reference.moe_experts(x, expert, weight, layer.gate_up, layer.down)
    torch.testing.assert_close(layer(x), expected)


def test_active_parameters_and_expert_load():
    model = moe_model()
    experts = N_EXPERTS * 3 * WIDTH * HIDDEN * 2
    router = N_EXPERTS * HIDDEN * 2
    total = model.num_parameters()
    assert model.num_parameters(active=True) == total - 2 * (experts - experts // N_EXPERTS * 2)
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 16)))
    load = model.expert_load()
    assert load.shape == (2, N_EXPERTS) and torch.allclose(load.sum(-1), torch.ones(2))
    assert sum(p.numel() for n, p in model.named_parameters() if n.endswith("mlp.router.weight")) == 2 * router


def test_bf16_autocast_runs_the_experts_in_bf16():
    model = moe_model()
    layer = next(m for m in model.modules() if isinstance(m, MoE))
    x = torch.randn(2, 8, HIDDEN * 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
