"""A child-sum Tree-LSTM (Tai et al. 2015) over a rose tree built in Python.

The tree is the prelude's `Tree` ADT (`Rose(x, children)`); the model is a recursive function
that maps itself over the children (`@map`), sums their hidden states and forget-gated cells
with `@foldl` closures, and combines them with the node's input:

    h~ = sum_k h_k          i, o, u = sigma(W x + U h~ + b) (u with tanh)
    f_k = sigma(W_f x + U_f h_k + b_f)      c = i*u + sum_k f_k*c_k      h = o*tanh(c)
"""
from __future__ import annotations

import numpy as np

from dynvm.compiler import ir, op, prelude
from dynvm.vm.convert import tree

INPUT, HIDDEN = 64, 128


def weights(seed: int = 0, input_size: int = INPUT, hidden: int = HIDDEN) -> dict:
    """The model's weights; the widths are the module's unless given (the model reads them
    from the weights)."""
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(hidden)
    return {"w": rng.uniform(-s, s, (4 * hidden, input_size)).astype(np.float32),     # i, o, u, f
            "u_iou": rng.uniform(-s, s, (3 * hidden, hidden)).astype(np.float32),
            "u_f": rng.uniform(-s, s, (hidden, hidden)).astype(np.float32),
            "b": rng.uniform(-s, s, 4 * hidden).astype(np.float32)}


def _widths(w: dict) -> tuple:
    """(input size, hidden size) of a set of weights."""
    return w["w"].shape[1], w["u_f"].shape[0]


def build_module(w: dict | None = None) -> ir.IRModule:
    """main(t: Tree[Tensor[(1, 64)]]) -> h: (1, 128) of the root (the widths of `w`)."""
    w = weights() if w is None else w
    input_size, hidden = _widths(w)
    mod = prelude.module()
    tree_t = ir.TypeCall("Tree", [ir.TensorType((1, input_size), "float32")])
    state_t = ir.TupleType([ir.TensorType((1, hidden), "float32")] * 2)
    node = mod.get_global_var("tree_lstm")
    t = ir.var("t", tree_t)
    x = ir.var("x", ir.TensorType((1, input_size), "float32"))
    children = ir.var("children", ir.TypeCall("List", [tree_t]))
    states = ir.var("states", ir.TypeCall("List", [state_t]))
    zeros = op.zeros((1, hidden), dtype="float32")

    def fold(fn_body):
        acc = ir.var("acc", ir.TensorType((1, hidden), "float32"))
        s = ir.var("s", state_t)
        fn = ir.Function([acc, s], fn_body(acc, s), ret_type=acc.type_annotation)
        return ir.Call(mod.get_global_var("foldl"), [fn, zeros, states])

    h_sum = fold(lambda acc, s: op.add(acc, ir.TupleGetItem(s, 0)))
    wx = op.add(op.dense(x, ir.const(w["w"])), ir.const(w["b"]))
    x_parts = op.split(wx, 4, axis=1)
    h_parts = op.split(op.dense(h_sum, ir.const(w["u_iou"])), 3, axis=1)
    gate = lambda k: op.add(ir.TupleGetItem(x_parts, k), ir.TupleGetItem(h_parts, k))  # noqa: E731
    f_x = ir.var("f_x", ir.TensorType((1, hidden), "float32"))
    forget = fold(lambda acc, s: op.add(acc, op.multiply(
        op.sigmoid(op.add(f_x, op.dense(ir.TupleGetItem(s, 0), ir.const(w["u_f"])))),
        ir.TupleGetItem(s, 1))))
    c = op.add(op.multiply(op.sigmoid(gate(0)), op.tanh(gate(2))), forget)
    c_var = ir.var("c", ir.TensorType((1, hidden), "float32"))
    h = op.multiply(op.sigmoid(gate(1)), op.tanh(c_var))
    body = ir.Let(states, ir.Call(mod.get_global_var("map"), [node, children]),
                  ir.Let(f_x, ir.TupleGetItem(x_parts, 3),
                         ir.Let(c_var, c, ir.Tuple([h, c_var]))))
    rose = mod.constructor("Rose")
    match = ir.Match(t, [ir.Clause(ir.PatternConstructor(rose, [ir.PatternVar(x), ir.PatternVar(children)]),
                                   body)])
    mod["tree_lstm"] = ir.Function([t], match, ret_type=state_t)
    root = ir.var("root", tree_t)
    mod["main"] = ir.Function([root], ir.TupleGetItem(ir.Call(node, [root]), 0))
    return mod


def reference(node, w: dict):
    """(h, c) of a nested (x, [children]) Python tree, in float64."""
    x, children = node
    hidden = _widths(w)[1]
    states = [reference(child, w) for child in children]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h_sum = sum((s[0] for s in states), np.zeros((1, hidden)))
    wx = x.astype(np.float64) @ w["w"].T + w["b"]
    i_x, o_x, u_x, f_x = np.split(wx, 4, axis=1)
    i_h, o_h, u_h = np.split(h_sum @ w["u_iou"].T, 3, axis=1)
    forget = sum((sigmoid(f_x + h_k @ w["u_f"].T) * c_k for h_k, c_k in states), np.zeros((1, hidden)))
    c = sigmoid(i_x + i_h) * np.tanh(u_x + u_h) + forget
    return sigmoid(o_x + o_h) * np.tanh(c), c


def random_tree(nodes: int, seed: int = 0, input_size: int = INPUT):
    """A random tree of `nodes` nodes as nested (x, [children]) Python tuples."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((1, input_size)).astype(np.float32) for _ in range(nodes)]
    children = [[] for _ in range(nodes)]
    for k in range(1, nodes):
        children[int(rng.integers(0, k))].append(k)

    def make(k):
        return (xs[k], [make(c) for c in children[k]])
    return make(0)


def to_adt(node):
    x, children = node
    return tree(x, [to_adt(c) for c in children])
