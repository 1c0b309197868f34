"""ExprMutator: the one generic rebuild-bottom-up traversal the passes share.

`visit(expr)` returns the rewritten expression; unchanged sub-trees are returned as they are
(no copy), shared sub-expressions are rewritten once (memoised by identity). It is a `Walker`
(compiler/ir/walk.py): the `visit_*` methods are generators that `yield` a child to get its
rewritten form, so neither deep nesting nor long let chains use Python stack. A pass overrides
`rewrite_call` (or a `visit_*`) to change what it cares about.
"""
from __future__ import annotations

from dynvm.compiler.ir import expr as E
from dynvm.compiler.ir.walk import Walker, each


class ExprMutator(Walker):
    def visit_Call(self, node):
        args = yield from each(node.args)
        callee = yield node.callee
        if callee is node.callee and all(a is b for a, b in zip(args, node.args)):
            return self.rewrite_call(node)
        return self.rewrite_call(_typed(E.Call(callee, args, node.attrs), node))

    def rewrite_call(self, call):
        return call

    def visit_Tuple(self, node):
        fields = yield from each(node.fields)
        if all(a is b for a, b in zip(fields, node.fields)):
            return node
        return _typed(E.Tuple(fields), node)

    def visit_TupleGetItem(self, node):
        value = yield node.tuple_value
        return node if value is node.tuple_value else _typed(E.TupleGetItem(value, node.index), node)

    def visit_If(self, node):
        old = (node.cond, node.true_branch, node.false_branch)
        parts = yield from each(old)
        if all(a is b for a, b in zip(parts, old)):
            return node
        return _typed(E.If(*parts), node)

    def visit_Let(self, node):
        chain = []
        while isinstance(node, E.Let):
            chain.append((node, (yield node.value)))
            node = node.body
        body = yield node
        for let, value in reversed(chain):
            if value is not let.value or body is not let.body:
                body = _typed(E.Let(let.var, value, body), let)
            else:
                body = let
        return body

    def visit_Match(self, node):
        data = yield node.data
        rhs = yield from each([c.rhs for c in node.clauses])
        if data is node.data and all(a is c.rhs for a, c in zip(rhs, node.clauses)):
            return node
        clauses = [E.Clause(c.pattern, r) for c, r in zip(node.clauses, rhs)]
        return _typed(E.Match(data, clauses, node.complete), node)

    def visit_Function(self, node):
        body = yield node.body
        if body is node.body:
            return node
        func = E.Function(node.params, body, node.ret_type, node.type_params, node.attrs)
        return _typed(func, node)


def _typed(new, old):
    new.checked_type = old.checked_type
    return new



def map_functions(mod, rewrite):
    """A new module whose functions are `rewrite(function)`."""
    return mod.with_functions({name: rewrite(f) for name, f in mod.functions.items()})
