"""Kernel families: the extension point for compiled kernels.

A family (elementwise, reduce, matmul, softmax, ...) lives in its own module `kernels/<name>.py`
and registers one `Family` object when imported; `FAMILY_MODULES` lists them, and `get_family`
imports them on first use, so only the code generator (never the runtime) loads them. The builder asks it to emit LLVM IR for a kernel spec; the
runtime knows nothing family-specific.

Native layout of one kernel with base symbol S (all with the kernel ABI
`int32_t f(DLTensor *args, int32_t nargs)`):
  - `S__<variant>` for every variant (a test hook can call each one directly); each variant
    validates its arguments itself, so calling one directly never crashes either,
  - `S` itself, the dispatcher: validates the arguments, picks a variant from the run-time
    shapes, stores the variant's index in the global `i32 S__variant` and calls it.
The VM only calls `S`; the profiler reads `S__variant` after the call to report which ran.
Every family writes its dispatcher with `emit_dispatcher` (an ordered list of conditions, the
last variant being the fallback), so the layout above is produced in exactly one place.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from dynvm.kernels.abi import variant_global, variant_symbol  # noqa: F401  (the native layout)
from dynvm.vm.errors import KernelError


@dataclass(frozen=True)
class Family:
    """name: the family's name in kernel specs (`entry["op"]`).
    check(spec, inputs, outputs): build-time validation of a spec against its signature
        (inputs/outputs are [[dtype, rank]...]); raises KernelError.
    emit(module, symbol, spec, inputs, outputs) -> [variant names]: adds the variant functions
        `symbol__<variant>` and the dispatcher `symbol` (use `emit_dispatcher`) to the
        llvmlite `module`. The first variant listed is the one the dispatcher tries first.
    calls(spec) -> [(symbol, nargs)...]: for a family whose kernels call other kernels of the
        module (the native loop), every call its spec names; the builder accepts only
        dispatchers of kernels added before, with their argument count.
    """

    name: str
    check: Callable
    emit: Callable
    calls: Callable | None = None


FAMILIES: dict[str, Family] = {}
FAMILY_MODULES = ("elementwise", "matmul", "conv2d", "transform", "dynamic", "reduce", "softmax",
                  "sort", "vision", "window", "loop", "shape", "update", "cumulative",
                  "recurrent")


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise KernelError(f"kernel family {family.name} registered twice")
    FAMILIES[family.name] = family
    return family


@functools.cache
def import_families() -> None:
    """Import every family module (each registers itself); done once, at build time only."""
    for module in FAMILY_MODULES:
        importlib.import_module(f"dynvm.kernels.{module}")


def get_family(name: str) -> Family:
    import_families()
    try:
        return FAMILIES[name]
    except KeyError:
        raise KernelError(f"unknown kernel family {name!r}; known: {sorted(FAMILIES)}") from None


# ---------------------------------------------------------------------------------------------
# native layout helpers shared by every family


def emit_dispatcher(module, symbol, sig, choices, prepare=None):
    """Emit the dispatcher `symbol` of a kernel whose variants are already (or later) defined.

    sig: [(dtype, rank)...] of inputs then outputs, validated by the shared prologue (count,
        rank, dtype, NULL pointers, negative extents -> error code) before any choice is made.
    choices: [(variant_name, condition)...] evaluated in order; `condition(b, ctx)` returns an
        i1 value, the first true one wins; the last entry's condition must be None (fallback).
    prepare(b, arrays) -> ctx: optional, computes values the conditions share (it runs once,
        before the first condition; default ctx is the prologue's `arrays` list of
        (data, extents, strides) per argument).
    Returns the list of variant names in index order (what `S__variant` holds).
    """
    from dynvm.kernels.llvm_util import I32, const, new_function, prologue

    if not choices or choices[-1][1] is not None or any(c is None for _, c in choices[:-1]):
        raise KernelError(f"{symbol}: the dispatcher needs conditions for all but the last variant")
    chosen = ir.GlobalVariable(module, I32, name=variant_global(symbol))
    chosen.initializer = const(I32, -1)
    fn, b = new_function(module, symbol)
    arrays = prologue(b, *fn.args, sig)
    ctx = prepare(b, arrays) if prepare is not None else arrays
    fnty = fn.function_type
    for index, (name, condition) in enumerate(choices):
        target = _declare(module, variant_symbol(symbol, name), fnty)
        run = fn.append_basic_block(f"run.{name}")
        if condition is not None:
            nxt = fn.append_basic_block(f"not.{name}")
            b.cbranch(condition(b, ctx), run, nxt)
        else:
            b.branch(run)
            nxt = None
        b.position_at_end(run)
        b.store(const(I32, index), chosen)
        b.ret(b.call(target, list(fn.args), tail=True))
        if nxt is not None:
            b.position_at_end(nxt)
    return [name for name, _ in choices]


def _declare(module, name, fnty):
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, fnty, name=name)


@functools.cache
def vector_bits() -> int:
    """SIMD register width of the build target, from the features llvmlite reports."""
    from dynvm.kernels import codelib

    features = set(codelib.host_target()["features"].split(","))
    if "+avx512f" in features:
        return 512
    if "+avx" in features:
        return 256
    return 128


def vector_lanes(bits_per_element: int) -> int:
    """Lanes per SIMD register for elements of `bits_per_element` bits (bool counts as 8)."""
    return max(1, vector_bits() // max(8, bits_per_element))
