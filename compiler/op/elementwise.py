"""Elementwise ops: unary math, binary broadcasting arithmetic and comparisons, where, cast.

All are compiled kernels: `expr` gives the node of the kernel expression language
(`kernels/`), so a chain of these ops fuses into one loop nest.
"""
from __future__ import annotations

from dynvm.compiler.ir.types import TensorType
from dynvm.compiler.op.builders import positional
from dynvm.compiler.op.registry import OpDef, REQUIRED, register
from dynvm.compiler.op.type_rels import (FLOAT_DTYPES, NUMERIC_DTYPES, broadcast_shapes, check_arity,
                                   check_dtype_in, fail, same_dtype, tensor_arg)
from dynvm.vm.dtypes import DTYPES

UNARY = {
    "negative": (NUMERIC_DTYPES, "-x"),
    "exp": (FLOAT_DTYPES, "e**x"),
    "log": (FLOAT_DTYPES, "natural logarithm"),
    "sqrt": (FLOAT_DTYPES, "square root"),
    "tanh": (FLOAT_DTYPES, "hyperbolic tangent"),
    "sigmoid": (FLOAT_DTYPES, "1 / (1 + e**-x)"),
    "relu": (NUMERIC_DTYPES, "max(x, 0)"),
}

# name -> (allowed input dtypes, output dtype or None for "same as inputs", meaning)
BINARY = {
    "add": (NUMERIC_DTYPES, None, "x + y"),
    "subtract": (NUMERIC_DTYPES, None, "x - y"),
    "multiply": (NUMERIC_DTYPES, None, "x * y"),
    "divide": (NUMERIC_DTYPES, None, "x / y (integers truncate toward zero; x / 0 == 0)"),
    "power": (NUMERIC_DTYPES, None, "x ** y"),
    "maximum": (NUMERIC_DTYPES, None, "the larger of x and y"),
    "minimum": (NUMERIC_DTYPES, None, "the smaller of x and y"),
    "fmod": (NUMERIC_DTYPES, None, "the remainder of x / y truncated toward zero, with x's sign "
                                   "(C's fmod, exact; integers: x fmod 0 == 0)"),
    "less": (tuple(DTYPES), "bool", "x < y"),
    "greater": (tuple(DTYPES), "bool", "x > y"),
    "less_equal": (tuple(DTYPES), "bool", "x <= y"),
    "greater_equal": (tuple(DTYPES), "bool", "x >= y"),
    "equal": (tuple(DTYPES), "bool", "x == y"),
    "logical_and": (("bool",), "bool", "x and y"),
}


def unary_rel(name, allowed):
    def rel(arg_types, attrs):
        check_arity(name, arg_types, 1)
        x = tensor_arg(name, arg_types[0])
        check_dtype_in(name, x, allowed)
        return x
    return rel


def binary_rel(name, allowed, out_dtype):
    def rel(arg_types, attrs):
        check_arity(name, arg_types, 2)
        x, y = (tensor_arg(name, t) for t in arg_types)
        dtype = same_dtype(name, [x, y])
        check_dtype_in(name, x, allowed, "operands")
        return TensorType(broadcast_shapes(name, x.shape, y.shape), out_dtype or dtype)
    return rel


def where_rel(arg_types, attrs):
    check_arity("where", arg_types, 3)
    cond, x, y = (tensor_arg("where", t) for t in arg_types)
    check_dtype_in("where", cond, ("bool",), "condition")
    dtype = same_dtype("where", [x, y])
    return TensorType(broadcast_shapes("where", cond.shape, x.shape, y.shape), dtype)


def cast_rel(arg_types, attrs):
    check_arity("cast", arg_types, 1)
    x = tensor_arg("cast", arg_types[0])
    if attrs["dtype"] not in DTYPES:
        fail(f"cast: unsupported dtype {attrs['dtype']!r}")
    return TensorType(x.shape, attrs["dtype"])


def _register_all():
    for name, (allowed, meaning) in UNARY.items():
        register(OpDef(name, ("x",), unary_rel(name, allowed),
                       pattern="elemwise", expr=lambda args, attrs, n=name: [n, *args],
                       doc=f"{name}(x): elementwise {meaning}; dtypes {', '.join(allowed)}."))
    for name, (allowed, out, meaning) in BINARY.items():
        register(OpDef(name, ("x", "y"), binary_rel(name, allowed, out),
                       pattern="broadcast", expr=lambda args, attrs, n=name: [n, *args],
                       doc=f"{name}(x, y): {meaning}, numpy broadcasting; operands share a dtype"
                           f"{'; result bool' if out else ''}."))
    register(OpDef("where", ("condition", "x", "y"), where_rel,
                   pattern="broadcast", expr=lambda args, attrs: ["where", *args],
                   doc="where(condition, x, y): x where condition (bool) else y; all three broadcast."))
    register(OpDef("cast", ("x",), cast_rel, attrs={"dtype": REQUIRED},
                   pattern="elemwise", expr=lambda args, attrs: ["cast", args[0], attrs["dtype"]],
                   doc="cast(x, dtype): convert elements to `dtype` (floats truncate toward zero)."))
    from dynvm.compiler.op.registry import get_op
    get_op("cast").make = positional("cast")


_register_all()
