"""The hand-written backwards of the reference ops (RMSNorm, add + RMSNorm, SwiGLU, RoPE) against
finite differences in float64: the reference is the ground truth of the kernel tests, so its
gradients are checked by something that shares no derivation with it."""
import pytest
import torch

from hamner.kernels import reference


def _leaf(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()


def test_rms_norm_gradients() -> None:
    x, weight = _leaf(2, 3, 8, seed=0), _leaf(8, seed=1)
    assert torch.autograd.gradcheck(lambda a, w: reference.rms_norm(a, w, 1e-5), (x, weight))


@pytest.mark.parametrize("use_summed", [True, False])
def test_add_rms_norm_gradients(use_summed: bool) -> None:
    x, residual, weight = _leaf(4, 8, seed=0), _leaf(4, 8, seed=1), _leaf(8, seed=2)

    def both(a, b, w):
        normed, summed = reference.add_rms_norm(a, b, w, 1e-5)
        return (normed, summed) if use_summed else normed

    assert torch.autograd.gradcheck(both, (x, residual, weight))


def test_swiglu_gradients() -> None:
    assert torch.autograd.gradcheck(reference.swiglu, (_leaf(3, 2, 10, seed=0),))


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_gradients(interleaved: bool) -> None:
    q, k = _leaf(2, 5, 3, 8, seed=0), _leaf(2, 5, 1, 8, seed=1)
    cos, sin = reference.rope_cache(6, 8)
    assert torch.autograd.gradcheck(
        lambda a, b: reference.apply_rope(a, b, cos, sin, interleaved=interleaved), (q, k))
