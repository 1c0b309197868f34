"""The shape-function table: op name -> ShapeFunc(name, mode, fn).

The VM finds shape functions by name (executables store only names and attrs, never code).
`fn(inputs, attrs)` returns one shape tuple per output. Data-independent functions read only
`.shape`/`.ndim` of their inputs; data-dependent ones read values too.

Upper-bound functions (`<op>.upper_bound`) read input shapes only and return two shapes: the
bound of the op's result, and the 1-D storage (in elements of the result's dtype) that holds
the result at byte offset UPPER_BOUND_HEADER after a header. The op's kernel fills the bound and
writes the true shape of its result (int64[rank]) into the header; the VM then views the
result in place (compiler/codegen/emitter.py, `upper_bound_call`): one block, no copy. An
upper-bound function may carry a hook `static_bound(attrs) -> shape or None`: a bound that holds
for every input (e.g. nms's max_output); the compiler then allocates that block statically and
emits no shape function call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MODES = ("data_independent", "data_dependent", "upper_bound")
UPPER_BOUND_HEADER = 64   # bytes before an upper-bound result in its storage (holds its shape)


@dataclass(frozen=True)
class ShapeFunc:
    name: str
    mode: str
    fn: Callable
    tensor_inputs: bool = False   # data-dependent only: the VM passes vm.values.Tensors (which
                                  # convert with np.asarray), not numpy arrays

    def __call__(self, inputs, attrs):
        return self.fn(inputs, attrs)


SHAPE_FUNCS: dict[str, ShapeFunc] = {}


def shape_func(*names: str, mode: str = "data_independent", tensor_inputs: bool = False):
    """Decorator registering `fn` as the shape function of every op in `names`.

    Data-independent and upper-bound functions get the VM's Tensors (they read `.shape` and
    `.ndim`); data-dependent ones get numpy arrays unless `tensor_inputs` says they read
    values through `vm.values.scalar_value` / `shape_vector` (which accept both).
    """
    assert mode in MODES, mode

    def register(fn):
        for name in names:
            assert name not in SHAPE_FUNCS, f"shape function {name} registered twice"
            SHAPE_FUNCS[name] = ShapeFunc(name, mode, fn, tensor_inputs)
        return fn
    return register


def lookup(name: str) -> ShapeFunc:
    try:
        return SHAPE_FUNCS[name]
    except KeyError:
        raise KeyError(f"no shape function for op {name!r}") from None
