"""Shared pieces of the op type relations: argument checks, `Any`-aware broadcasting and axes.

Rule for `Any` dims: a dim that depends on an `Any` becomes `Any`; a check that needs the real
value is deferred to the run-time shape function (which raises ShapeError). Every error found
here is a TypeInferenceError; the inference driver appends the offending expression.
"""
from __future__ import annotations

from dynvm.compiler.ir.types import Any, TensorType, TupleType, is_any
from dynvm.vm.errors import TypeInferenceError

FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")
NUMERIC_DTYPES = FLOAT_DTYPES + INT_DTYPES


def fail(message: str):
    raise TypeInferenceError(message)


def tensor_arg(op: str, ty, what: str = "argument") -> TensorType:
    """`ty` as a TensorType, or a TypeInferenceError saying which op wanted a tensor."""
    if not isinstance(ty, TensorType):
        fail(f"{op}: {what} must be a tensor, got {ty}")
    return ty


def check_arity(op: str, arg_types, n: int):
    if len(arg_types) != n:
        fail(f"{op} takes {n} argument(s), got {len(arg_types)}")


def check_dtype_in(op: str, ty: TensorType, allowed, what: str = "input"):
    if ty.dtype not in allowed:
        fail(f"{op} needs {what} of dtype {' or '.join(allowed)}, got {ty.dtype}")


def same_dtype(op: str, types) -> str:
    """The common dtype of `types`; a mismatch names every dtype involved."""
    dtypes = [t.dtype for t in types]
    if len(set(dtypes)) != 1:
        fail(f"{op} needs operands of the same dtype, got {' and '.join(dtypes)}")
    return dtypes[0]


def broadcast_dim(op: str, a, b):
    """One output dim of numpy broadcasting, `Any`-aware (Any with k != 1 -> k, checked later)."""
    if is_any(a) and is_any(b):
        return Any()
    if is_any(a):
        return Any() if b == 1 else b
    if is_any(b):
        return Any() if a == 1 else a
    if a == b or b == 1:
        return a
    if a == 1:
        return b
    fail(f"{op}: cannot broadcast dims {a} and {b}")


def broadcast_shapes(op: str, *shapes) -> tuple:
    """numpy broadcasting of several shapes (right-aligned)."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for shape in shapes:
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        out = [broadcast_dim(op, a, b) for a, b in zip(out, padded)]
    return tuple(out)


def unify_dim(op: str, a, b, what: str = "dims"):
    """Two dims that must be equal: Any with k -> k (checked at run time), k1 != k2 -> error."""
    if is_any(a):
        return b
    if is_any(b) or a == b:
        return a
    fail(f"{op}: {what} must match, got {a} and {b}")


def normalize_axis(op: str, axis, rank: int, what: str = "axis") -> int:
    """An axis in [-rank, rank) as a non-negative index."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        fail(f"{op}: {what} must be an int, got {axis!r}")
    if not -rank <= axis < rank:
        fail(f"{op}: {what} {axis} is out of range for rank {rank}")
    return axis % rank if rank else axis


def normalize_axes(op: str, axes, rank: int) -> list:
    """`None` -> all axes; an int or a list -> sorted non-negative axes without duplicates."""
    if axes is None:
        return list(range(rank))
    if isinstance(axes, int) and not isinstance(axes, bool):
        axes = [axes]
    out = [normalize_axis(op, a, rank) for a in axes]
    if len(set(out)) != len(out):
        fail(f"{op}: repeated axis in {list(axes)}")
    return sorted(out)


def shape_vector_arg(op: str, ty, what: str = "shape") -> int:
    """A 1-D integer shape tensor with a static length; returns that length (the output rank)."""
    ty = tensor_arg(op, ty, what)
    if ty.rank != 1:
        fail(f"{op}: {what} must be a 1-D tensor, got rank {ty.rank}")
    check_dtype_in(op, ty, INT_DTYPES, what)
    if is_any(ty.shape[0]):
        fail(f"{op}: {what} tensor needs a static length (it fixes the output rank)")
    return ty.shape[0]


def scalar_arg(op: str, ty, what: str, allowed=NUMERIC_DTYPES) -> TensorType:
    ty = tensor_arg(op, ty, what)
    if ty.rank != 0:
        fail(f"{op}: {what} must be a scalar (rank 0), got {ty}")
    check_dtype_in(op, ty, allowed, what)
    return ty


def int_list(op: str, value, what: str) -> list:
    """An attribute that must be a list (or tuple) of ints."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        fail(f"{op}: {what} must be a list of ints, got {value!r}")
    return list(value)


def tuple_of_tensors(op: str, ty) -> list:
    if not isinstance(ty, TupleType):
        fail(f"{op}: expects a tuple of tensors, got {ty}")
    return [tensor_arg(op, f, "tuple field") for f in ty.fields]
