"""The package's shape: every subpackage installs, no import cycle anywhere, and every kernel op has its
reference's signature."""
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

import hamner.kernels as kernels
from hamner.kernels import reference
from hamner.kernels.dispatch import TRITON_INSTALLED
from hamner.toml_table import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_installs_every_subpackage():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    installed = set(find_packages(str(ROOT), include=find["include"]))
    subpackages = {"hamner." + ".".join(p.parent.relative_to(ROOT / "hamner").parts)
                   for p in (ROOT / "hamner").rglob("*/__init__.py")}
    assert {"hamner.kernels", "hamner.data", "hamner.model", "hamner.model.mixers", "hamner.train",
            "hamner.train.curriculum", "hamner.run", "hamner.use", "hamner.eval", "hamner.commands"} <= subpackages
    assert subpackages <= installed


def test_hamner_is_the_only_package_at_the_top_of_the_checkout():
    """A top-level package would shadow an installed one of the same name whenever the root is on sys.path."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == {"hamner"}
    assert not [p for p in ROOT.iterdir() if p.is_symlink()]


def test_no_file_keeps_a_merge_conflict_marker():
    """A conflict left inside a docstring or a TOML comment still imports and lints; this catches it."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    markers = ("<<<<<<< ", ">>>>>>> ")
    for name in tracked.stdout.splitlines():
        path = ROOT / name
        if path.suffix in {".py", ".toml", ".md", ".sh", ".txt", ".cfg"} and path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                assert not line.startswith(markers), f"{name}:{number}: {line}"


def test_the_rooms_import_only_downwards_and_no_package_imports_in_a_cycle():
    """The import-linter contracts in pyproject.toml: the layers of rooms and no cycle between packages."""
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


NOT_OPS = {"reference", "attention_backend", "linear_attention_backend"}  # which backend runs, not ops


@pytest.mark.skipif(not TRITON_INSTALLED, reason="without triton every op is its reference")
@pytest.mark.parametrize("op", sorted(set(kernels.__all__) - NOT_OPS))
def test_each_op_takes_what_its_reference_takes(op):
    ours, theirs = inspect.signature(getattr(kernels, op)), inspect.signature(getattr(reference, op))
    assert [(p.name, p.kind) for p in ours.parameters.values()] == \
        [(p.name, p.kind) for p in theirs.parameters.values()]


ROOT_IMPORTS = """
import kernels
from transformers import LlamaConfig, LlamaForCausalLM

import hamner.kernels

assert hasattr(kernels, "get_kernel"), f"`import kernels` is not Hugging Face's package: {kernels.__file__}"
assert hamner.kernels.__name__ == "hamner.kernels"
model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1))
print("ok", model.config.model_type)
"""


@pytest.mark.parametrize("how", ["cwd", "PYTHONPATH"])
def test_the_checkout_root_on_sys_path_shadows_no_installed_package(how, subprocess_env):
    """`python -m pytest`, `python train.py` and `python -m hamner` put the checkout's root on sys.path:
    transformers' Llama (which imports Hugging Face's `kernels`) must still load from there."""
    pytest.importorskip("transformers")
    pytest.importorskip("kernels")
    env = dict(subprocess_env)
    if how == "PYTHONPATH":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", ROOT_IMPORTS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "llama"]
