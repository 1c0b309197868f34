"""A 2-layer BERT-style encoder (hidden 256, 4 heads, FFN 1024, tanh-GELU, post-layer-norm)
over a token sequence of run-time length, batch 1, seeded weights.

    per layer:  q, k, v = dense(x, W*) + b*          heads: reshape (?, 4, 64) -> transpose
                attention = softmax(q k^T / 8) v     (batch_matmul over the 4 heads)
                x = layer_norm(x + dense(attention, Wo) + bo)
                x = layer_norm(x + dense(gelu(dense(x, W1) + b1), W2) + b2)

One executable serves every sequence length; bias adds and GELU fuse into the dense kernels.
Run as a script to check against numpy and print timings.
"""
from __future__ import annotations

import sys

import numpy as np

from dynvm.compiler import build, ir, op
from dynvm.vm import VirtualMachine
from dynvm.vm.profiler import check_and_time

HIDDEN, HEADS, FFN, LAYERS = 256, 4, 1024, 2
HEAD = HIDDEN // HEADS
GELU_C = float(np.sqrt(2 / np.pi))


def weights(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(n, scale=0.02, base=0.0):
        return (base + scale * rng.standard_normal(n)).astype(np.float32)
    return [{"wq": mat(HIDDEN, HIDDEN), "bq": vec(HIDDEN), "wk": mat(HIDDEN, HIDDEN), "bk": vec(HIDDEN),
             "wv": mat(HIDDEN, HIDDEN), "bv": vec(HIDDEN), "wo": mat(HIDDEN, HIDDEN), "bo": vec(HIDDEN),
             "g1": vec(HIDDEN, 0.1, 1.0), "be1": vec(HIDDEN), "w1": mat(FFN, HIDDEN), "b1": vec(FFN),
             "w2": mat(HIDDEN, FFN), "b2": vec(HIDDEN), "g2": vec(HIDDEN, 0.1, 1.0), "be2": vec(HIDDEN)}
            for _ in range(LAYERS)]


def gelu(x):
    c = lambda v: ir.const(v, "float32")  # noqa: E731
    inner = op.multiply(c(GELU_C), op.add(x, op.multiply(c(0.044715), op.multiply(x, op.multiply(x, x)))))
    return op.multiply(op.multiply(c(0.5), x), op.add(c(1.0), op.tanh(inner)))


def encoder_layer(x, w):
    c = ir.const

    def linear(v, wname, bname):
        return op.add(op.dense(v, c(w[wname])), c(w[bname]))

    def heads(v, axes):   # (S, 256) -> (4, S, 64) or (4, 64, S)
        return op.transpose(op.reshape(v, newshape=[-1, HEADS, HEAD]), axes=axes)

    q = heads(linear(x, "wq", "bq"), [1, 0, 2])
    k = heads(linear(x, "wk", "bk"), [1, 0, 2])
    v_t = heads(linear(x, "wv", "bv"), [1, 2, 0])
    scores = op.multiply(op.batch_matmul(q, k), c(np.float32(1 / np.sqrt(HEAD))))
    context = op.batch_matmul(op.softmax(scores, axis=-1), v_t)                 # (4, S, 64)
    merged = op.reshape(op.transpose(context, axes=[1, 0, 2]), newshape=[-1, HIDDEN])
    x = op.layer_norm(op.add(x, linear(merged, "wo", "bo")), c(w["g1"]), c(w["be1"]))
    ffn = linear(gelu(linear(x, "w1", "b1")), "w2", "b2")
    return op.layer_norm(op.add(x, ffn), c(w["g2"]), c(w["be2"]))


def build_module(w: list | None = None, seq=None) -> ir.IRModule:
    """main(x: (seq, 256)) -> (seq, 256); seq is Any unless given (static shape)."""
    w = weights() if w is None else w
    x = ir.var("x", ir.TensorType((ir.Any() if seq is None else seq, HIDDEN), "float32"))
    y = x
    for layer in w:
        y = encoder_layer(y, layer)
    return ir.IRModule.from_expr(ir.Function([x], y))


def reference(x: np.ndarray, w: list) -> np.ndarray:
    """The same encoder in numpy (float64)."""
    def layer_norm(v, g, b):
        mean = v.mean(-1, keepdims=True)
        return (v - mean) / np.sqrt(v.var(-1, keepdims=True) + 1e-5) * g + b

    def gelu_np(v):
        return 0.5 * v * (1 + np.tanh(GELU_C * (v + 0.044715 * v ** 3)))
    h = x.astype(np.float64)
    for p in w:
        q, k, v = (h @ p["w" + n].T + p["b" + n] for n in "qkv")
        split = lambda t: t.reshape(len(h), HEADS, HEAD).transpose(1, 0, 2)  # noqa: E731
        s = split(q) @ split(k).transpose(0, 2, 1) / np.sqrt(HEAD)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ split(v)
        h = layer_norm(h + ctx.transpose(1, 0, 2).reshape(len(h), HIDDEN) @ p["wo"].T + p["bo"],
                       p["g1"], p["be1"])
        h = layer_norm(h + gelu_np(h @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"], p["g2"], p["be2"])
    return h.astype(np.float32)


def make_input(seq: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((seq, HIDDEN)).astype(np.float32)


def main() -> int:
    w = weights()
    vm = VirtualMachine(build(build_module(w)))
    inputs = {seq: make_input(seq) for seq in (1, 16, 64, 128)}
    return check_and_time(vm, "seq", [(seq, [x], reference(x, w)) for seq, x in inputs.items()],
                          rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    sys.exit(main())
