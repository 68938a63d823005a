"""Fused linear + cross-entropy: the interpreted Triton kernel against a float64 reference."""
import pytest
import torch
import torch.nn.functional as F
from kernel_checks import TOLERANCE
from kernel_checks import rel_error as rel_err

from hamner.kernels import dispatch, reference
from hamner.kernels.cross_entropy import fused_linear_cross_entropy

pytestmark = pytest.mark.triton



def run_both(hidden, weight, targets, ignore_index=-100, grad_scale=1.0, softcap=None, **kwargs):
    """(loss, grad hidden, grad weight) from the kernel and from the float64 reference on the same values."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, w, targets, ignore_index, softcap=softcap, **kwargs)
    (loss * grad_scale).backward()
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    loss64 = reference.fused_linear_cross_entropy(h64, w64, targets, ignore_index, softcap=softcap)
    (loss64 * grad_scale).backward()
    return (loss, h.grad, w.grad), (loss64, h64.grad, w64.grad)


def check(out, ref, tol):
    errors = {}
    for name, o, r in zip(("loss", "grad_hidden", "grad_weight"), out, ref):
        assert o.shape == r.shape, name
        errors[name] = rel_err(o, r)
    print(f"relerr fused_linear_cross_entropy {out[1].dtype} " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    for name, err in errors.items():
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"


def launches() -> int:
    return dispatch.launches["fused_linear_cross_entropy"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows_per_chunk", [64, 8, 1])
def test_matches_reference_across_chunkings(dtype, rows_per_chunk):
    torch.manual_seed(0)
    n, d, v = 37, 45, 301  # odd rows, width and vocabulary; a third of the rows ignored
    hidden = torch.randn(n, d).to(dtype)
    weight = (0.3 * torch.randn(v, d)).to(dtype)
    targets = torch.randint(0, v, (n,))
    targets[::3] = -100
    before = launches()
    out, ref = run_both(hidden, weight, targets, chunk_bytes=rows_per_chunk * v * 4)
    assert launches() - before == -(-n // rows_per_chunk)
    assert out[0].dtype == torch.float32 and out[1].dtype == dtype and out[2].dtype == dtype
    check(out, ref, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows_per_chunk", [64, 5])
def test_softcap_matches_the_float64_autograd_reference(dtype, rows_per_chunk):
    """Logits up to about ±60 against a cap of 15: tanh saturates on many of them, so a wrong slope shows."""
    torch.manual_seed(6)
    n, d, v = 29, 40, 300
    hidden = torch.randn(n, d).to(dtype)
    weight = (1.5 * torch.randn(v, d)).to(dtype)
    targets = torch.randint(0, v, (n,))
    targets[::4] = -100
    assert (hidden.double() @ weight.double().T).abs().max() > 45
    out, ref = run_both(hidden, weight, targets, grad_scale=0.7, softcap=15.0, chunk_bytes=rows_per_chunk * v * 4)
    check(out, ref, TOLERANCE[dtype])
    uncapped = reference.fused_linear_cross_entropy(hidden.double(), weight.double(), targets)
    assert (ref[0] - uncapped).abs() > 1.0  # the cap changes the loss: the test sees it


def test_softcap_with_a_small_cap_and_a_confident_target():
    """A cap of 2 squashes every logit; the target's logit near the cap must still give the right loss."""
    torch.manual_seed(7)
    n, d, v = 12, 32, 64
    weight = torch.randn(v, d) / d**0.5
    targets = torch.randint(0, v, (n,))
    hidden = 10 * weight[targets] + 0.1 * torch.randn(n, d)
    out, ref = run_both(hidden, weight, targets, softcap=2.0)
    check(out, ref, TOLERANCE[torch.float32])


def test_softcap_must_be_positive():
    with pytest.raises(ValueError, match="softcap"):
        fused_linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, dtype=torch.long),
                                   softcap=0.0)


@pytest.mark.parametrize("width", [512, 768])
def test_model_widths_and_custom_ignore_index(width):
    torch.manual_seed(1)
    n, v = 16, 1000
    hidden = torch.randn(n, width)
    weight = torch.randn(v, width) / width**0.5
    targets = torch.randint(0, v, (n,))
    targets[:5] = 7  # ignore_index inside the vocabulary range
    before = launches()
    out, ref = run_both(hidden, weight, targets, ignore_index=7, chunk_bytes=5 * v * 4)
    assert launches() - before == 4
    check(out, ref, TOLERANCE[torch.float32])


def test_confident_predictions_keep_relative_accuracy():
    """p(target) > 0.999 everywhere: the loss and 1 - p(target) are tiny and must not cancel away."""
    torch.manual_seed(0)
    n, d, v = 40, 64, 500
    weight = torch.randn(v, d) / d**0.5
    targets = torch.randint(0, v, (n,))
    hidden = 28 * weight[targets] + 0.3 * torch.randn(n, d)
    p_target = (hidden.double() @ weight.double().T).softmax(-1).gather(1, targets[:, None])
    assert p_target.min() > 0.999
    out, ref = run_both(hidden, weight, targets, chunk_bytes=16 * v * 4)
    assert ref[0] < 1e-3
    check(out, ref, TOLERANCE[torch.float32])


def test_noncontiguous_hidden_and_scaled_grad_output():
    torch.manual_seed(2)
    n, d, v = 24, 33, 257
    hidden = torch.randn(d, 2 * n)[:, ::2].T  # strided in both dimensions
    assert not hidden.is_contiguous()
    weight = 0.2 * torch.randn(v, d)
    targets = torch.randint(0, v, (n,))
    out, ref = run_both(hidden, weight, targets, grad_scale=-2.5, chunk_bytes=10 * v * 4)
    check(out, ref, TOLERANCE[torch.float32])


def test_all_targets_ignored_gives_nan_loss_and_zero_grads_like_pytorch():
    torch.manual_seed(3)
    hidden = torch.randn(9, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.full((9,), -100)
    loss = fused_linear_cross_entropy(hidden, weight, targets, chunk_bytes=4 * 40 * 4)
    assert torch.isnan(loss)
    assert torch.isnan(F.cross_entropy(hidden @ weight.T, targets))
    loss.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_no_grad_call_returns_the_same_loss():
    torch.manual_seed(4)
    hidden, weight = torch.randn(12, 20), torch.randn(50, 20)
    targets = torch.randint(0, 50, (12,))
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, weight, targets)
    expected = reference.fused_linear_cross_entropy(hidden.double(), weight.double(), targets)
    assert rel_err(loss, expected) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_compiles_without_graph_breaks(softcap):
    torch.manual_seed(5)
    hidden, weight = torch.randn(10, 24), torch.randn(70, 24)
    targets = torch.randint(0, 70, (10,))

    def loss_fn(h, w):
        return fused_linear_cross_entropy(torch.tanh(h), w, targets, chunk_bytes=4 * 70 * 4, softcap=softcap)

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    grads = []
    for fn in (loss_fn, compiled):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        before = launches()
        loss = fn(h, w)
        loss.backward()
        assert launches() - before == 3
        grads.append((loss, h.grad, w.grad))
    for eager, traced in zip(*grads):
        assert torch.allclose(eager, traced, rtol=1e-6, atol=0)


def test_reference_path_when_kernels_are_off():
    hidden, weight = torch.randn(6, 8), torch.randn(11, 8)
    targets = torch.randint(0, 11, (6,))
    before = launches()
    with dispatch.cpu_kernels(False):
        loss = fused_linear_cross_entropy(hidden, weight, targets)
    assert launches() == before
    assert torch.equal(loss, reference.fused_linear_cross_entropy(hidden, weight, targets))


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="weight"):
        fused_linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        fused_linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(5, dtype=torch.long))
