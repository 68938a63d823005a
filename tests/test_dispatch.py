"""Dispatch: which path an op takes, and that the package works where triton is not installed."""
import subprocess

import pytest
import torch

from hamner import kernels
from hamner.kernels import dispatch

HIDE_TRITON = """
import importlib.abc, sys
class HideTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, HideTriton())
import torch
from hamner import kernels
from hamner.kernels import dispatch, reference
assert not dispatch.TRITON_INSTALLED
x = torch.randn(3, 8)
w = torch.rand(8)
assert kernels.rms_norm is reference.rms_norm
assert torch.equal(kernels.rms_norm(x, w), reference.rms_norm(x, w))
print("ok")
"""


def test_package_imports_and_runs_without_triton(python, subprocess_env):
    result = subprocess.run([python, "-c", HIDE_TRITON], env=subprocess_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cpu_tensors_take_reference_outside_kernel_tests():
    assert not dispatch.use_triton(torch.zeros(1))


@pytest.mark.triton
def test_cpu_tensors_take_kernels_in_kernel_tests():
    assert dispatch.use_triton(torch.zeros(1))
    with dispatch.reference_only():
        assert not dispatch.use_triton(torch.zeros(1))
    assert dispatch.use_triton(torch.zeros(1))


@pytest.mark.triton
def test_reference_only_routes_ops_to_reference():
    x, w = torch.randn(4, 16), torch.rand(16)
    before = dispatch.launches["rms_norm_fwd"]
    with dispatch.reference_only():
        out = kernels.rms_norm(x, w)
    assert dispatch.launches["rms_norm_fwd"] == before
    torch.testing.assert_close(out, kernels.reference.rms_norm(x, w))
