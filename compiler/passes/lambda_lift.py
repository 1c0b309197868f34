"""lambda_lift: local functions become global functions; closures become explicit.

Afterwards no non-primitive `Function` is nested in a global function. A local function
`fn (params) { body }` with free variables `c1..ck` becomes a global `@outer_name_N(c1..ck,
params) { body }` with attribute `Closure = k` (`outer` the global function it is nested in,
at any depth: names stay short however deep functions nest; N numbers them apart), and the local function value becomes
`Call(@outer_name_N, [c1..ck], attrs={"closure": 1})` (the code generator emits AllocClosure).
A local function bound by `let %f = fn ...` may call itself: such calls, and calls of `%f` in the
let body, become direct calls `@outer_name_N(c1..ck, args)` (so a loop built by `while_loop`
is a self tail call of a global, which the code generator compiles to a jump).
Requires a typed module; the output is typed.
"""
from __future__ import annotations

from dynvm.compiler.ir import expr as E
from dynvm.compiler.ir.types import FuncType
from dynvm.compiler.ir.walk import Walker, each
from dynvm.compiler.passes.mutator import ExprMutator


def free_vars(node: E.Expr) -> list[E.Var]:
    """Variables used in `node` but not bound inside it, in first-use order."""
    return list(FreeVars().visit(node))


class FreeVars(Walker):
    """The free variables of every node visited, memoised (one walker serves a whole module, so
    finding the captures of nested functions costs one walk, not one per function). A result
    is a dict used as an ordered set; results are shared between nodes, never modified."""

    def default(self, node):
        return {}

    def visit_Var(self, node):
        return {node: None}

    def visit_Call(self, node):
        return _union([(yield node.callee)] + (yield from each(node.args)))

    def visit_Tuple(self, node):
        return _union((yield from each(node.fields)))

    def visit_TupleGetItem(self, node):
        return (yield node.tuple_value)

    def visit_If(self, node):
        return _union((yield from each([node.cond, node.true_branch, node.false_branch])))

    def visit_Function(self, node):
        return _without((yield node.body), node.params)

    def visit_Let(self, node):
        value = yield node.value
        if isinstance(node.value, E.Function):       # a local function may call itself
            value = _without(value, [node.var])
        return _union([value, _without((yield node.body), [node.var])])

    def visit_Match(self, node):
        parts = [(yield node.data)]
        for clause in node.clauses:
            parts.append(_without((yield clause.rhs), _pattern_vars(clause.pattern)))
        return _union(parts)


def _union(parts: list) -> dict:
    nonempty = [p for p in parts if p]
    if len(nonempty) <= 1:
        return nonempty[0] if nonempty else {}
    out: dict = {}
    for p in nonempty:
        out.update(p)
    return out


def _without(found: dict, bound) -> dict:
    if not any(v in found for v in bound):
        return found
    return {v: None for v in found if v not in bound}


def _pattern_vars(pattern):
    if isinstance(pattern, E.PatternVar):
        return [pattern.var]
    if isinstance(pattern, (E.PatternConstructor, E.PatternTuple)):
        return [v for p in pattern.patterns for v in _pattern_vars(p)]
    return []


def _typed(node, t):
    node.checked_type = t
    return node


class _Lifter(ExprMutator):
    def __init__(self, mod, outer: str, new_functions: dict, next_number: dict, free: FreeVars):
        super().__init__()
        self.mod = mod
        self.free = free
        self.outer = outer
        self.new_functions = new_functions
        self.next_number = next_number          # name prefix -> first number not tried yet
        self.direct: dict[E.Var, tuple] = {}   # let-bound local function -> (GlobalVar, captured)

    def fresh_name(self, hint):
        prefix = f"{self.outer}_{hint}"
        n = self.next_number.get(prefix, 0)
        while f"{prefix}{n}" in self.mod.functions or f"{prefix}{n}" in self.new_functions:
            n += 1
        self.next_number[prefix] = n + 1
        return f"{prefix}{n}"

    def visit_Let(self, node):
        """A let chain, walked iteratively; a let-bound local function anywhere in it is
        lifted and its let goes (its calls became direct calls, its other uses closures: see
        visit_Call and visit_Var)."""
        chain = []
        while isinstance(node, E.Let):
            if isinstance(node.value, E.Function) and not node.value.attrs.get("Primitive"):
                gv, captured = yield self.lift(node.value, node.var, node.var.name)
                self.direct[node.var] = (gv, captured)
                chain.append((node, None))
            else:
                chain.append((node, (yield node.value)))
            node = node.body
        body = yield node
        for let, value in reversed(chain):
            if value is None:
                continue
            body = let if value is let.value and body is let.body else \
                _typed(E.Let(let.var, value, body), let.checked_type)
        return body

    def visit_Function(self, node):
        if node.attrs.get("Primitive"):
            return node
        gv, captured = yield self.lift(node, None, "lambda")
        return (yield self.closure(gv, captured, node))

    def visit_Call(self, node):
        if isinstance(node.callee, E.Var) and node.callee in self.direct:
            gv, captured = self.direct[node.callee]
            # the captured variables as this function sees them (inside a lifted function
            # they are its own parameters), then the arguments
            args = (yield from each(captured)) + (yield from each(node.args))
            return _typed(E.Call(gv, args), node.checked_type)
        return (yield from super().visit_Call(node))

    def visit_Var(self, node):
        if node in self.direct:        # the function used as a value: a closure
            gv, captured = self.direct[node]
            return _typed(E.Call(gv, (yield from each(captured)), {"closure": 1}), node.checked_type)
        return node

    def lift(self, func, self_var, hint):
        """Create the global for `func`; returns (GlobalVar, captured outer variables).
        A generator of the walk: the body is lifted by a nested walker."""
        captured = [v for v in self.free.visit(func) if v is not self_var]
        name = self.fresh_name(hint)
        gv = self.mod.get_global_var(name)
        fresh = [_typed(E.Var(v.name, v.checked_type), v.checked_type) for v in captured]
        for v in fresh:
            v.type_annotation = v.checked_type
        inner = _Lifter(self.mod, self.outer, self.new_functions, self.next_number, self.free)
        inner.memo.update({id(old): new for old, new in zip(captured, fresh)})
        if self_var is not None:
            inner.direct[self_var] = (gv, fresh)
        body = yield (inner, func.body)
        params = fresh + func.params
        ret = func.checked_type.ret_type
        lifted = E.Function(params, body, ret, attrs={"Closure": len(captured)})
        lifted.checked_type = FuncType([p.checked_type for p in params], ret)
        self.new_functions[name] = lifted
        return gv, captured

    def closure(self, gv, captured, func):
        args = yield from each(captured)
        return _typed(E.Call(gv, args, {"closure": 1}), func.checked_type)


def lambda_lift(mod):
    """Lift every local function of `mod` to a global (see the module docstring)."""
    new_functions: dict = {}
    next_number: dict = {}
    free = FreeVars()
    functions = {}
    for name, func in mod.functions.items():
        lifter = _Lifter(mod, name, new_functions, next_number, free)
        body = lifter.visit(func.body)
        if body is func.body:
            functions[name] = func
        else:
            out = E.Function(func.params, body, func.ret_type, func.type_params, func.attrs)
            out.checked_type = func.checked_type
            functions[name] = out
    functions.update(new_functions)
    return mod.with_functions(functions)
