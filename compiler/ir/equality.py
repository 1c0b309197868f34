"""Structural equality of IR modules, expressions and types, up to renaming of bound variables.

Bound variables (function params, let vars, pattern vars) are related by a one-to-one map set up
at their binding sites; a use matches only the variable its binder was paired with. Free
variables pair up on first sight when their names and annotations agree. GlobalVars, Ops and
Constructors compare by name, constants by dtype, shape and exact values (NaN equals NaN, -0.0
differs from 0.0), attrs by value with lists and tuples alike. `checked_type` is ignored.
Type variables bound by a function's or ADT's type parameters are related the same way.

The walk is iterative (an explicit stack) and remembers every pair of nodes it has compared, so
shared sub-expressions cost once and a 10k-long let chain or a 2000-deep call needs no recursion.
"""
from __future__ import annotations

import math

import numpy as np

from dynvm.compiler.ir.expr import (Call, Clause, Constant, Constructor, Expr, Function, GlobalVar, If, Let,
                              Match, Op, Pattern, PatternConstructor, PatternTuple, PatternVar,
                              PatternWildcard, Tuple, TupleGetItem, TypeData, Var)
from dynvm.compiler.ir.types import FuncType, TensorType, TupleType, Type, TypeCall, TypeVar


def structural_equal(a, b) -> bool:
    """True when `a` and `b` (IRModules, Exprs, Types, TypeData or Patterns) have equal structure."""
    return _Equal().equal(a, b)


class _Equal:
    def __init__(self):
        self.var_fwd: dict[int, Var] = {}
        self.var_bwd: dict[int, Var] = {}
        self.tv_fwd: dict[str, str] = {}
        self.tv_bwd: dict[str, str] = {}
        self.seen: set = set()
        self.stack: list = []
        self.keep: list = []

    def equal(self, a, b) -> bool:
        from dynvm.compiler.ir.module import IRModule
        if isinstance(a, IRModule) or isinstance(b, IRModule):
            return isinstance(a, IRModule) and isinstance(b, IRModule) and self._modules(a, b)
        if isinstance(a, TypeData) or isinstance(b, TypeData):
            return isinstance(a, TypeData) and isinstance(b, TypeData) and self._type_data(a, b)
        if isinstance(a, Pattern) or isinstance(b, Pattern):
            return isinstance(a, Pattern) and isinstance(b, Pattern) and self._pattern(a, b)
        if isinstance(a, Expr) or isinstance(b, Expr):
            self.stack.append((a, b))
            return self._run()
        return self._type(a, b)

    # ---- modules and ADT declarations
    def _modules(self, a, b) -> bool:
        if set(a.type_definitions) != set(b.type_definitions) or set(a.functions) != set(b.functions):
            return False
        for name, td in a.type_definitions.items():
            if not self._type_data(td, b.type_definitions[name]):
                return False
        self.stack.extend((fn, b.functions[name]) for name, fn in a.functions.items())
        return self._run()

    def _type_data(self, a: TypeData, b: TypeData) -> bool:
        if a.name != b.name or len(a.type_vars) != len(b.type_vars):
            return False
        if len(a.constructors) != len(b.constructors):
            return False
        self._bind_type_vars(a.type_vars, b.type_vars)
        for ca, cb in zip(a.constructors, b.constructors):
            if ca.name != cb.name or len(ca.inputs) != len(cb.inputs):
                return False
            if not all(self._type(x, y) for x, y in zip(ca.inputs, cb.inputs)):
                return False
        return True

    # ---- expressions
    def _run(self) -> bool:
        stack, seen = self.stack, self.seen
        while stack:
            a, b = stack.pop()
            key = (id(a), id(b))
            if key in seen:
                continue
            seen.add(key)
            self.keep.append((a, b))
            if type(a) is not type(b) or not self._node(a, b):
                stack.clear()
                return False
        return True

    def _node(self, a, b) -> bool:
        """Compare what is local to the pair; push the child pairs still to compare."""
        push = self.stack.append
        if isinstance(a, Var):
            return self._var_use(a, b)
        if isinstance(a, (GlobalVar, Op, Constructor)):
            return a.name == b.name
        if isinstance(a, Constant):
            return constants_equal(a.data, b.data)
        if isinstance(a, Call):
            if len(a.args) != len(b.args) or not attrs_equal(a.attrs, b.attrs):
                return False
            self.stack.extend(zip(reversed(a.args), reversed(b.args)))
            push((a.callee, b.callee))
            return True
        if isinstance(a, Tuple):
            if len(a.fields) != len(b.fields):
                return False
            self.stack.extend(zip(reversed(a.fields), reversed(b.fields)))
            return True
        if isinstance(a, TupleGetItem):
            push((a.tuple_value, b.tuple_value))
            return a.index == b.index
        if isinstance(a, Let):
            if not self._bind_var(a.var, b.var):
                return False
            push((a.body, b.body))
            push((a.value, b.value))
            return True
        if isinstance(a, If):
            push((a.false_branch, b.false_branch))
            push((a.true_branch, b.true_branch))
            push((a.cond, b.cond))
            return True
        if isinstance(a, Function):
            return self._function(a, b)
        if isinstance(a, Match):
            if a.complete != b.complete or len(a.clauses) != len(b.clauses):
                return False
            self.stack.extend(zip(reversed(a.clauses), reversed(b.clauses)))
            push((a.data, b.data))
            return True
        if isinstance(a, Clause):  # bind the pattern vars just before comparing the body
            push((a.rhs, b.rhs))
            return self._pattern(a.pattern, b.pattern)
        return a is b

    def _function(self, a: Function, b: Function) -> bool:
        if len(a.params) != len(b.params) or len(a.type_params) != len(b.type_params):
            return False
        if not attrs_equal(a.attrs, b.attrs):
            return False
        self._bind_type_vars(a.type_params, b.type_params)
        if not all(self._bind_var(x, y) for x, y in zip(a.params, b.params)):
            return False
        if not self._type(a.ret_type, b.ret_type):
            return False
        self.stack.append((a.body, b.body))
        return True

    def _pattern(self, a, b) -> bool:
        if type(a) is not type(b):
            return False
        if isinstance(a, PatternWildcard):
            return True
        if isinstance(a, PatternVar):
            return self._bind_var(a.var, b.var)
        if isinstance(a, PatternConstructor):
            if a.constructor.name != b.constructor.name:
                return False
        elif not isinstance(a, PatternTuple):
            return a is b
        return len(a.patterns) == len(b.patterns) and all(
            self._pattern(x, y) for x, y in zip(a.patterns, b.patterns))

    # ---- variables
    def _bind_var(self, a: Var, b: Var) -> bool:
        """Pair two binders (a rebinding replaces the earlier pairing)."""
        if not self._type(a.type_annotation, b.type_annotation):
            return False
        old_b = self.var_fwd.get(id(a))
        if old_b is not None:
            self.var_bwd.pop(id(old_b), None)
        old_a = self.var_bwd.get(id(b))
        if old_a is not None:
            self.var_fwd.pop(id(old_a), None)
        self.var_fwd[id(a)] = b
        self.var_bwd[id(b)] = a
        self.keep.append((a, b))
        return True

    def _var_use(self, a: Var, b: Var) -> bool:
        mapped = self.var_fwd.get(id(a))
        if mapped is not None:
            return mapped is b
        if id(b) in self.var_bwd:
            return False
        # free variables: pair them when they look the same
        return a.name == b.name and self._bind_var(a, b)

    # ---- types
    def _bind_type_vars(self, a_vars, b_vars):
        for x, y in zip(a_vars, b_vars):
            self.tv_fwd[x.name] = y.name
            self.tv_bwd[y.name] = x.name

    def _type(self, a, b) -> bool:
        if a is None or b is None:
            return a is None and b is None
        if type(a) is not type(b):
            return False
        if isinstance(a, TensorType):
            return a == b
        if isinstance(a, TypeVar):
            if a.name in self.tv_fwd or b.name in self.tv_bwd:
                return self.tv_fwd.get(a.name) == b.name
            return a.name == b.name
        if isinstance(a, TupleType):
            return len(a.fields) == len(b.fields) and all(
                self._type(x, y) for x, y in zip(a.fields, b.fields))
        if isinstance(a, FuncType):
            return (len(a.arg_types) == len(b.arg_types) and self._type(a.ret_type, b.ret_type)
                    and all(self._type(x, y) for x, y in zip(a.arg_types, b.arg_types)))
        if isinstance(a, TypeCall):
            return a.name == b.name and len(a.args) == len(b.args) and all(
                self._type(x, y) for x, y in zip(a.args, b.args))
        if isinstance(a, Type):
            return a == b
        raise TypeError(f"structural_equal cannot compare {type(a).__name__}")


def constants_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and values; NaN equals NaN; the sign of zero counts."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    ok = nan_a | ((a == b) & (np.signbit(a) == np.signbit(b)))
    return bool(ok.all())


def attrs_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(attr_value_equal(a[k], b[k]) for k in a)


def attr_value_equal(x, y) -> bool:
    """Attr values: lists and tuples alike, NaN equals NaN, bool is not an int, int is not a float."""
    if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
        return (isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y)
                and all(attr_value_equal(p, q) for p, q in zip(x, y)))
    kx, ky = _attr_kind(x), _attr_kind(y)
    if kx != ky:
        return False
    if kx == "float" and math.isnan(x) and math.isnan(y):
        return True
    return x == y


def _attr_kind(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, np.integer)):
        return "int"
    if isinstance(v, (float, np.floating)):
        return "float"
    return type(v).__name__
