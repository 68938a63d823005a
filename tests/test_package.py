"""The package's shape: every subpackage installs, no import cycle anywhere, and every kernel op has its
reference's signature."""
import ast
import inspect
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

import hamner.kernels as kernels
from hamner.kernels import reference
from hamner.kernels.dispatch import TRITON_INSTALLED

ROOT = Path(__file__).resolve().parent.parent
# Installed package name -> folder in the checkout (hamner/kernels and hamner/data are symlinks to these).
PACKAGES = {"hamner": ROOT / "hamner", "hamner.kernels": ROOT / "kernels", "hamner.data": ROOT / "data"}


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its __init__.py)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "hamner" and f"hamner.{parts[0]}" in PACKAGES:
                continue  # the symlinks hamner/kernels and hamner/data: walked under their own names
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules `path` imports anywhere: at the top, inside functions, under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module a.b.c that we do not hold
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_pyproject_installs_every_subpackage():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    installed = set(find_packages(str(ROOT), include=find["include"]))
    subpackages = {"hamner." + p.parent.name for p in (ROOT / "hamner").glob("*/__init__.py")}
    assert {"hamner.mixers", "hamner.mlps", "hamner.eval", "hamner.kernels", "hamner.data"} <= subpackages
    assert subpackages <= installed


def test_the_package_has_no_import_cycle():
    modules = package_modules()
    assert {"hamner.cli", "hamner.kernels.reference", "hamner.data.prepare", "hamner.eval.cli"} <= set(modules)
    graph = {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}
    assert "hamner.decoding_cache" in graph["hamner.model"] and "hamner.hf" in graph["hamner.checkpoint"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_function_level_imports_count(tmp_path):
    (tmp_path / "x.py").write_text("def f():\n    from hamner import y\n")
    assert imported_modules("hamner.x", tmp_path / "x.py", {"hamner", "hamner.x", "hamner.y"}) == {"hamner.y"}


NOT_OPS = {"reference", "attention_backend", "linear_attention_backend"}  # which backend runs, not ops


@pytest.mark.skipif(not TRITON_INSTALLED, reason="without triton every op is its reference")
@pytest.mark.parametrize("op", sorted(set(kernels.__all__) - NOT_OPS))
def test_each_op_takes_what_its_reference_takes(op):
    ours, theirs = inspect.signature(getattr(kernels, op)), inspect.signature(getattr(reference, op))
    assert [(p.name, p.kind) for p in ours.parameters.values()] == \
        [(p.name, p.kind) for p in theirs.parameters.values()]
