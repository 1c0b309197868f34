"""The kernel of a fused primitive function (made by `passes.fuse_ops`).

A primitive's body is a tree of elementwise op calls over its parameters and scalar constants,
optionally on top of one anchor op (dense, matmul, ...). It becomes either one elementwise
kernel expression, or the anchor's kernel with the tree as its epilogue: in the epilogue
["in", 0] is the anchor's result and ["in", k] the k-th parameter after the anchor's inputs.
"""
from __future__ import annotations

from dynvm.vm.errors import CompileError

from dynvm.compiler.ir import expr as E
from dynvm.compiler.ir.walk import run
from dynvm.compiler.op.registry import get_op
from dynvm.compiler.codegen.types import tensor_leaves


def kernel_of(mc, node: E.Call):
    """(kernel index, shape rule) of an op call or a fused primitive call. A primitive is one
    elementwise kernel, or an anchor op (dense, matmul, ...) with the group as its epilogue.
    The shape rule (shape function name, attrs, how many leading inputs it reads) gives the
    output shapes when they are not static."""
    callee = node.callee
    in_types = [leaf for a in node.args for leaf in tensor_leaves(a.checked_type)]
    out_types = tensor_leaves(node.checked_type)
    if isinstance(callee, E.Op):
        kernel = mc.add_kernel(get_op(callee.name), node.attrs, in_types, out_types)
        return kernel, (callee.name, node.attrs, len(in_types))
    anchor = find_anchor(callee)
    expr = kernel_expr(callee, anchor)
    if anchor is None:
        perms = transposed_inputs(callee)
        kernel = mc.add_elementwise(callee.attrs.get("Name", "fused"), expr, in_types,
                                    out_types[0], perms)
        return kernel, ("broadcast", {"perms": perms} if perms else {}, len(in_types))
    kernel = mc.add_kernel(get_op(anchor.callee.name), anchor.attrs, in_types, out_types,
                           epilogue=expr)
    return kernel, (anchor.callee.name, anchor.attrs, len(anchor.args))


def find_anchor(func: E.Function):
    """The one non-elementwise op call in the body (transposes of parameters are read through
    strides, not anchors), or None."""
    stack, found = [func.body], []
    while stack:
        node = stack.pop()
        if isinstance(node, E.Call) and isinstance(node.callee, E.Op):
            if _is_transpose_of_param(node):
                continue
            if get_op(node.callee.name).expr is None:
                found.append(node)
            else:
                stack.extend(node.args)
    if len(found) > 1:
        raise CompileError(f"primitive {func.attrs.get('Name')} has {len(found)} anchor ops")
    return found[0] if found else None


def kernel_expr(func: E.Function, anchor) -> list:
    """The elementwise expression (or epilogue, when `anchor` is given) of a primitive."""
    if anchor is None:
        leaves = {p: ["in", i] for i, p in enumerate(func.params)}
    else:
        extra = func.params[len(anchor.args):]
        leaves = {p: ["in", 1 + i] for i, p in enumerate(extra)}

    def convert(node):       # a generator for `walk.run`: no recursion however deep the body
        if node is anchor:
            return ["in", 0]
        if isinstance(node, E.Var):
            return leaves[node]
        if isinstance(node, E.Constant) and node.data.ndim == 0:
            return ["const", node.data.item(), node.data.dtype.name]
        if _is_transpose_of_param(node):
            return leaves[node.args[0]]          # read through permuted strides
        if isinstance(node, E.Call) and isinstance(node.callee, E.Op):
            opdef = get_op(node.callee.name)
            args = []
            for arg in node.args:
                args.append((yield convert(arg)))
            return opdef.expr(args, node.attrs)
        raise CompileError(f"unexpected {type(node).__name__} in a primitive function")
    return run(convert(func.body))


def _is_transpose_of_param(node) -> bool:
    return (isinstance(node, E.Call) and isinstance(node.callee, E.Op)
            and node.callee.name == "transpose" and isinstance(node.args[0], E.Var))


def transposed_inputs(func: E.Function) -> list:
    """[[parameter index, permutation]] for the parameters the body reads transposed."""
    index = {p: i for i, p in enumerate(func.params)}
    out, stack = [], [func.body]
    while stack:
        node = stack.pop()
        if _is_transpose_of_param(node):
            rank = node.args[0].checked_type.rank
            axes = node.attrs.get("axes")
            perm = list(reversed(range(rank))) if axes is None else [a % rank for a in axes]
            out.append([index[node.args[0]], perm])
        elif isinstance(node, E.Call):
            stack.extend(node.args)
    return sorted(out)
