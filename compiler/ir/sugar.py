"""Expression sugar: Python operators, indexing and Python values on IR expressions.

    x + y, x - 1.0, 2 * x, x / y, x ** 2, -x, x @ w, x < y, x > y, x <= y, x >= y
    x[0] (a tuple field or a row), x[1:3], x[:, 2], x.shape[0], x.dtype

Every form builds the same IR the `op` functions build (the text format and printer are
unchanged). A Python number, bool or numpy array next to an expression becomes a constant of
the expression's dtype for elementwise ops (`x * 2.0` on an int64 tensor is an error, not a
silent truncation); elsewhere it keeps numpy's dtype (ints int64, floats float32). `==` and `!=`
keep meaning identity: expressions are dictionary keys; use `op.equal` for the elementwise test.
"""
from __future__ import annotations

import numpy as np

from dynvm.vm.dtypes import dtype_name
from dynvm.vm.errors import DynVMError

# ops whose Python-value operands take the dtype of their expression operands
ELEMENTWISE_PATTERNS = ("elemwise", "broadcast")
PYTHON_SCALARS = (bool, int, float, np.generic, np.ndarray)


def call(name: str, *args):
    """`op.<name>(*args)`: the body of every operator method."""
    from dynvm.compiler import op
    return getattr(op, name)(*args)


def wrap_operands(opdef, args) -> list:
    """The arguments of an op call with Python values made constants (see the module docstring)."""
    from dynvm.compiler.ir.expr import Expr, const
    if all(isinstance(a, Expr) for a in args):
        return list(args)
    dtype = None
    if opdef.pattern in ELEMENTWISE_PATTERNS:
        dtype = next((dtype_of(a) for a in args if isinstance(a, Expr)), None)
    out = []
    for a in args:
        if isinstance(a, PYTHON_SCALARS):
            a = const(a) if dtype is None else _const_as(a, dtype, opdef.name)
        out.append(a)
    return out


def _const_as(value, dtype: str, op_name: str):
    from dynvm.compiler.ir.expr import const
    natural = np.asarray(value)
    converted = natural.astype(dtype)
    lossless = converted.astype(natural.dtype) == natural if natural.dtype.kind in "biuf" else False
    if not np.all(lossless):
        raise DynVMError(f"{op_name}: {value!r} cannot be a {dtype} constant without changing it "
                         f"(the other operand is {dtype}); write the constant with that dtype")
    return const(converted)


def dtype_of(expr) -> str:
    """The dtype of a tensor expression: read off where the expression states it (a typed
    variable, a constant, a cast, an elementwise op of those), else by type inference."""
    from dynvm.compiler.ir import expr as E
    from dynvm.compiler.ir.types import TensorType
    node = expr
    while True:
        t = node.checked_type or (node.type_annotation if isinstance(node, E.Var) else None)
        if isinstance(t, TensorType):
            return t.dtype
        if isinstance(node, E.Constant):
            return dtype_name(node.data.dtype)
        if not (isinstance(node, E.Call) and isinstance(node.callee, E.Op)):
            break
        name = node.callee.name
        if name == "cast":
            return node.attrs["dtype"]
        out_dtype = _binary_out_dtype(name)     # comparisons: bool
        if out_dtype is not None:
            return out_dtype
        if _pattern(name) not in ELEMENTWISE_PATTERNS or name == "where":
            break
        node = node.args[0]
    from dynvm.compiler.typing import infer_expr_type
    t = infer_expr_type(expr)
    if not isinstance(t, TensorType):
        raise DynVMError(f"expected a tensor expression, got one of type {t}")
    return t.dtype


def _binary_out_dtype(name):
    """The fixed result dtype of a binary elementwise op (the op table's), else None."""
    from dynvm.compiler.op.elementwise import BINARY
    return BINARY[name][1] if name in BINARY else None


def _pattern(name):
    from dynvm.compiler.op.registry import get_op
    return get_op(name).pattern


def getitem(expr, key):
    """`expr[key]`: a tuple's field for a tuple expression and an int; else tensor indexing:
    ints take (and drop the axis; negative ones count from the end), slices slice, over the
    leading axes."""
    from dynvm.compiler import op
    from dynvm.compiler.ir import expr as E
    from dynvm.compiler.ir.types import TupleType
    if isinstance(key, int) and (isinstance(expr, E.Tuple) or isinstance(_type_of(expr), TupleType)):
        return E.TupleGetItem(expr, key)
    keys = key if isinstance(key, tuple) else (key,)
    slices = [k if isinstance(k, slice) else slice(None) for k in keys]
    out = expr
    if any(s != slice(None) for s in slices):
        out = op.strided_slice(out, begin=[s.start for s in slices], end=[s.stop for s in slices],
                               strides=[1 if s.step is None else s.step for s in slices])
    for axis in reversed([a for a, k in enumerate(keys) if not isinstance(k, slice)]):
        k = keys[axis]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise DynVMError(f"an IR tensor is indexed with ints and slices, got {k!r}")
        out = op.take(out, E.const(np.array(k, np.int64)), axis=axis, mode="wrap")
    return out


def _type_of(expr):
    from dynvm.compiler.ir import expr as E
    if isinstance(expr, E.Var) and expr.type_annotation is not None:
        return expr.type_annotation
    if expr.checked_type is not None:
        return expr.checked_type
    from dynvm.compiler.typing import infer_expr_type
    return infer_expr_type(expr)


class Shape:
    """`x.shape`: `x.shape[i]` is the run-time extent of axis i (an int64 scalar expression;
    negative i counts from the end); `len(x.shape)` the rank."""

    def __init__(self, expr):
        self.expr = expr

    def __getitem__(self, axis):
        from dynvm.compiler import op
        from dynvm.compiler.ir.expr import const
        return op.take(op.shape_of(self.expr), const(np.array(axis, np.int64)), mode="wrap")

    def __len__(self):
        return _type_of(self.expr).rank
