"""SwiGLU Triton kernels (interpreted on CPU) against the float64 reference."""
import sys

import pytest
import torch
from kernel_checks import TOLERANCE, check_against_float64, rel_error

from hamner import kernels
from hamner.kernels import dispatch, reference

pytestmark = pytest.mark.triton

swiglu_module = sys.modules["hamner.kernels.activations"]

WIDTHS = [7, 100, 512, 768, 1365, 2048]
DTYPES = [torch.float32, torch.bfloat16]
KERNELS = ["swiglu_fwd", "swiglu_bwd"]


def _randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(shape, generator=generator)).to(dtype).requires_grad_()


def _fused_halves(ops):
    """swiglu on the gate and up halves of one fused [..., 2 * I] projection output (strided views)."""

    def run(fused: torch.Tensor) -> torch.Tensor:
        gate, up = fused.chunk(2, dim=-1)
        return ops.swiglu(gate, up)

    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_swiglu_matches_float64_reference(width: int, dtype: torch.dtype) -> None:
    leading = (2, 3) if width % 2 else (5,)
    gate, up = _randn((*leading, width), dtype, 0), _randn((*leading, width), dtype, 1)
    check_against_float64("swiglu", kernels.swiglu, reference.swiglu, [gate, up], KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("leading", [(2, 3), (4,)])
def test_swiglu_on_halves_of_a_fused_projection(leading: tuple[int, ...], dtype: torch.dtype) -> None:
    fused = _randn((*leading, 2 * 1365), dtype)
    check_against_float64("swiglu_fused", _fused_halves(kernels), _fused_halves(reference), [fused], KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_on_transposed_inputs(dtype: torch.dtype) -> None:
    def transposed(ops):
        return lambda gate_t, up_t: ops.swiglu(gate_t.t(), up_t.t())

    gate_t, up_t = _randn((100, 6), dtype, 0), _randn((100, 6), dtype, 1)
    check_against_float64(
        "swiglu_transposed", transposed(kernels), transposed(reference), [gate_t, up_t], KERNELS
    )


def test_custom_op_passes_opcheck() -> None:
    fused = _randn((3, 20), torch.float32)
    torch.library.opcheck(swiglu_module._swiglu_fwd, (fused[:, :10], fused[:, 10:]))


def test_compiles_without_graph_breaks() -> None:
    fused = _randn((2, 3, 2 * 24), torch.float32)
    before = dispatch.launches.copy()
    compiled = torch.compile(_fused_halves(kernels), fullgraph=True, backend="aot_eager")
    compiled(fused).square().sum().backward()
    assert dispatch.launches - before == {"swiglu_fwd": 1, "swiglu_bwd": 1}
    compiled_grad, fused.grad = fused.grad, None
    _fused_halves(kernels)(fused).square().sum().backward()
    torch.testing.assert_close(compiled_grad, fused.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_mode_gives_the_same_answer(dtype: torch.dtype) -> None:
    fused = _randn((4, 2 * 100), dtype)
    kernel_out = _fused_halves(kernels)(fused)
    before = dispatch.launches.copy()
    with dispatch.cpu_kernels(False):
        reference_out = _fused_halves(kernels)(fused)
    assert dispatch.launches == before
    assert reference_out.dtype == kernel_out.dtype
    assert rel_error(kernel_out, reference_out) <= TOLERANCE[dtype]
