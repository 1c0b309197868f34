"""IR expression nodes.

Nodes compare by identity (a DAG may share sub-expressions); `structural_equal` compares by
content. After type inference every node carries `checked_type`.
"""
from __future__ import annotations

import numpy as np

from dynvm.vm.dtypes import dtype_name, np_dtype
from dynvm.vm.errors import DynVMError

from dynvm.compiler.ir import sugar
from dynvm.compiler.ir.types import FuncType, Type, TypeVar


class Expr:
    """Base class of expressions."""

    checked_type: Type | None = None

    def __str__(self):
        from dynvm.compiler.ir.printer import expr_text
        return expr_text(self)

    # operator sugar (compiler/ir/sugar.py); == and != stay identity: expressions are dict keys
    def __add__(self, other): return sugar.call("add", self, other)             # noqa: E704
    def __radd__(self, other): return sugar.call("add", other, self)            # noqa: E704
    def __sub__(self, other): return sugar.call("subtract", self, other)        # noqa: E704
    def __rsub__(self, other): return sugar.call("subtract", other, self)       # noqa: E704
    def __mul__(self, other): return sugar.call("multiply", self, other)        # noqa: E704
    def __rmul__(self, other): return sugar.call("multiply", other, self)       # noqa: E704
    def __truediv__(self, other): return sugar.call("divide", self, other)      # noqa: E704
    def __rtruediv__(self, other): return sugar.call("divide", other, self)     # noqa: E704
    def __pow__(self, other): return sugar.call("power", self, other)           # noqa: E704
    def __rpow__(self, other): return sugar.call("power", other, self)          # noqa: E704
    def __matmul__(self, other): return sugar.call("matmul", self, other)       # noqa: E704
    def __rmatmul__(self, other): return sugar.call("matmul", other, self)      # noqa: E704
    def __lt__(self, other): return sugar.call("less", self, other)             # noqa: E704
    def __gt__(self, other): return sugar.call("greater", self, other)          # noqa: E704
    def __le__(self, other): return sugar.call("less_equal", self, other)       # noqa: E704
    def __ge__(self, other): return sugar.call("greater_equal", self, other)    # noqa: E704

    def __neg__(self):
        return sugar.call("negative", self)

    def __getitem__(self, key):
        return sugar.getitem(self, key)

    def __iter__(self):
        raise TypeError("an IR expression is not iterable (index it: x[0], x[1:3])")

    __hash__ = object.__hash__      # defining comparisons must not make expressions unhashable

    @property
    def shape(self):
        """`x.shape[i]`: the run-time extent of axis i, as an int64 scalar expression."""
        return sugar.Shape(self)

    @property
    def dtype(self) -> str:
        """The dtype of a tensor expression."""
        return sugar.dtype_of(self)


class Var(Expr):
    """A variable (a function parameter, a let binding); `type_annotation` is its declared
    type, required for function parameters the program is entered with."""

    def __init__(self, name: str, type_annotation: Type | None = None):
        self.name = name
        self.type_annotation = type_annotation

    def __repr__(self):
        return f"Var(%{self.name})"


class GlobalVar(Expr):
    """A reference to a global function of the module, by name."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"GlobalVar(@{self.name})"


class Constant(Expr):
    def __init__(self, data):
        data = np.asarray(data)
        dtype_name(data.dtype)  # rejects unsupported dtypes
        self.data = np.asarray(data, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)

    def __repr__(self):
        return f"Constant({self.data.dtype}{list(self.data.shape)})"


class Op(Expr):
    """A reference to a registered primitive operator (see compiler.op)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"Op({self.name})"


class Call(Expr):
    """`callee(args)`: an op (`op.<name>(...)` builds these), a global function
    (`mod.get_global_var(name)`), a local function or a constructor; `attrs` are an op's
    attributes."""

    def __init__(self, callee: Expr, args, attrs: dict | None = None):
        self.callee = callee
        self.args = list(args)
        self.attrs = dict(attrs or {})
        for a in self.args:
            if not isinstance(a, Expr):
                raise DynVMError(f"argument of {callee!r} must be an IR expression, got {type(a).__name__}")


class Tuple(Expr):
    """A tuple of expressions (a function may return several values as one)."""

    def __init__(self, fields):
        self.fields = list(fields)


class TupleGetItem(Expr):
    """Field `index` of a tuple expression (`t[index]` builds it too)."""

    def __init__(self, tuple_value: Expr, index: int):
        self.tuple_value = tuple_value
        self.index = int(index)


class Let(Expr):
    """`let var = value in body`: names a value computed once (the compiler walks long let
    chains iteratively, so a model may be a let chain of any length)."""

    def __init__(self, var: Var, value: Expr, body: Expr):
        self.var = var
        self.value = value
        self.body = body


class If(Expr):
    """`if (cond) { true_branch } else { false_branch }`; `cond` is a 0-d bool tensor computed
    at run time, and both branches have the same type."""

    def __init__(self, cond: Expr, true_branch: Expr, false_branch: Expr):
        self.cond = cond
        self.true_branch = true_branch
        self.false_branch = false_branch


class Function(Expr):
    """`fn (params) -> ret_type { body }`: a module's global function, or a local function
    (a closure over the variables it uses); `ret_type` is required for recursive functions."""

    def __init__(self, params, body: Expr, ret_type: Type | None = None,
                 type_params=(), attrs: dict | None = None):
        self.params = list(params)
        self.body = body
        self.ret_type = ret_type
        self.type_params = list(type_params)
        self.attrs = dict(attrs or {})

    @property
    def func_type(self) -> FuncType:
        return FuncType([p.type_annotation for p in self.params], self.ret_type)


class Constructor(Expr):
    """An ADT constructor; calling it builds a value. `tag` is its index in the TypeData."""

    def __init__(self, name: str, inputs, belongs_to: str):
        self.name = name
        self.inputs = list(inputs)
        self.belongs_to = belongs_to
        self.tag = -1

    def __repr__(self):
        return f"Constructor({self.name})"


class TypeData:
    """An ADT declaration: `type List[a] { Cons(a, List[a]), Nil }`."""

    def __init__(self, name: str, type_vars, constructors):
        self.name = name
        self.type_vars = [v if isinstance(v, TypeVar) else TypeVar(v) for v in type_vars]
        self.constructors = list(constructors)
        for tag, ctor in enumerate(self.constructors):
            ctor.tag = tag
            ctor.belongs_to = name


class Pattern:
    """Base class of match patterns."""


class PatternWildcard(Pattern):
    pass


class PatternVar(Pattern):
    def __init__(self, var: Var):
        self.var = var


class PatternConstructor(Pattern):
    def __init__(self, constructor: Constructor, patterns=()):
        self.constructor = constructor
        self.patterns = list(patterns)


class PatternTuple(Pattern):
    def __init__(self, patterns):
        self.patterns = list(patterns)


class Clause:
    def __init__(self, pattern: Pattern, rhs: Expr):
        self.pattern = pattern
        self.rhs = rhs


class Match(Expr):
    def __init__(self, data: Expr, clauses, complete: bool = True):
        self.data = data
        self.clauses = list(clauses)
        self.complete = complete


def var(name: str, type_annotation: Type | None = None) -> Var:
    """A new variable, e.g. `ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))`."""
    return Var(name, type_annotation)


def const(value, dtype: str | None = None) -> Constant:
    """A constant tensor; Python floats default to float32 and ints to int64."""
    if dtype is None:
        arr = np.asarray(value)
        if arr.dtype == np.float64 and not isinstance(value, np.ndarray):
            arr = arr.astype(np.float32)
        return Constant(arr)
    return Constant(np.asarray(value, dtype=np_dtype(dtype)))
