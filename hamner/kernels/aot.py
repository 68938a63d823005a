"""Ahead-of-time compilation of the Triton kernels for named GPUs, on a machine without one.

Two steps in two processes (the interpreter patches `triton.language`, so the compiler cannot run
in a process that interprets):

1. `record_launches()`, under TRITON_INTERPRET=1: every kernel launch is recorded as a
   `LaunchSpec` — argument types, constexpr values, the divisibility attributes and the launch
   options (num_warps, ...) — derived by Triton's own JIT binder for a CUDA target, so exactly what
   a GPU run with the same tensors would compile. Integer arguments are specialised by value
   (1, multiples of 16), so record at shapes whose row counts behave like the real ones.
2. `compile_spec(spec, capability)`, without the interpreter: `triton.compile` for
   `GPUTarget("cuda", capability, 32)` (PTX, then the bundled ptxas to a cubin), then ptxas -v on
   the PTX for the registers and spill bytes it reports.

`python -m hamner.kernels.aot SPECS.json` compiles every recorded specialisation for sm_80, sm_86,
sm_89 and sm_90 (in parallel, one process per core), prints one line per kernel and target, and
exits 1 on any error or spill. Each verdict is cached next to Triton's own cache, keyed by the
specialisation, the target, the Triton version and the kernel's source, so a rerun only compiles
what changed.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TARGETS: tuple[int, ...] = (80, 86, 89, 90)  # A100, A10/RTX 30, L4/RTX 40, H100/H200
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


@dataclass(frozen=True)
class LaunchSpec:
    """One kernel specialisation: what Triton's JIT compiles for a launch."""

    module: str
    kernel: str
    signature: dict[str, str]  # argument -> Triton type ("*bf16", "i32", "constexpr", ...)
    constexprs: list[list[Any]]  # [argument index, value]
    attrs: list[list[Any]]  # [argument index, attribute string ("D": divisible by 16)]
    options: dict[str, Any]  # launch options (num_warps, num_stages, ...)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        names = list(self.signature)
        values = ", ".join(f"{names[i]}={v}" for i, v in self.constexprs)
        pointers = sorted({t for t in self.signature.values() if t.startswith("*")})
        return f"{self.kernel}[{values}; {' '.join(pointers)}; {self.options}]"


@contextlib.contextmanager
def record_launches() -> Iterator[dict[str, LaunchSpec]]:
    """Within the block (TRITON_INTERPRET=1 only), record every kernel launch's specialisation.

    Yields a dict (key -> LaunchSpec) that fills as kernels launch; the launches still run."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", TARGETS[0], 32))
    binders: dict[Any, tuple[list[str], Any]] = {}
    recorded: dict[str, LaunchSpec] = {}
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if self.fn not in binders:
            jit = JITFunction(self.fn)
            binders[self.fn] = ([p.name for p in jit.params],
                                create_function_from_signature(jit.signature, jit.params, backend))
        names, binder = binders[self.fn]
        bound, specialization, _ = binder(*args, **kwargs)
        values = list(bound.values())
        spec = LaunchSpec(
            module=self.fn.__module__, kernel=self.fn.__name__,
            signature={name: kind for name, (kind, _) in zip(names, specialization)},
            constexprs=[[i, _plain(values[i])] for i, (kind, _) in enumerate(specialization) if kind == "constexpr"],
            attrs=[[i, attr] for i, (kind, attr) in enumerate(specialization)
                   if kind != "constexpr" and isinstance(attr, str) and attr],
            options={k: v for k, v in kwargs.items() if k not in names},
        )
        recorded.setdefault(spec.key(), spec)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield recorded
    finally:
        InterpretedFunction.run = original


def _plain(value: Any) -> Any:
    """A constexpr value as JSON: numbers and flags as they are, anything else by its repr."""
    return value if isinstance(value, (bool, int, float, str)) or value is None else repr(value)


@dataclass(frozen=True)
class CompileResult:
    """One specialisation compiled for one target; `error` is None when it compiled."""

    kernel: str
    capability: int
    registers: int | None
    spill_bytes: int | None
    shared_bytes: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.spill_bytes


def compile_spec(spec: LaunchSpec, capability: int) -> CompileResult:
    """Compile `spec` for sm_<capability> (no GPU needed) and read its registers and spills from ptxas;
    a verdict cached for the same specialisation, target, Triton and kernel source is reused."""
    import triton

    try:
        kernel = getattr(importlib.import_module(spec.module), spec.kernel)
    except (ImportError, AttributeError) as exc:
        return CompileResult(spec.kernel, capability, None, None, None, f"{type(exc).__name__}: {exc}")
    key = hashlib.sha256(json.dumps([spec.key(), capability, triton.__version__, kernel.cache_key]).encode())
    cached = Path(triton.knobs.cache.dir) / "hamner-aot" / f"{key.hexdigest()}.json"
    if cached.is_file():
        return CompileResult(**json.loads(cached.read_text()))
    result = _compile(kernel, spec, capability)
    if result.error is None:  # errors are never cached: a fixed environment must retry them
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(asdict(result)))
        partial.replace(cached)
    return result


def _compile(kernel: Any, spec: LaunchSpec, capability: int) -> CompileResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    try:
        source = ASTSource(kernel, dict(spec.signature), {(i,): v for i, v in spec.constexprs},
                           {(i,): backend.parse_attr(a) for i, a in spec.attrs})
        compiled = triton.compile(source, target=target, options=backend.parse_options(dict(spec.options)).__dict__)
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp) / "kernel.ptx"
            ptx.write_text(compiled.asm["ptx"])
            log = subprocess.run([get_ptxas(capability).path, "-v", f"--gpu-name={sm_arch_from_capability(capability)}",
                                  str(ptx), "-o", str(Path(tmp) / "kernel.cubin")],
                                 capture_output=True, text=True, check=True).stderr
    except Exception as exc:  # any compiler failure is the finding; report it, do not stop the sweep
        first = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {first[0] if first else ''}"
        return CompileResult(spec.kernel, capability, None, None, None, error)
    spills = [int(a) + int(b) for a, b in _SPILLS.findall(log)]
    registers = [int(r) for r in _REGISTERS.findall(log)]
    return CompileResult(spec.kernel, capability, max(registers, default=None), sum(spills),
                         compiled.metadata.shared, None)


def save_specs(specs: list[LaunchSpec], path: Path) -> None:
    """Write recorded specialisations as JSON (for `python -m hamner.kernels.aot`)."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps([asdict(s) for s in specs], indent=1))
    partial.replace(path)


def load_specs(path: Path) -> list[LaunchSpec]:
    """Read specialisations written by `save_specs`."""
    return [LaunchSpec(**s) for s in json.loads(path.read_text())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hamner.kernels.aot",
                                description="Compile recorded Triton kernel specialisations for GPU targets "
                                            "ahead of time (no GPU needed); exit 1 on any error or spill.")
    p.add_argument("specs", type=Path, help="JSON written by hamner.kernels.aot.save_specs")
    p.add_argument("--targets", default=",".join(map(str, TARGETS)),
                   help=f"compute capabilities, comma-separated (default {','.join(map(str, TARGETS))})")
    args = p.parse_args(argv)
    try:
        specs = load_specs(args.specs)
        targets = [int(t) for t in args.targets.split(",")]
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not specs or not targets:
        print(f"error: {args.specs} holds no specialisations (or --targets is empty)", file=sys.stderr)
        return 2
    jobs = [(spec, capability) for spec in specs for capability in targets]
    failures = 0
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        for (spec, capability), result in zip(jobs, pool.map(compile_spec, *zip(*jobs))):
            failures += not result.ok
            detail = result.error or (f"{result.registers} registers, {result.spill_bytes} spill bytes, "
                                      f"{result.shared_bytes} shared bytes")
            print(f"{'ok  ' if result.ok else 'FAIL'} sm_{capability} {spec.describe()}: {detail}", flush=True)
    print(f"{len(specs)} specialisations x {len(targets)} targets: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
