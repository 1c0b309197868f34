"""Kernel families: the extension point for compiled kernels.

A family (elementwise, reduce, matmul, softmax, ...) lives in its own module `kernels/<name>.py`
and registers one `Family` object. The builder asks it to emit LLVM IR for a kernel spec; the
runtime knows nothing family-specific.

Native layout of one kernel with base symbol S (all with the kernel ABI
`int32_t f(DLTensor *args, int32_t nargs)`):
  - `S__<variant>` for every variant (a test hook can call each one directly),
  - `S` itself, the dispatcher: validates the arguments, picks a variant from the run-time
    shapes, stores the variant's index in the global `i32 S__variant` and tail-calls it.
The VM only calls `S`; the profiler reads `S__variant` after the call to report which ran.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vm.errors import KernelError


@dataclass(frozen=True)
class Family:
    """name: the family's name in kernel specs (`entry["op"]`).
    check(spec, inputs, outputs): build-time validation of a spec against its signature
        (inputs/outputs are [[dtype, rank]...]); raises KernelError.
    emit(module, symbol, spec, inputs, outputs) -> [variant names]: adds the variant functions
        and the dispatcher (see the module docstring) to the llvmlite `module`.
    """

    name: str
    check: Callable
    emit: Callable


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise KernelError(f"kernel family {family.name} registered twice")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KernelError(f"unknown kernel family {name!r}; known: {sorted(FAMILIES)}") from None
