"""Test-wide setup: the Triton interpreter is switched on before anything imports triton.

Only tests marked `triton` run the interpreted kernels on CPU tensors; every other test runs
the PyTorch reference ops, which keeps model and training tests fast. Subprocesses started by
tests should drop TRITON_INTERPRET from their environment (see `subprocess_env`).
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
# No test downloads anything (CI has no network but the package registries): hub tokenizers come from the
# cache or a test's fake; subprocesses inherit this through `subprocess_env`.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hamner.kernels import dispatch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "triton: run the Triton kernels (interpreted on CPU)")


@pytest.fixture(scope="session", autouse=True)
def _reference_ops_outside_tests():
    """Module- and session-scoped fixtures (model training, say) get the fast reference ops too."""
    with dispatch.cpu_kernels(False):
        yield


@pytest.fixture(autouse=True)
def _cpu_ops(request: pytest.FixtureRequest, _reference_ops_outside_tests):
    with dispatch.cpu_kernels(request.node.get_closest_marker("triton") is not None):
        yield


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny-model tests (thread start-up costs more than it gains)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """The real test data that lives beside the checkout (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"missing {SHARED_DATA}: the shared test data must sit beside the checkout")
    return SHARED_DATA


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for running project commands in a subprocess: reference ops, the installed package.

    The checkout's root is not put on PYTHONPATH: commands must work as a user runs them, with
    Hamner installed (`pip install -e .`) and nothing in the checkout shadowing other packages.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
