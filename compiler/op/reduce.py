"""Reductions: sum, max, mean, argmax over `axis` (None = all, an int, or a list); and the
running reductions of `cumulative` (sums or products along one axis).

`exclude=True` reduces over every axis NOT listed. Reducing an empty axis with max/argmax has no
answer: the run-time shape function and the kernel raise ShapeError (a static 0 dim is left to
run time as well, so the error is the same whether the shape is known or not).
"""
from __future__ import annotations

from dynvm.compiler.ir.types import TensorType
from dynvm.compiler.op.builders import positional
from dynvm.compiler.op.registry import OpDef, get_op, register
from dynvm.shape_funcs.reduce import CUMULATIVE_MODES
from dynvm.compiler.op.type_rels import (NUMERIC_DTYPES, check_arity, check_dtype_in, fail,
                                         normalize_axes, tensor_arg)

REDUCE_ATTRS = {"axis": None, "keepdims": False, "exclude": False}


def reduced_axes(op: str, rank: int, attrs) -> list:
    """The axes actually reduced, after `exclude`."""
    axes = normalize_axes(op, attrs["axis"], rank)
    if attrs["exclude"]:
        axes = [a for a in range(rank) if a not in axes]
    return axes


def reduce_rel(name, out_dtype=None):
    def rel(arg_types, attrs):
        check_arity(name, arg_types, 1)
        x = tensor_arg(name, arg_types[0])
        check_dtype_in(name, x, NUMERIC_DTYPES)
        axes = reduced_axes(name, x.rank, attrs)
        if attrs["keepdims"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return TensorType(shape, out_dtype or x.dtype)
    return rel


DOCS = {
    "sum": "sum of elements",
    "max": "largest element (an empty reduction is a ShapeError)",
    "mean": "arithmetic mean (integer inputs: truncated toward zero)",
    "argmax": "int64 index of the first largest element within the reduced axes, flattened "
              "in row-major order (an empty reduction is a ShapeError)",
}


def _register_all():
    for name, meaning in DOCS.items():
        register(OpDef(name, ("x",), reduce_rel(name, "int64" if name == "argmax" else None),
                       attrs=dict(REDUCE_ATTRS), pattern="reduce",
                       family="reduce",
                       doc=f"{name}(x, axis=None, keepdims=False, exclude=False): {meaning}."))
        get_op(name).make = positional(name)


_register_all()



def cumulative_rel(arg_types, attrs):
    check_arity("cumulative", arg_types, 1)
    x = tensor_arg("cumulative", arg_types[0])
    check_dtype_in("cumulative", x, NUMERIC_DTYPES)
    flags = [attrs["exclusive"], attrs["reverse"]]
    if x.rank == 0 or attrs["mode"] not in CUMULATIVE_MODES or type(attrs["axis"]) is not int \
            or not all(isinstance(f, bool) for f in flags):
        fail(f"cumulative: needs a tensor of rank >= 1, an int axis, a mode of {CUMULATIVE_MODES} "
             f"and bool exclusive/reverse, got {x} and {attrs}")
    normalize_axes("cumulative", attrs["axis"], x.rank)
    return x


register(OpDef("cumulative", ("x",), cumulative_rel,
               attrs={"axis": 0, "mode": "sum", "exclusive": False, "reverse": False},
               pattern="opaque",
               doc="cumulative(x, axis=0, mode='sum', exclusive=False, reverse=False): the running "
                   "sum (or product) along `axis`: element u combines the elements up to u "
                   "(before u when exclusive; from the end when reverse), in that order."))
