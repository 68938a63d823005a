"""ReLU² Triton kernels (interpreted on CPU) against the float64 reference, and the relu2 MLP."""
import sys

import pytest
import torch
from kernel_checks import TOLERANCE, assert_model_step_matches_reference_ops, check_against_float64, rel_error

from hamner import kernels
from hamner.kernels import dispatch, reference
from hamner.model.config import HamnerConfig
from hamner.model.transformer import HamnerModel

pytestmark = pytest.mark.triton

activations = sys.modules["hamner.kernels.activations"]

WIDTHS = [7, 100, 512, 1365, 2048, 5000]  # 5000: wider than one block, split over two programs
DTYPES = [torch.float32, torch.bfloat16]
KERNELS = ["relu2_fwd", "relu2_bwd"]


def _randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(shape, generator=generator)).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_relu2_matches_float64_reference(width: int, dtype: torch.dtype) -> None:
    x = _randn((2, 3, width) if width % 2 else (5, width), dtype)
    check_against_float64("relu2", kernels.relu2, reference.relu2, [x], KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_on_strided_and_transposed_inputs(dtype: torch.dtype) -> None:
    def strided(ops):
        return lambda wide: ops.relu2(wide[::2, 3:203])

    def transposed(ops):
        return lambda x_t: ops.relu2(x_t.t())

    check_against_float64("relu2_strided", strided(kernels), strided(reference), [_randn((10, 210), dtype)], KERNELS)
    check_against_float64("relu2_transposed", transposed(kernels), transposed(reference), [_randn((200, 6), dtype)],
                          KERNELS)


def test_reference_is_relu_squared_with_its_derivative() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    y = reference.relu2(x)
    y.sum().backward()
    assert y.tolist() == [0.0, 0.0, 0.0, 0.25, 9.0]
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 6.0]


def test_custom_ops_pass_opcheck() -> None:
    torch.library.opcheck(activations._relu2_fwd, (_randn((3, 20), torch.float32),))
    dy, x = (_randn((3, 20), torch.float32, seed).detach() for seed in (1, 2))  # the backward is not differentiated
    torch.library.opcheck(activations._relu2_bwd, (dy, x))


def test_compiles_without_graph_breaks() -> None:
    x = _randn((2, 3, 24), torch.float32)
    before = dispatch.launches.copy()
    compiled = torch.compile(kernels.relu2, fullgraph=True, backend="aot_eager")
    compiled(x).square().sum().backward()
    assert dispatch.launches - before == {"relu2_fwd": 1, "relu2_bwd": 1}
    compiled_grad, x.grad = x.grad, None
    kernels.relu2(x).square().sum().backward()
    torch.testing.assert_close(compiled_grad, x.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_mode_gives_the_same_answer(dtype: torch.dtype) -> None:
    x = _randn((4, 100), dtype)
    kernel_out = kernels.relu2(x)
    before = dispatch.launches.copy()
    with dispatch.cpu_kernels(False):
        reference_out = kernels.relu2(x)
    assert dispatch.launches == before
    assert reference_out.dtype == kernel_out.dtype
    assert rel_error(kernel_out, reference_out) <= TOLERANCE[dtype]


def test_the_relu2_mlp_runs_the_kernel_and_matches_the_reference_model() -> None:
    torch.manual_seed(0)
    config = HamnerConfig(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=96,
                          max_seq_len=32, mlp="relu2")
    model = HamnerModel(config)
    assert {n for n, _ in model.named_parameters() if ".mlp." in n} == {
        f"layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("up", "down")}
    idx = torch.randint(0, 97, (2, 16))
    before = dispatch.launches.copy()
    loss = model(idx, idx)
    assert_model_step_matches_reference_ops(model, loss, idx)  # the reference ops launch no kernel
    assert (dispatch.launches - before)["relu2_fwd"] == 2 and (dispatch.launches - before)["relu2_bwd"] == 2
