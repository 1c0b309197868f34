"""Helpers shared by the shape functions, and the integer interface they are written against.

One definition, two back ends. Every shape function is plain Python over dims: on the Python
VM the dims are ints and the interface below is ordinary Python arithmetic; traced for a call
site (kernels/shape.py) the dims whose extents are not known statically are symbolic values
(subclasses of `Symbolic`) whose operators emit LLVM IR, so the same function becomes a native
kernel. Ranks and attrs are static either way: loops over dims unroll while tracing.

The rules a shape function follows so that both back ends run it:
- dims combine with `+ - * // %` (Python's floor rules; the native side emits them exactly)
  and compare with `< <= > >= == !=`; conditions combine with `&`, `|` and `not_`, never with
  `and`, `or`, `not`, `if` or `min`/`max`, which need a concrete truth value: a symbolic one
  there raises TraceError while tracing;
- a value-dependent failure is `if fails(ok): raise ShapeError(...)` (the native back end
  returns an error code when `ok` does not hold and never runs the raise; the caller re-runs
  the Python back end for the message);
- a value-dependent choice is `select(c, a, b)`, `smin`, `smax`; `same_dims` compares shapes;
  `slice_length(n, sl)` is len(range(n)[sl]);
- input values are read through `shape_vector`, `scalar_input` (and `cast_scalar`),
  `count_nonzero` and `count_distinct`.
"""
from __future__ import annotations

import math

import numpy as np

from dynvm.vm.errors import ShapeError
from dynvm.vm.values import ShapeTensor, Tensor, scalar_value

FLOAT_DTYPES = ("float32", "float64")


class TraceError(TypeError):
    """A symbolic dim was used where Python needs a concrete value (an `if`, `and`, `int()`,
    an index): the shape function must go through the interface instead."""


class Symbolic:
    """Base of the symbolic values of the native back end (kernels/shape.py). The interface
    functions dispatch on it; Python refuses to take its truth value, index with it or
    convert it to a number."""

    __slots__ = ()

    def _concrete(self, *_):
        raise TraceError("a symbolic dim is used where Python needs a concrete value (if, and, "
                         "or, not, min, max, int, an index): use the shape-function interface "
                         "(fails, select, smin, smax, not_, same_dims)")

    __bool__ = __index__ = __int__ = __float__ = _concrete


class TracedInput:
    """Base of the traced input tensors of the native back end (kernels/shape.py): `shape`,
    `ndim`, `dtype` (a name), and typed element loads."""

    __slots__ = ()


# ---------------------------------------------------------------------------------------------
# the integer interface


def fails(ok) -> bool:
    """`if fails(ok): raise ShapeError(...)`: True when `ok` does not hold. For a symbolic `ok`
    the native function returns ERR_SHAPE when it does not hold, and this returns False."""
    if ok is True:
        return False
    if ok is False:
        return True
    if isinstance(ok, Symbolic):
        return ok.fails()
    return not ok


def select(cond, a, b):
    """`a if cond else b` for a condition that may be symbolic."""
    if cond is True:
        return a
    if cond is False:
        return b
    if isinstance(cond, Symbolic):
        return cond.select(a, b)
    return a if cond else b


def smin(a, b):
    if type(a) is int and type(b) is int:
        return a if a < b else b
    return select(a < b, a, b)


def smax(a, b):
    if type(a) is int and type(b) is int:
        return a if a > b else b
    return select(a > b, a, b)


def not_(cond):
    if isinstance(cond, Symbolic):
        return cond.not_()
    return not cond


def all_of(conds):
    ok = True
    for c in conds:
        ok = ok & c
    return ok


def same_dims(xs, ys):
    """tuple(xs) == tuple(ys): a bool, or symbolic when it depends on symbolic dims (the same
    symbolic dim object compares equal to itself statically)."""
    xs, ys = tuple(xs), tuple(ys)
    try:
        return xs == ys
    except TraceError:
        return all_of(x == y for x, y in zip(xs, ys))


def slice_length(n, sl: slice):
    """len(range(n)[sl]): Python's clamping rules (a zero step is checked before)."""
    try:
        return len(range(n)[sl])
    except TraceError:
        pass
    start, stop, step = sl.start, sl.stop, 1 if sl.step is None else sl.step
    up = step > 0

    def bound(v, default_up, default_down):
        if v is None:
            return select(up, default_up, default_down)
        v = smax(smin(v, n), -n - 1)           # first clamp: v + n below cannot overflow
        v = select(v < 0, v + n, v)
        return select(up, smax(smin(v, n), 0), smax(smin(v, n - 1), -1))

    b, e = bound(start, 0, n - 1), bound(stop, n, -1)
    count = select(up, (e - b + step - 1) // smax(step, 1), (b - e - step - 1) // smax(-step, 1))
    return smax(count, 0)


# ---------------------------------------------------------------------------------------------
# reading input values (data-dependent shape functions)


def shape_vector(op: str, arr) -> tuple:
    """The values of a 1-D integer shape tensor as a tuple of ints (numpy array, VM Tensor or
    a traced input, whose length must then be static)."""
    if type(arr) is ShapeTensor:
        return arr.dims
    if isinstance(arr, TracedInput):
        if arr.ndim != 1 or arr.dtype not in ("int32", "int64"):
            raise ShapeError(f"{op}: shape must be a 1-D integer tensor, got {arr.dtype} "
                             f"{arr.shape}")
        return arr.vector()
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ShapeError(f"{op}: shape must be a 1-D integer tensor, got {arr.dtype} {arr.shape}")
    return tuple(int(d) for d in arr)


def element_count(arr):
    """The number of elements of an input (numpy array, VM Tensor or traced input)."""
    if isinstance(arr, Tensor):
        return math.prod(arr.meta[1])
    if isinstance(arr, TracedInput):
        return math.prod(arr.shape)
    return np.asarray(arr).size


def scalar_input(arr):
    """The value of a one-element input (checked before) in its own dtype: a Python number, or
    a symbolic one when traced."""
    v = scalar_value(arr)
    if v is not None:
        return v
    if isinstance(arr, TracedInput):
        return arr.scalar()
    return np.asarray(arr).reshape(-1)[0].item()


def cast_scalar(v, arr, dtype: str):
    """numpy's astype of a scalar read from `arr` to `dtype`, as a Python (or symbolic) number."""
    src = arr.meta[0] if isinstance(arr, Tensor) else str(arr.dtype)
    if src == dtype:
        return v
    if isinstance(v, Symbolic):
        return v.cast(src, dtype)
    return np.array(v, src).astype(dtype).item()


def is_finite(v):
    try:
        return math.isfinite(v)
    except TraceError:
        return v.is_finite()


def ceil_int(x):
    """math.ceil of a float."""
    return x.ceil() if isinstance(x, Symbolic) else math.ceil(x)


def count_nonzero(arr):
    if isinstance(arr, TracedInput):
        return arr.count_nonzero()
    return int(np.count_nonzero(arr))


def count_distinct(arr):
    """len(np.unique(arr)) of a 1-D input: NaNs count as one value, -0.0 equals 0.0."""
    if isinstance(arr, TracedInput):
        return arr.count_distinct()
    return len(np.unique(arr))


# ---------------------------------------------------------------------------------------------
# helpers


def normalize_axis(op: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of range for rank {rank}")
    return axis % rank


def broadcast(op: str, *shapes) -> tuple:
    """numpy broadcasting of several shapes."""
    first = tuple(shapes[0]) if shapes else ()
    if all(same_dims(s, first) is True for s in shapes[1:]):   # the common case, checked cheaply
        return first
    rank = max(len(s) for s in shapes)
    out = [1] * (rank - len(first)) + list(first)
    for shape in shapes[1:]:
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        for i, (a, b) in enumerate(zip(out, padded)):
            if a is b:          # the very same dim (int or symbolic): nothing to check
                continue
            if fails((a == b) | (a == 1) | (b == 1)):
                pretty = " and ".join(str(tuple(s)) for s in shapes)
                raise ShapeError(f"{op}: cannot broadcast shapes {pretty} (dims {a} vs {b})")
            out[i] = select(a == 1, b, a)
    return tuple(out)


def infer_reshape(op: str, in_shape, newshape) -> tuple:
    """Relay reshape rules on concrete dims: 0 copies the input dim, one -1 is inferred.

    Copied dims cancel out of the element count (as in the type relation), so `(3, 0)` with
    `[-1, 0]` is `(3, 0)` rather than ambiguous. The values of `newshape` may be symbolic
    (dyn.reshape): which rule applies to a dim is then a `select`, and the checks run in the
    order of the dims, so the first failing dim names the error either way.
    """
    newshape = list(newshape)
    rank = len(in_shape)
    out, infers = [], []
    total = math.prod(in_shape[len(newshape):])   # element counts, copied dims left out
    known = 1
    first = True                                  # no -1 so far
    for i, d in enumerate(newshape):
        copy, infer = d == 0, d == -1
        if i >= rank and fails(d != 0):
            raise ShapeError(f"{op}: newshape {newshape} copies dim {i} of a rank {rank} input")
        if fails(first | (d != -1)):
            raise ShapeError(f"{op}: newshape {newshape} has more than one -1")
        if fails(d >= -1):
            raise ShapeError(f"{op}: newshape {newshape} has invalid value {d}")
        first = first & (d != -1)
        dim = select(infer, 1, d)
        known = known * select(copy, 1, dim)
        if i < rank:
            total = total * select(copy, 1, in_shape[i])
            dim = select(copy, in_shape[i], dim)
        out.append(dim)
        infers.append(infer)
    if fails(first | ((known != 0) & (total % smax(known, 1) == 0))):
        raise ShapeError(f"{op}: cannot reshape {tuple(in_shape)} into {newshape}: "
                         f"no size fits the -1")
    if fails(not_(first) | (total == known)):
        raise ShapeError(f"{op}: cannot reshape {tuple(in_shape)} ({math.prod(in_shape)} "
                         f"elements) into {newshape}")
    if first is True:
        return tuple(out)
    size = total // smax(known, 1)
    return tuple(select(f, size, d) for f, d in zip(infers, out))


def check_dims(op: str, shape) -> tuple:
    if fails(all_of(d >= 0 for d in shape)):
        raise ShapeError(f"{op}: negative dim in shape {tuple(shape)}")
    return tuple(shape)
