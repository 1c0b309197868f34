"""A single-layer LSTM (input 128, hidden 256, batch 1) over a sequence of run-time length.

The time loop is `ir.while_loop`. Its iterations are straight-line kernel calls over static
shapes, so the compiler makes the whole loop one native loop kernel (one `CallLoop`
instruction; `build(mod, native_loops=False)` gives the bytecode loop, a jump inside one
function): one executable serves every sequence length 1..128. The input projection of all
steps is one dense before the loop; each step does the recurrent dense (with the gate bias and
input row fused into its epilogue), a split into the four gates and two fused elementwise
kernels.
"""
from __future__ import annotations

import numpy as np

from dynvm.compiler import ir, op

INPUT, HIDDEN = 128, 256


def weights(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(HIDDEN)
    return {"w_ih": rng.uniform(-scale, scale, (4 * HIDDEN, INPUT)).astype(np.float32),
            "w_hh": rng.uniform(-scale, scale, (4 * HIDDEN, HIDDEN)).astype(np.float32),
            "b": rng.uniform(-scale, scale, 4 * HIDDEN).astype(np.float32)}


def build_module(w: dict | None = None, steps: int | None = None,
                 count_in_condition: bool = False) -> ir.IRModule:
    """main(x: (?, 128)) -> h: (1, 256), the hidden state after the last step.

    With `steps` given, x is (steps, 128) and the time loop is unrolled in Python into
    straight-line code (the static form `vm.StaticRuntime` runs); the per-step ops are the same
    as the loop body's. `count_in_condition` writes the loop as users often do, with the trip
    count computed in the loop condition (`t < shape_of(projected)[0]`) instead of bound once
    before the loop: the native tier runs both forms.
    """
    w = weights() if w is None else w
    x = ir.var("x", ir.TensorType((ir.Any() if steps is None else steps, INPUT), "float32"))
    projected = ir.var("projected", ir.TensorType((ir.Any() if steps is None else steps, 4 * HIDDEN),
                                                  "float32"))
    w_hh, bias = ir.const(w["w_hh"]), ir.const(w["b"])

    def step(t, h, c):
        gates = op.add(op.add(op.dense(h, w_hh), op.take(projected, t, axis=0)), bias)
        parts = op.split(gates, 4, axis=1)
        i, f, g, o = (ir.TupleGetItem(parts, k) for k in range(4))
        c_next = op.add(op.multiply(op.sigmoid(f), c), op.multiply(op.sigmoid(i), op.tanh(g)))
        h_next = op.multiply(op.sigmoid(o), op.tanh(c_next))
        return [op.add(t, ir.const(1, "int64")), h_next, c_next]

    zeros = op.zeros((1, HIDDEN), dtype="float32")
    if steps is not None:
        # let-bind each step's state: the compiler walks let chains iteratively, so the
        # unrolled program nests no deeper than one step however many steps it has
        bindings, h, c = [(projected, op.dense(x, ir.const(w["w_ih"])))], zeros, zeros
        for t in range(steps):
            _, h_next, c_next = step(ir.const(t, "int64"), h, c)
            c = ir.var(f"c{t + 1}", ir.TensorType((1, HIDDEN), "float32"))
            h = ir.var(f"h{t + 1}", ir.TensorType((1, HIDDEN), "float32"))
            bindings += [(c, c_next), (h, h_next)]
        body = h
        for var, value in reversed(bindings):
            body = ir.Let(var, value, body)
        return ir.IRModule.from_expr(ir.Function([x], body))
    n = ir.var("steps", ir.TensorType((), "int64"))
    count = op.take(op.shape_of(projected if count_in_condition else x), ir.const(0, "int64"))
    loop = ir.while_loop(lambda t, h, c: op.less(t, count if count_in_condition else n), step,
                         [ir.const(0, "int64"), zeros, zeros])
    body = ir.TupleGetItem(loop, 1)
    if not count_in_condition:
        body = ir.Let(n, count, body)
    body = ir.Let(projected, op.dense(x, ir.const(w["w_ih"])), body)
    return ir.IRModule.from_expr(ir.Function([x], body))


def reference(x: np.ndarray, w: dict) -> np.ndarray:
    """The same LSTM in numpy (float64 accumulation, then float32)."""
    h = np.zeros((1, HIDDEN))
    c = np.zeros((1, HIDDEN))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for row in x.astype(np.float64):
        gates = h @ w["w_hh"].T + row @ w["w_ih"].T + w["b"]
        i, f, g, o = np.split(gates, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
    return h.astype(np.float32)


def make_input(steps: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, INPUT)).astype(np.float32)
