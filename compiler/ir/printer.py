"""The text format of the IR (Relay-like); `compiler/ir/parser.py` reads it back.

    type List[a] {
      Cons(a, List[a]),
      Nil,
    }

    def @main(%x: Tensor[(?, 4), float32]) -> Tensor[(?, 4), float32] {
      %0 = add(%x, 1f32);
      let %y = exp(%0);
      multiply(%0, %y)
    }

Layout rules (what makes `parse(module_text(m))` structurally equal to `m` and printing stable):
- A non-atomic node used more than once is printed once as a graph binding `%N = expr;` and
  referenced as `%N`, so a DAG prints linearly and parses back as the same DAG (not as a Let).
  Its binding goes into the innermost block enclosing all its uses (the lowest common ancestor of
  the use scopes), before the statement that first uses it. Atomic nodes (vars, globals, ops,
  constructors, scalar constants) are always inline.
- Blocks `{ ... }` are function bodies, if branches, match clause bodies with statements, and a
  Let that is not in the tail of a block (e.g. a call argument): `add({ let %a = ...; %a }, %x)`.
- Var names are unique within a `def` (`%x`, `%x_1`, ...) so the parser needs no shadowing rules.
- A single-use call, tuple or projection nested MAX_INLINE_DEPTH deep inside one statement is
  bound like a shared node (`%N = ...;` before the statement), so lines stay short and printing
  a deep chain is linear in its size (no quadratic string building).
- No recursion on the depth of the IR: the printing methods are generators run on an explicit
  stack (compiler/ir/walk.py), and the analysis walks use explicit stacks.
"""
from __future__ import annotations

import json
import re

import numpy as np

from dynvm.compiler.ir.expr import (Call, Constant, Constructor, Expr, Function, GlobalVar, If, Let,
                              Match, Op, Pattern, PatternConstructor, PatternTuple, PatternVar,
                              PatternWildcard, Tuple, TupleGetItem, Var)
from dynvm.compiler.ir.types import FuncType, TensorType, TupleType, TypeCall, TypeVar, is_any
from dynvm.compiler.ir.walk import run

INDENT = "  "
SCALAR_SUFFIX = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
ATOMIC = (Var, GlobalVar, Op, Constructor)
# Constants with more elements than this are elided in `expr_text` (error messages).
EXPR_TEXT_MAX_ELEMENTS = 16
# How deep single-use calls nest inside one printed statement before one is bound to `%N`.
MAX_INLINE_DEPTH = 32
# Blocks nested deeper than this are indented no further, so the text of deeply nested control
# flow grows linearly, not quadratically (whitespace means nothing to the parser).
MAX_INDENT = 32


def module_text(mod) -> str:
    """The whole module: type definitions, then functions in module order."""
    parts = [type_data_text(td) for td in mod.type_definitions.values()]
    for name, fn in mod.functions.items():
        parts.append(_Printer().def_text(name, fn))
    return "\n\n".join(parts) + ("\n" if parts else "")


def expr_text(expr) -> str:
    """Any expression (or type, or pattern) as text; free variables print by name."""
    if expr is None:
        return "_"
    if isinstance(expr, Pattern):
        return _Printer()._pattern(expr)
    if not isinstance(expr, Expr):
        return type_text(expr) if not hasattr(expr, "constructors") else type_data_text(expr)
    return _Printer(max_elements=EXPR_TEXT_MAX_ELEMENTS).top_text(expr)


# ---------------------------------------------------------------------------------- types

def type_text(t) -> str:
    if t is None:
        return "_"
    if isinstance(t, TensorType):
        dims = ", ".join("?" if is_any(d) else str(d) for d in t.shape)
        return f"Tensor[({dims}{',' if len(t.shape) == 1 else ''}), {t.dtype}]"
    if isinstance(t, TupleType):
        inner = ", ".join(type_text(f) for f in t.fields)
        return f"({inner}{',' if len(t.fields) == 1 else ''})"
    if isinstance(t, FuncType):
        return f"fn ({', '.join(type_text(a) for a in t.arg_types)}) -> {type_text(t.ret_type)}"
    if isinstance(t, TypeVar):
        return t.name
    if isinstance(t, TypeCall):
        if not t.args:
            return t.name
        return f"{t.name}[{', '.join(type_text(a) for a in t.args)}]"
    return str(t)


def type_data_text(td) -> str:
    params = f"[{', '.join(v.name for v in td.type_vars)}]" if td.type_vars else ""
    lines = [f"type {td.name}{params} {{"]
    for ctor in td.constructors:
        args = f"({', '.join(type_text(t) for t in ctor.inputs)})" if ctor.inputs else ""
        lines.append(f"{INDENT}{ctor.name}{args},")
    lines.append("}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ literals

def global_text(name: str) -> str:
    return "@" + (name if _IDENT.match(name) else json.dumps(name))


def _float_text(value, dtype: str) -> str:
    """Shortest text that converts back (through a Python float) to exactly `value`."""
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    if dtype == "float64":
        return repr(float(value))
    short = str(np.float32(value))
    if np.float32(float(short)).tobytes() != np.float32(value).tobytes():
        short = repr(float(value))  # exact: float32 values are float64 values
    if not any(c in short for c in ".en"):
        short += ".0"
    return short


def _element_text(value, dtype: str) -> str:
    if dtype == "bool":
        return "True" if value else "False"
    if dtype.startswith("float"):
        return _float_text(value, dtype)
    return str(int(value))


def scalar_text(data: np.ndarray) -> str:
    dtype = data.dtype.name
    value = data.reshape(()).item() if dtype != "float32" else data.reshape(())[()]
    text = _element_text(value, dtype)
    return text if dtype == "bool" else text + SCALAR_SUFFIX[dtype]


def constant_text(data: np.ndarray, max_elements: int | None = None) -> str:
    if data.ndim == 0:
        return scalar_text(data)
    dtype = data.dtype.name
    shape = ", ".join(str(d) for d in data.shape) + ("," if data.ndim == 1 else "")
    if max_elements is not None and data.size > max_elements:
        return f"const({dtype}, ({shape}), [...])"
    flat = data.reshape(-1)
    values = flat.tolist() if dtype != "float32" else flat
    return f"const({dtype}, ({shape}), [{', '.join([_element_text(v, dtype) for v in values])}])"


def attr_value_text(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _float_text(float(value), "float64")
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join([attr_value_text(v) for v in value]) + "]"
    return repr(value)


def attrs_text(attrs: dict) -> list:
    return [f"{_attr_key(k)}={attr_value_text(v)}" for k, v in attrs.items()]


def _attr_key(key) -> str:
    key = str(key)
    return key if _IDENT.match(key) and key not in ("nan", "inf") else json.dumps(key)


# ------------------------------------------------------------------------------ printer

class _Scope:
    """A block being printed: its statements so far, and its place in the block tree."""

    __slots__ = ("parent", "level", "depth", "lines")

    def __init__(self, parent: "_Scope | None", depth: int | None = None):
        self.parent = parent
        self.level = 0 if parent is None else parent.level + 1   # tree depth
        depth = depth if depth is not None else parent.depth + 1
        self.depth = min(depth, MAX_INDENT)    # indentation levels
        self.lines: list[str] = []


def _lca(a: _Scope, b: _Scope) -> _Scope:
    while a.level > b.level:
        a = a.parent
    while b.level > a.level:
        b = b.parent
    while a is not b:
        a, b = a.parent, b.parent
    return a


def _children(e) -> list:
    """All expression children (uses, not binding occurrences)."""
    if isinstance(e, Call):
        return [e.callee, *e.args]
    if isinstance(e, Tuple):
        return list(e.fields)
    if isinstance(e, TupleGetItem):
        return [e.tuple_value]
    if isinstance(e, Let):
        return [e.value, e.body]
    if isinstance(e, If):
        return [e.cond, e.true_branch, e.false_branch]
    if isinstance(e, Function):
        return [e.body]
    if isinstance(e, Match):
        return [e.data, *[c.rhs for c in e.clauses]]
    return []


def _is_atomic(e) -> bool:
    return isinstance(e, ATOMIC) or (isinstance(e, Constant) and e.data.ndim == 0)


class _Printer:
    def __init__(self, max_elements: int | None = None):
        self.max_elements = max_elements
        self.var_names: dict[int, str] = {}
        self.bound_vars: set[int] = set()
        self.taken: set[str] = set()
        self.refcount: dict[int, int] = {}
        self.place: dict[int, _Scope] = {}
        self.tail: set[int] = set()              # Lets printed as statements of their block
        self.child_scopes: dict[int, dict] = {}  # id(node) -> {slot: _Scope}
        self.bound: dict[int, str] = {}          # id(node) -> "%N"
        self.cut: set[int] = set()               # single-use nodes bound to keep nesting shallow
        self.counter = 0
        self.keep: list = []                     # keeps ids valid

    # ---- entry points
    def def_text(self, name: str, fn: Function) -> str:
        root = _Scope(None, 0)
        self._analyse(fn, root)
        header = "def " + global_text(name) + self._signature(fn)
        return header + " " + run(self._block(self.child_scopes[id(fn)]["body"], fn.body))

    def top_text(self, expr: Expr) -> str:
        root = _Scope(None, 0)
        self._analyse(expr, root)
        final = run(self._fill_block(root, expr))
        return "\n".join(root.lines + [final])

    # ---- analysis: reference counts, tail lets, the block of every node
    def _analyse(self, root: Expr, scope: _Scope):
        order = self._postorder(root)
        self.place[id(root)] = scope
        if isinstance(root, Let):
            self.tail.add(id(root))
        self._cut_deep_nesting(order)
        for node in reversed(order):  # parents before children
            if _is_atomic(node):
                continue
            p = self.place[id(node)]
            for child, use_scope, starts_chain in self._edges(node, p):
                if _is_atomic(child):
                    continue
                cid = id(child)
                self.place[cid] = use_scope if cid not in self.place else _lca(self.place[cid], use_scope)
                if starts_chain and isinstance(child, Let) and self.refcount[cid] == 1:
                    self.tail.add(cid)

    def _cut_deep_nesting(self, order):
        """Mark single-use calls, tuples and projections nested MAX_INLINE_DEPTH deep in one
        statement for binding, so no line nests deeper and printing stays linear."""
        height: dict[int, int] = {}
        for node in order:            # children before parents
            if _is_atomic(node):
                continue
            h = 1 + max((height.get(id(c), 0) for c in self._same_block_children(node)), default=0)
            if h >= MAX_INLINE_DEPTH and isinstance(node, (Call, Tuple, TupleGetItem)) \
                    and self.refcount[id(node)] == 1:
                self.cut.add(id(node))
                h = 0
            height[id(node)] = 0 if self.refcount[id(node)] > 1 else h

    def _postorder(self, root: Expr) -> list:
        order, seen = [], {id(root)}
        self.refcount[id(root)] = 0
        self.keep.append(root)
        stack = [(root, iter(_children(root)))]
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                order.append(node)
                continue
            cid = id(child)
            self.refcount[cid] = self.refcount.get(cid, 0) + 1
            if cid not in seen:
                seen.add(cid)
                self.keep.append(child)
                stack.append((child, iter(_children(child))))
        return order

    def _edges(self, node, p: _Scope):
        """(child, scope of the use, is the child the head of a block) for each child edge."""
        slots = self.child_scopes.setdefault(id(node), {})
        if isinstance(node, Let):
            block = p if id(node) in self.tail else slots.setdefault("block", _Scope(p))
            return [(node.value, block, False), (node.body, block, True)]
        if isinstance(node, If):
            then_s = slots.setdefault("then", _Scope(p))
            else_s = slots.setdefault("else", _Scope(p))
            return [(node.cond, p, False), (node.true_branch, then_s, True),
                    (node.false_branch, else_s, True)]
        if isinstance(node, Function):
            return [(node.body, slots.setdefault("body", _Scope(p)), True)]
        if isinstance(node, Match):
            edges = [(node.data, p, False)]
            for i, clause in enumerate(node.clauses):
                # clause lines are one level in, clause bodies two
                edges.append((clause.rhs, slots.setdefault(i, _Scope(p, p.depth + 2)), True))
            return edges
        return [(c, p, False) for c in _children(node)]

    # ---- blocks
    # The methods that print sub-expressions are generators run by `walk.run`: where they
    # would call each other they `yield` the call, so deep nesting uses no Python stack.
    def _block(self, scope: _Scope, root: Expr):
        return self._braces(scope, (yield self._fill_block(scope, root)))

    def _braces(self, scope: _Scope, final: str) -> str:
        pad = INDENT * scope.depth
        body = "".join(f"{pad}{line}\n" for line in scope.lines)
        return f"{{\n{body}{pad}{final}\n{INDENT * (scope.depth - 1)}}}"

    def _fill_block(self, scope: _Scope, root: Expr) -> str:
        """Append the statements of a block to `scope.lines`; return its final expression."""
        cur = root
        while isinstance(cur, Let) and id(cur) in self.tail:
            yield self._let_statement(scope, cur)
            cur = cur.body
        yield self._emit_shared(cur)
        return (yield self._inline(cur))

    def _let_statement(self, scope: _Scope, let: Let):
        yield self._emit_shared(let.value)
        value = yield self._inline(let.value)
        scope.lines.append(f"let {self._binder(let.var)} = {value};")

    def _emit_shared(self, expr: Expr):
        """Bind the not-yet-bound shared (and cut) nodes under `expr` (same block), children
        first."""
        stack = [(expr, False)]
        while stack:
            node, expanded = stack.pop()
            if _is_atomic(node) or id(node) in self.bound:
                continue
            if expanded:
                if self._must_bind(node):
                    yield self._bind(node)
                continue
            stack.append((node, True))
            for child in reversed(self._same_block_children(node)):
                stack.append((child, False))

    def _same_block_children(self, node) -> list:
        if isinstance(node, (Let, Function)):
            return []  # their parts live in their own blocks
        if isinstance(node, If):
            return [node.cond]
        if isinstance(node, Match):
            return [node.data]
        return _children(node)

    def _must_bind(self, node) -> bool:
        return self.refcount.get(id(node), 0) > 1 or id(node) in self.cut

    def _bind(self, node):
        text = yield self._form(node)
        name = f"%{self.counter}"
        self.counter += 1
        self.place[id(node)].lines.append(f"{name} = {text};")
        self.bound[id(node)] = name
        return name

    # ---- expressions
    def _inline(self, e):
        text = self._atom(e)
        if text is not None:
            return text
        name = self.bound.get(id(e))
        if name is not None:
            return name
        if self._must_bind(e):
            return (yield self._bind(e))
        return (yield self._form(e))

    def _atom(self, e) -> str | None:
        """The text of an atomic node (always inline), else None."""
        if isinstance(e, Var):
            return self._var_ref(e)
        if isinstance(e, GlobalVar):
            return global_text(e.name)
        if isinstance(e, Op):
            return e.name
        if isinstance(e, Constructor):
            return e.name if e.inputs else f"ctor({e.name})"
        if isinstance(e, Constant) and e.data.ndim == 0:
            return scalar_text(e.data)
        return None

    def _form(self, e):
        if isinstance(e, Call):
            return (yield self._call(e))
        if isinstance(e, Tuple):
            fields = yield self._inline_all(e.fields)
            return f"({', '.join(fields)}{',' if len(fields) == 1 else ''})"
        if isinstance(e, TupleGetItem):
            return f"{(yield self._operand(e.tuple_value))}.{e.index}"
        if isinstance(e, Constant):
            return constant_text(e.data, self.max_elements)
        if isinstance(e, If):
            slots = self.child_scopes[id(e)]
            cond = yield self._inline(e.cond)
            then_b = yield self._block(slots["then"], e.true_branch)
            else_b = yield self._block(slots["else"], e.false_branch)
            return f"if ({cond}) {then_b} else {else_b}"
        if isinstance(e, Function):
            signature = self._signature(e)
            return f"fn {signature} {(yield self._block(self.child_scopes[id(e)]['body'], e.body))}"
        if isinstance(e, Let):  # a let chain that is not the tail of a block: `{ let ...; e }`
            scope = self.child_scopes[id(e)]["block"]
            yield self._let_statement(scope, e)
            return (yield self._block(scope, e.body))
        if isinstance(e, Match):
            return (yield self._match(e))
        return f"<unknown {type(e).__name__}>"

    def _inline_all(self, exprs):
        texts = []
        for e in exprs:
            texts.append((yield self._inline(e)))
        return texts

    def _operand(self, e):
        """A callee or tuple operand, parenthesised when it is a block-like form."""
        text = yield self._inline(e)
        if isinstance(e, (If, Match, Function, Let)) and id(e) not in self.bound:
            return f"({text})"
        return text

    def _call(self, e: Call) -> str:
        callee = e.callee
        if (isinstance(callee, Constructor) and not e.args and not e.attrs):
            return callee.name
        head = callee.name if isinstance(callee, Constructor) else (yield self._operand(callee))
        args = (yield self._inline_all(e.args)) + attrs_text(e.attrs)
        return f"{head}({', '.join(args)})"

    def _match(self, e: Match):
        slots = self.child_scopes[id(e)]
        data = yield self._inline(e.data)
        depth = self.place[id(e)].depth
        pad = INDENT * (depth + 1)
        lines = [f"match{'' if e.complete else '?'} ({data}) {{"]
        for i, clause in enumerate(e.clauses):
            pattern = self._pattern(clause.pattern)
            scope = slots[i]
            final = yield self._fill_block(scope, clause.rhs)
            if scope.lines or "\n" in final:
                final = self._braces(scope, final)
            lines.append(f"{pad}{pattern} => {final},")
        lines.append(f"{INDENT * depth}}}")
        return "\n".join(lines)

    def _pattern(self, p) -> str:
        if isinstance(p, PatternWildcard):
            return "_"
        if isinstance(p, PatternVar):
            return self._binder(p.var)
        if isinstance(p, PatternConstructor):
            if not p.patterns:
                return p.constructor.name
            return f"{p.constructor.name}({', '.join([self._pattern(q) for q in p.patterns])})"
        if isinstance(p, PatternTuple):
            inner = [self._pattern(q) for q in p.patterns]
            return f"({', '.join(inner)}{',' if len(inner) == 1 else ''})"
        return f"<unknown pattern {type(p).__name__}>"

    def _signature(self, fn: Function) -> str:
        tparams = f"[{', '.join(v.name for v in fn.type_params)}]" if fn.type_params else ""
        params = [self._binder(p) for p in fn.params] + attrs_text(fn.attrs)
        ret = f" -> {type_text(fn.ret_type)}" if fn.ret_type is not None else ""
        return f"{tparams}({', '.join(params)}){ret}"

    # ---- variables
    def _binder(self, v: Var) -> str:
        if id(v) in self.bound_vars:
            # the same Var bound twice: the parser will make two vars, so name them apart now
            self.var_names[id(v)] = self._fresh(v.name)
        self.bound_vars.add(id(v))
        name = self._var_ref(v)
        if v.type_annotation is not None:
            return f"{name}: {type_text(v.type_annotation)}"
        return name

    def _var_ref(self, v: Var) -> str:
        name = self.var_names.get(id(v))
        if name is None:
            name = self._fresh(v.name)
            self.var_names[id(v)] = name
            self.keep.append(v)
        return name

    def _fresh(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", str(hint))
        if not base or base[0].isdigit():
            base = "v" + base
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return "%" + name
