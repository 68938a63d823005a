"""RMSNorm and add+RMSNorm Triton kernels (interpreted on CPU) against the float64 reference."""
import sys

import pytest
import torch
from kernel_checks import TOLERANCE, check_against_float64, rel_error

from hamner import kernels
from hamner.kernels import dispatch, reference

pytestmark = pytest.mark.triton

rms_norm_module = sys.modules["hamner.kernels.norms"]

WIDTHS = [7, 100, 512, 768, 1365, 2048]
DTYPES = [torch.float32, torch.bfloat16]


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(dtype).requires_grad_()
    residual = torch.randn(shape, generator=generator).to(dtype).requires_grad_()
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=generator)).to(dtype).requires_grad_()
    return [x, residual, weight]


def _shape(width: int) -> tuple[int, ...]:
    # Alternate the leading shape between [B, T, H] and [N, H].
    return (2, 3, width) if width % 2 else (5, width)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_rms_norm_matches_float64_reference(width: int, dtype: torch.dtype) -> None:
    x, _, weight = _inputs(_shape(width), dtype)
    check_against_float64(
        "rms_norm", kernels.rms_norm, reference.rms_norm, [x, weight], ["rms_norm_fwd", "rms_norm_bwd"]
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_add_rms_norm_matches_float64_reference(width: int, dtype: torch.dtype) -> None:
    check_against_float64(
        "add_rms_norm",
        kernels.add_rms_norm,
        reference.add_rms_norm,
        _inputs(_shape(width), dtype),
        ["add_rms_norm_fwd", "rms_norm_bwd"],
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype: torch.dtype) -> None:
    # x is a transposed [H, N] tensor; residual is a column slice of a wider buffer.
    width, rows = 100, 6
    x_t, wide, _ = _inputs((width, 2 * rows), dtype)
    weight = _inputs((1, width), dtype)[2]

    def views(x_t, wide, weight, ops):
        x = x_t.t()[:rows]
        residual = wide.reshape(rows, 2 * width)[:, width:]
        assert not x.is_contiguous() and not residual.is_contiguous()
        normed, summed = ops.add_rms_norm(x, residual, weight)
        return ops.rms_norm(x, weight), normed, summed

    check_against_float64(
        "rms_norm_strided",
        lambda *leaves: views(*leaves, kernels),
        lambda *leaves: views(*leaves, reference),
        [x_t, wide, weight],
        ["rms_norm_fwd", "add_rms_norm_fwd", "rms_norm_bwd"],
    )


def test_weight_gradient_is_deterministic() -> None:
    # Many rows per program: the fp32 partial sums must add up in the same order every time.
    x, _, weight = _inputs((64, 96), torch.float32)
    dy = torch.randn(64, 96)
    grads = []
    for _ in range(2):
        weight.grad = None
        kernels.rms_norm(x, weight).backward(dy)
        grads.append(weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_empty_input() -> None:
    x, residual, weight = _inputs((0, 16), torch.float32)
    normed, summed = kernels.add_rms_norm(x, residual, weight)
    (kernels.rms_norm(x, weight).sum() + normed.sum() + summed.sum()).backward()
    assert normed.shape == (0, 16) and torch.equal(weight.grad, torch.zeros(16))


def test_custom_ops_pass_opcheck() -> None:
    x, residual, weight = _inputs((3, 16), torch.float32)
    torch.library.opcheck(rms_norm_module._rms_norm_fwd, (x, weight, 1e-5))
    torch.library.opcheck(rms_norm_module._add_rms_norm_fwd, (x, residual, weight, 1e-5))


def test_compiles_without_graph_breaks() -> None:
    def block(x, residual, weight):
        normed, summed = kernels.add_rms_norm(x, residual, weight)
        return (kernels.rms_norm(summed, weight) * normed).sum()

    leaves = _inputs((2, 3, 40), torch.float32)
    before = dispatch.launches.copy()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    compiled(*leaves).backward()
    ran = dispatch.launches - before
    assert ran["add_rms_norm_fwd"] == 1 and ran["rms_norm_fwd"] == 1 and ran["rms_norm_bwd"] == 2
    compiled_grads = [leaf.grad.clone() for leaf in leaves]
    for leaf in leaves:
        leaf.grad = None
    block(*leaves).backward()
    for compiled_grad, leaf in zip(compiled_grads, leaves):
        torch.testing.assert_close(compiled_grad, leaf.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_mode_gives_the_same_answer(dtype: torch.dtype) -> None:
    x, residual, weight = _inputs((4, 100), dtype)
    kernel_out = kernels.add_rms_norm(x, residual, weight)
    before = dispatch.launches.copy()
    with dispatch.cpu_kernels(False):
        reference_out = kernels.add_rms_norm(x, residual, weight)
    assert dispatch.launches == before
    for out, ref in zip(kernel_out, reference_out):
        assert out.dtype == ref.dtype and rel_error(out, ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("tiling", rms_norm_module.BWD_CANDIDATES, ids=lambda t: t.name())
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_backward_tiling_matches_float64_reference(tiling, dtype: torch.dtype) -> None:
    # 37 rows: tiles and programs do not divide them evenly; width 100 leaves a masked column tail.
    with rms_norm_module.set_backward_tiling(tiling):
        x, _, weight = _inputs((37, 100), dtype, seed=3)
        check_against_float64("rms_norm", kernels.rms_norm, reference.rms_norm, [x, weight], ["rms_norm_bwd"])
        check_against_float64("add_rms_norm", kernels.add_rms_norm, reference.add_rms_norm,
                              _inputs((37, 100), dtype, seed=4), ["rms_norm_bwd"])


def test_backward_tiling_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        with rms_norm_module.set_backward_tiling(rms_norm_module.BackwardTiling(rows_per_tile=3)):
            pass
