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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_swiglu_matches_float64_reference(width: int, dtype: torch.dtype) -> None:
    leading = (2, 3) if width % 2 else (5,)
    gate_up = _randn((*leading, 2 * width), dtype)
    check_against_float64("swiglu", kernels.swiglu, reference.swiglu, [gate_up], KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_on_a_strided_view(dtype: torch.dtype) -> None:
    def every_other_row(ops):
        return lambda wide: ops.swiglu(wide[::2, 3:203])

    wide = _randn((10, 210), dtype)
    check_against_float64("swiglu_strided", every_other_row(kernels), every_other_row(reference), [wide], KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_on_transposed_inputs(dtype: torch.dtype) -> None:
    def transposed(ops):
        return lambda gate_up_t: ops.swiglu(gate_up_t.t())

    gate_up_t = _randn((200, 6), dtype)
    check_against_float64("swiglu_transposed", transposed(kernels), transposed(reference), [gate_up_t], KERNELS)


def _graph_node_names(fn) -> list[str]:
    """Names of every autograd node reachable from `fn`."""
    names, stack = [], [fn]
    while stack:
        node = stack.pop()
        names.append(type(node).__name__)
        stack.extend(parent for parent, _ in node.next_functions if parent is not None)
    return names


@pytest.mark.parametrize("kernel", [True, False])
def test_gradient_is_one_tensor_for_the_fused_projection(kernel: bool) -> None:
    """Downstream of a fused gate/up projection, the backward hands the projection one [.., 2I]
    gradient: autograd records no split of the projection's output, so no concatenation."""
    x = _randn((3, 8), torch.float32)
    weight = _randn((20, 8), torch.float32, seed=1)
    with dispatch.cpu_kernels(kernel):
        y = kernels.swiglu(torch.nn.functional.linear(x, weight))
    names = _graph_node_names(y.grad_fn)
    assert y.shape == (3, 10) and "MmBackward0" in names
    assert not [name for name in names if "Split" in name or "Cat" in name or "Slice" in name], names


def test_odd_width_is_one_line_error() -> None:
    with pytest.raises(ValueError, match="even last dimension"):
        kernels.swiglu(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="even last dimension"):
        reference.swiglu(torch.zeros(2, 5))


def test_custom_op_passes_opcheck() -> None:
    torch.library.opcheck(swiglu_module._swiglu_fwd, (_randn((3, 20), torch.float32),))


def test_compiles_without_graph_breaks() -> None:
    gate_up = _randn((2, 3, 2 * 24), torch.float32)
    before = dispatch.launches.copy()
    compiled = torch.compile(kernels.swiglu, fullgraph=True, backend="aot_eager")
    compiled(gate_up).square().sum().backward()
    assert dispatch.launches - before == {"swiglu_fwd": 1, "swiglu_bwd": 1}
    compiled_grad, gate_up.grad = gate_up.grad, None
    kernels.swiglu(gate_up).square().sum().backward()
    torch.testing.assert_close(compiled_grad, gate_up.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_mode_gives_the_same_answer(dtype: torch.dtype) -> None:
    gate_up = _randn((4, 2 * 100), dtype)
    kernel_out = kernels.swiglu(gate_up)
    before = dispatch.launches.copy()
    with dispatch.cpu_kernels(False):
        reference_out = kernels.swiglu(gate_up)
    assert dispatch.launches == before
    assert reference_out.dtype == kernel_out.dtype
    assert rel_error(kernel_out, reference_out) <= TOLERANCE[dtype]
