"""fuse_ops: group primitive op calls into fused kernels.

Afterwards every group of two or more fusable calls is a call of a *primitive function*
(`Function(..., attrs={"Primitive": 1, "Name": ...})`) whose body uses only its parameters,
op calls and scalar constants; the code generator compiles each such call into ONE kernel:
- chains of elementwise/broadcast ops (ops with a kernel `expr`) become one elementwise kernel,
  with scalar constants folded into the kernel (so even a single op with a scalar constant
  becomes a primitive), and single-use transposes feeding the chain read through permuted
  strides instead of being copied (injective fusion; reshape/expand_dims/squeeze need no kernel
  at all: they are zero-copy ReshapeTensor views);
- an elementwise epilogue (bias add, relu, tanh, ...) on top of an `out_elemwise_fusable` op
  (dense, matmul, batch_matmul, conv2d) with a compiled kernel fuses into that op's kernel, when
  it keeps the op's output type (same shape and dtype).
A call is absorbed into its consumer only when the consumer is its single user (otherwise its
value is needed elsewhere and must be materialised), and a group takes at most MAX_GROUP_OPS
ops (a longer chain becomes several kernels). Requires typed input (checked_type set);
output is typed too.
"""
from __future__ import annotations

from dynvm.compiler.ir import expr as E
from dynvm.compiler.ir.types import FuncType
from dynvm.compiler.op.registry import get_op
from dynvm.compiler.ir.walk import each, run
from dynvm.compiler.passes.mutator import ExprMutator, map_functions


# The most ops one fused group takes: a longer chain is cut into several kernels, so a kernel's
# expression (compiled and serialised recursively) stays small however long the chain is.
MAX_GROUP_OPS = 64


def _opdef(node):
    if isinstance(node, E.Call) and isinstance(node.callee, E.Op):
        return get_op(node.callee.name)
    return None


def is_elementwise(node) -> bool:
    opdef = _opdef(node)
    return opdef is not None and opdef.expr is not None


def is_transpose(node) -> bool:
    """A transpose the elementwise kernel can read through permuted strides (no copy)."""
    opdef = _opdef(node)
    return opdef is not None and opdef.name == "transpose"


def is_anchor(node) -> bool:
    opdef = _opdef(node)
    return (opdef is not None and opdef.pattern == "out_elemwise_fusable"
            and opdef.kernel == "compiled")


def use_counts(root) -> dict[int, int]:
    """How many parent edges point at each node (shared nodes are visited once)."""
    counts: dict[int, int] = {}
    seen = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for child in _children(node):
            counts[id(child)] = counts.get(id(child), 0) + 1
            stack.append(child)
    return counts


def _children(node):
    if isinstance(node, E.Call):
        return ([node.callee] if isinstance(node.callee, E.Function) else []) + node.args
    if isinstance(node, E.Tuple):
        return node.fields
    if isinstance(node, E.TupleGetItem):
        return [node.tuple_value]
    if isinstance(node, E.If):
        return [node.cond, node.true_branch, node.false_branch]
    if isinstance(node, E.Let):
        return [node.value, node.body]
    if isinstance(node, E.Function):
        return [node.body]
    if isinstance(node, E.Match):
        return [node.data] + [clause.rhs for clause in node.clauses]
    return []


class _Group:
    """The calls of one fused group and its external inputs (the primitive's parameters)."""

    def __init__(self, counts):
        self.counts = counts
        self.inputs: list[E.Expr] = []       # original leaf expressions, in parameter order
        self.params: dict = {}               # id(leaf), or ("T", id(transpose)) -> parameter
        self.size = 0
        self.inlined_constants = 0
        self.transposes = 0

    def param(self, leaf, key=None):
        key = id(leaf) if key is None else key
        if key not in self.params:
            var = E.Var(f"p{len(self.inputs)}", leaf.checked_type)
            var.checked_type = leaf.checked_type
            self.params[key] = var
            self.inputs.append(leaf)
        return self.params[key]

    def transposed(self, node):
        """A single-use transpose feeding the group: its input becomes a parameter read
        through permuted strides (the transpose stays in the body to say so)."""
        self.transposes += 1
        call = E.Call(node.callee, [self.param(node.args[0], ("T", id(node)))], node.attrs)
        call.checked_type = node.checked_type
        return call

    def build(self, node):
        """Copy the group rooted at `node` with leaves replaced by parameters (a generator
        for `walk.run`: the group may be deep). At most MAX_GROUP_OPS ops join a group."""
        self.size += 1
        args = []
        for arg in node.args:
            if (is_elementwise(arg) and self.counts.get(id(arg), 0) == 1
                    and self.size < MAX_GROUP_OPS):
                args.append((yield self.build(arg)))
            elif is_transpose(arg) and self.counts.get(id(arg), 0) == 1:
                args.append(self.transposed(arg))
            elif isinstance(arg, E.Constant) and arg.data.ndim == 0:
                self.inlined_constants += 1
                args.append(arg)
            else:
                args.append(self.param(arg))
        call = E.Call(node.callee, args, node.attrs)
        call.checked_type = node.checked_type
        return call


class _Fuser(ExprMutator):
    def __init__(self, counts):
        super().__init__()
        self.counts = counts
        self.fused = 0

    def visit_Call(self, node):
        if not is_elementwise(node):
            return super().visit_Call(node)
        group = _Group(self.counts)
        body = run(group.build(node))
        anchor = None if group.transposes else self.epilogue_anchor(group, node)
        if group.size < 2 and anchor is None and not (group.inlined_constants or group.transposes):
            return super().visit_Call(node)
        if anchor is not None:
            return self.primitive_with_anchor(group, body, anchor)
        return self.primitive_call(group, body)

    def epilogue_anchor(self, group, root):
        """The single-use dense/matmul-like input of the group that its epilogue can absorb."""
        candidates = [x for x in group.inputs if is_anchor(x) and self.counts.get(id(x)) == 1]
        for anchor in candidates:
            if anchor.checked_type == root.checked_type:
                return anchor
        return None

    def primitive_with_anchor(self, group, body, anchor):
        """Parameters: the anchor's inputs first, then the epilogue's other inputs."""
        anchor_params = []
        for arg in anchor.args:
            p = E.Var(f"a{len(anchor_params)}", arg.checked_type)
            p.checked_type = arg.checked_type
            anchor_params.append(p)
        inner = E.Call(anchor.callee, anchor_params, anchor.attrs)
        inner.checked_type = anchor.checked_type
        body = _replace_var(body, group.params[id(anchor)], inner)
        extra = [x for x in group.inputs if x is not anchor]
        params = anchor_params + [group.params[id(x)] for x in extra]
        args = yield from each(anchor.args + extra)
        return self.make_call(params, body, args, "fused_" + anchor.callee.name)

    def primitive_call(self, group, body):
        params = list(group.params.values())
        args = yield from each(group.inputs)
        return self.make_call(params, body, args, "fused_" + body.callee.name)

    def make_call(self, params, body, args, name):
        self.fused += 1
        func = E.Function(params, body, body.checked_type, attrs={"Primitive": 1, "Name": name})
        func.checked_type = FuncType([p.checked_type for p in params], body.checked_type)
        call = E.Call(func, args)
        call.checked_type = body.checked_type
        return call


def _replace_var(body, var, replacement):
    class Replace(ExprMutator):
        def visit_Var(self, node):
            return replacement if node is var else node
    return Replace().visit(body)


def fuse_ops(mod):
    """Fuse elementwise chains and dense/matmul epilogues into primitive functions."""
    def rewrite(func):
        return _Fuser(use_counts(func.body)).visit(func)
    return map_functions(mod, rewrite)
