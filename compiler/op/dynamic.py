"""Ops whose output shape depends on input values: arange, argwhere and the `dyn.` forms of
reshape / zeros / ones / full that take their shape as a 1-D int tensor. Their shape functions
are data-dependent: the output rank is static (the shape tensor's static length), dims are Any.
"""
from __future__ import annotations

from dynvm.compiler.ir.types import Any, TensorType
from dynvm.compiler.op.builders import positional, scalars_as_consts
from dynvm.compiler.op.registry import OpDef, get_op, register
from dynvm.compiler.op.type_rels import (NUMERIC_DTYPES, check_arity, fail, normalize_axis,
                                   scalar_arg, shape_vector_arg, tensor_arg)
from dynvm.vm.dtypes import DTYPES


def _dtype_attr(op, dtype):
    if dtype not in DTYPES:
        fail(f"{op}: unsupported dtype {dtype!r}")
    return dtype


def arange_rel(arg_types, attrs):
    check_arity("arange", arg_types, 3)
    for t, what in zip(arg_types, ("start", "stop", "step")):
        scalar_arg("arange", t, what)
    dtype = _dtype_attr("arange", attrs["dtype"])
    if dtype == "bool":
        fail("arange: dtype must be numeric, got bool")
    return TensorType((Any(),), dtype)


def argwhere_rel(arg_types, attrs):
    check_arity("argwhere", arg_types, 1)
    cond = tensor_arg("argwhere", arg_types[0], "condition")
    return TensorType((Any(), cond.rank), "int64")


def dyn_reshape_rel(arg_types, attrs):
    check_arity("dyn.reshape", arg_types, 2)
    x = tensor_arg("dyn.reshape", arg_types[0])
    rank = shape_vector_arg("dyn.reshape", arg_types[1], "newshape")
    return TensorType((Any(),) * rank, x.dtype)


def dyn_fill_rel(name):
    def rel(arg_types, attrs):
        check_arity(name, arg_types, 1)
        rank = shape_vector_arg(name, arg_types[0])
        return TensorType((Any(),) * rank, _dtype_attr(name, attrs["dtype"]))
    return rel


def dyn_full_rel(arg_types, attrs):
    check_arity("dyn.full", arg_types, 2)
    fill = scalar_arg("dyn.full", arg_types[0], "fill_value", tuple(DTYPES))
    rank = shape_vector_arg("dyn.full", arg_types[1])
    return TensorType((Any(),) * rank, _dtype_attr("dyn.full", attrs["dtype"] or fill.dtype))


def dyn_slice_axes(op, axes, rank) -> list:
    """The sliced axes of a dyn.strided_slice (all of them when `axes` is None), normalised."""
    if axes is None:
        return list(range(rank))
    if not isinstance(axes, (list, tuple)):
        fail(f"{op}: axes must be a list of ints, got {axes!r}")
    out = [normalize_axis(op, a, rank) for a in axes]
    if len(set(out)) != len(out):
        fail(f"{op}: repeated axis in {list(axes)}")
    return out


def dyn_strided_slice_rel(arg_types, attrs):
    op = "dyn.strided_slice"
    check_arity(op, arg_types, 4)
    x = tensor_arg(op, arg_types[0])
    axes = dyn_slice_axes(op, attrs["axes"], x.rank)
    for t, what in zip(arg_types[1:], ("begin", "end", "strides")):
        n = shape_vector_arg(op, t, what)
        if n != len(axes):
            fail(f"{op}: {what} has length {n}, expected {len(axes)} "
                 f"({'the rank of x' if attrs['axes'] is None else 'len(axes)'})")
    shape = tuple(Any() if d in axes else dim for d, dim in enumerate(x.shape))
    return TensorType(shape, x.dtype)


def _register_all():
    dd = dict(shape_mode="data_dependent", pattern="opaque")
    register(OpDef("arange", ("start", "stop", "step"), arange_rel, attrs={"dtype": "float32"},
                   **dd,
                   doc="arange(start, stop, step, dtype='float32'): start, start+step, ... below "
                       "stop; scalar tensor arguments (or Python numbers) are cast to dtype first. "
                       f"Argument dtypes: {', '.join(NUMERIC_DTYPES)}."))
    register(OpDef("argwhere", ("condition",), argwhere_rel, **dd,
                   doc="argwhere(condition): (n, rank) int64 indices of the non-zero elements, "
                       "in row-major order."))
    register(OpDef("dyn.reshape", ("x", "newshape"), dyn_reshape_rel, kernel="vm",
                   lowering="reshape", shape_mode="data_dependent", pattern="injective",
                   doc="dyn.reshape(x, newshape): reshape by a 1-D int shape tensor (0 copies "
                       "the input dim, -1 is inferred)."))
    for name in ("zeros", "ones"):
        register(OpDef(f"dyn.{name}", ("shape",), dyn_fill_rel(f"dyn.{name}"),
                       attrs={"dtype": "float32"}, family="fill", **dd,
                       doc=f"dyn.{name}(shape, dtype='float32'): {name} with a run-time shape."))
    register(OpDef("dyn.full", ("fill_value", "shape"), dyn_full_rel, attrs={"dtype": None},
                   family="fill", **dd,
                   doc="dyn.full(fill_value, shape, dtype=None): full with a run-time shape."))
    register(OpDef("dyn.strided_slice", ("x", "begin", "end", "strides"), dyn_strided_slice_rel,
                   attrs={"axes": None}, family="strided_slice",
                   shape_mode="data_dependent", pattern="opaque",
                   doc="dyn.strided_slice(x, begin, end, strides, axes=None): x[b:e:s] per axis "
                       "with begin/end/strides 1-D int tensors of length rank(x) (or len(axes)); "
                       "the strided_slice rules (negative indices count from the end, "
                       "out-of-range bounds clamp, stride 0 is an error)."))
    get_op("arange").make = positional("arange", scalars_as_consts)


_register_all()
