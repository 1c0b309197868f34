"""Helpers for kernel tests: fixed-rank broadcast shapes, non-contiguous layouts, a kernel cache.

Kernels are built for fixed ranks, so unlike tests/strategies.py the ranks here are chosen by
the test and only the extents are drawn. Compiling costs ~40 ms per native function, so every
test module builds all its kernels in one KernelBuilder, once (`kernel_table`).
"""
import functools

import numpy as np
from hypothesis import strategies as st

from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import abi, load_kernels
from tests.strategies import laid_out as with_layout  # noqa: F401  (the kernel tests' name)

# vector widths are 4/8/16 lanes: sizes one below/above them hit the loop tails
LAST_DIM = st.sampled_from([0, 1, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33])
OUTER_DIM = st.sampled_from([0, 1, 1, 2, 3, 5])
LAYOUTS = ("c", "c", "step", "transpose", "reversed")


@st.composite
def output_shape(draw, rank):
    """A shape of `rank` with at most 5**3 * 33 elements; 0 and 1 dims included."""
    if rank == 0:
        return ()
    return tuple(draw(OUTER_DIM) for _ in range(rank - 1)) + (draw(LAST_DIM),)


@st.composite
def input_shape(draw, out_shape, rank):
    """The trailing `rank` dims of `out_shape`, each possibly replaced by 1 (broadcast)."""
    tail = out_shape[len(out_shape) - rank:]
    return tuple(1 if draw(st.integers(0, 3)) == 0 else d for d in tail)


def values(rng, shape, dtype, low=-3.0, high=3.0, specials=()):
    """Random values; floats in [low, high), ints small, a few `specials` sprinkled in."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        a = np.array(rng.uniform(low, high, size=shape), dtype)
    elif dtype.kind == "b":
        a = np.array(rng.random(shape) < 0.5)
    else:
        a = np.array(rng.integers(-50, 50, size=shape), dtype)
    if specials and a.size:
        flat = a.reshape(-1)
        picks = rng.integers(0, a.size, size=min(a.size, 3))
        flat[picks] = rng.choice(np.array(specials, dtype=dtype), size=len(picks))
    return a


def empty_output(shape, dtype, layout):
    """An output array with the given layout (a view into a bigger buffer for "step")."""
    return with_layout(np.zeros(shape, dtype), layout)


def kernel_table(specs):
    """Build and load all `specs` ({key: (name, expr, inputs, output)}) in one module."""
    kb = KernelBuilder()
    index = {key: kb.add_elementwise(*spec) for key, spec in specs.items()}
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}


def cached_table(fn):
    """Decorator: a module-level, build-once kernel table."""
    return functools.cache(fn)


def raw_call(kernel, arrays, variant=None, nargs=None):
    """Return code of `S__<variant>` (None: the dispatcher) called directly on `arrays`,
    bypassing every Python-side check (the native code must validate by itself)."""
    tensors, keep = abi.pack(arrays, [abi.dtype_code(a.dtype.name) for a in arrays])
    fn = kernel.variant_function(variant) if variant else abi.kernel_function(kernel.address)
    rc = fn(tensors, len(arrays) if nargs is None else nargs)
    del keep
    return rc
