"""Attention dispatch: grouped-query SDPA against the float64 reference, forward and backward."""
import importlib.util

import pytest
import torch
from kernel_checks import rel_error as rel_err

from hamner.kernels import reference
from hamner.kernels.attention_dispatch import attention, attention_backend

HEAD_DIM = 64


def qkv(hq: int, hkv: int, tq: int, tk: int, dtype=torch.float32, batch: int = 2):
    q = torch.randn(batch, tq, hq, HEAD_DIM).to(dtype)
    k = torch.randn(batch, tk, hkv, HEAD_DIM).to(dtype)
    v = torch.randn(batch, tk, hkv, HEAD_DIM).to(dtype)
    return q, k, v


def check_against_reference(q, k, v, causal, tol):
    """Forward and q/k/v gradients of `attention` against the reference run in float64."""
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    ins64 = [t.double().requires_grad_() for t in (q, k, v)]
    out = attention(*ins, causal=causal)
    ref = reference.attention(*ins64, causal=causal)
    assert out.shape == ref.shape == q.shape
    assert out.dtype == q.dtype
    grad = torch.randn_like(ref)
    out.backward(grad.to(out.dtype))
    ref.backward(grad)
    grads = {f"grad_{n}": rel_err(t.grad, t64.grad) for n, t, t64 in zip("qkv", ins, ins64)}
    errors = {"out": rel_err(out, ref)} | grads
    print(f"relerr attention {q.dtype} " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    for name, err in errors.items():
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [(8, 2), (12, 4), (4, 4)])
def test_gqa_matches_reference(heads, causal):
    torch.manual_seed(0)
    check_against_reference(*qkv(*heads, tq=7, tk=7), causal=causal, tol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_bf16_matches_reference(causal):
    torch.manual_seed(1)
    check_against_reference(*qkv(8, 2, tq=9, tk=9, dtype=torch.bfloat16), causal=causal, tol=2e-2)


@pytest.mark.parametrize("tq", [1, 3])
@pytest.mark.parametrize("causal", [True, False])
def test_fewer_queries_than_keys(tq, causal):
    torch.manual_seed(2)
    check_against_reference(*qkv(12, 4, tq=tq, tk=8), causal=causal, tol=1e-5)


def test_cached_queries_align_to_the_end_of_the_keys():
    """The last queries against the whole cache equal the last rows of full causal attention."""
    torch.manual_seed(3)
    q, k, v = qkv(8, 2, tq=10, tk=10)
    full = attention(q, k, v, causal=True)
    for tq in (1, 4):
        cached = attention(q[:, -tq:], k, v, causal=True)
        assert torch.allclose(cached, full[:, -tq:], rtol=1e-5, atol=1e-6)


def test_compiles_without_graph_breaks():
    torch.manual_seed(4)
    q, k, v = qkv(8, 2, tq=3, tk=6)
    compiled = torch.compile(lambda *t: attention(*t, causal=True), backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(q, k, v), attention(q, k, v), rtol=1e-6, atol=1e-7)


def test_backend_name():
    expected = "flash-attn" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert attention_backend() == expected


@pytest.mark.parametrize(
    "shapes, causal, problem",
    [
        (((1, 4, 6, 64), (1, 4, 4, 64), (1, 4, 4, 64)), True, "multiple"),
        (((1, 4, 8, 64), (1, 4, 2, 32), (1, 4, 2, 32)), True, "head size"),
        (((1, 4, 8, 64), (1, 4, 2, 64), (1, 5, 2, 64)), False, "expected"),
        (((1, 6, 8, 64), (1, 4, 2, 64), (1, 4, 2, 64)), True, "at most"),
    ],
)
def test_rejects_bad_shapes(shapes, causal, problem):
    with pytest.raises(ValueError, match=problem):
        attention(*(torch.zeros(s) for s in shapes), causal=causal)
