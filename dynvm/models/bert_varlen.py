"""A BERT-style encoder (tanh-GELU, post-layer-norm) over a token sequence of run-time length,
batch 1, seeded weights. `SMALL` (the default) has 2 layers, hidden 256, 4 heads, FFN 1024;
`BASE` is BERT-base: 12 layers, hidden 768, 12 heads, FFN 3072.

    per layer:  q, k, v = dense(x, W*) + b*          heads: reshape (?, H, D) -> transpose
                attention = softmax(q k^T / sqrt(D)) v     (batch_matmul over the H heads)
                x = layer_norm(x + dense(attention, Wo) + bo)
                x = layer_norm(x + dense(gelu(dense(x, W1) + b1), W2) + b2)

One executable serves every sequence length; bias adds and GELU fuse into the dense kernels.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dynvm.compiler import ir, op

GELU_C = float(np.sqrt(2 / np.pi))


@dataclasses.dataclass(frozen=True)
class Config:
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    layers: int = 2

    @property
    def head(self) -> int:
        return self.hidden // self.heads


SMALL = Config()
BASE = Config(hidden=768, heads=12, ffn=3072, layers=12)


def weights(config: Config = SMALL, seed: int = 0) -> dict:
    """{"config": config, "layers": [one dict of float32 arrays per layer]}; dense weights are
    (out, in) like `op.dense` and PyTorch's Linear."""
    rng = np.random.default_rng(seed)
    hidden, ffn = config.hidden, config.ffn

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(n, scale=0.02, base=0.0):
        return (base + scale * rng.standard_normal(n)).astype(np.float32)
    layers = [{"wq": mat(hidden, hidden), "bq": vec(hidden), "wk": mat(hidden, hidden),
               "bk": vec(hidden), "wv": mat(hidden, hidden), "bv": vec(hidden),
               "wo": mat(hidden, hidden), "bo": vec(hidden), "g1": vec(hidden, 0.1, 1.0),
               "be1": vec(hidden), "w1": mat(ffn, hidden), "b1": vec(ffn), "w2": mat(hidden, ffn),
               "b2": vec(hidden), "g2": vec(hidden, 0.1, 1.0), "be2": vec(hidden)}
              for _ in range(config.layers)]
    return {"config": config, "layers": layers}


def gelu(x):
    c = lambda v: ir.const(v, "float32")  # noqa: E731
    inner = op.multiply(c(GELU_C), op.add(x, op.multiply(c(0.044715), op.multiply(x, op.multiply(x, x)))))
    return op.multiply(op.multiply(c(0.5), x), op.add(c(1.0), op.tanh(inner)))


def encoder_layer(x, w: dict, config: Config):
    c = ir.const

    def linear(v, wname, bname):
        return op.add(op.dense(v, c(w[wname])), c(w[bname]))

    def heads(v, axes):   # (S, hidden) -> (H, S, D) or (H, D, S)
        return op.transpose(op.reshape(v, newshape=[-1, config.heads, config.head]), axes=axes)

    q = heads(linear(x, "wq", "bq"), [1, 0, 2])
    k = heads(linear(x, "wk", "bk"), [1, 0, 2])
    v_t = heads(linear(x, "wv", "bv"), [1, 2, 0])
    scores = op.multiply(op.batch_matmul(q, k), c(np.float32(1 / np.sqrt(config.head))))
    context = op.batch_matmul(op.softmax(scores, axis=-1), v_t)                 # (H, S, D)
    merged = op.reshape(op.transpose(context, axes=[1, 0, 2]), newshape=[-1, config.hidden])
    x = op.layer_norm(op.add(x, linear(merged, "wo", "bo")), c(w["g1"]), c(w["be1"]))
    ffn = linear(gelu(linear(x, "w1", "b1")), "w2", "b2")
    return op.layer_norm(op.add(x, ffn), c(w["g2"]), c(w["be2"]))


def build_module(w: dict | None = None, seq=None) -> ir.IRModule:
    """main(x: (seq, hidden)) -> (seq, hidden); seq is Any unless given (static shape).

    The layers nest as one expression, the way a user writes them (BERT-base's 12 layers are
    some 300 nested calls deep: the compiler walks the IR without recursion)."""
    w = weights() if w is None else w
    config = w["config"]
    x_type = ir.TensorType((ir.Any() if seq is None else seq, config.hidden), "float32")
    x = ir.var("x", x_type)
    y = x
    for layer in w["layers"]:
        y = encoder_layer(y, layer, config)
    return ir.IRModule.from_expr(ir.Function([x], y))


def reference(x: np.ndarray, w: dict) -> np.ndarray:
    """The same encoder in numpy (float64)."""
    config = w["config"]

    def layer_norm(v, g, b):
        mean = v.mean(-1, keepdims=True)
        return (v - mean) / np.sqrt(v.var(-1, keepdims=True) + 1e-5) * g + b

    def gelu_np(v):
        return 0.5 * v * (1 + np.tanh(GELU_C * (v + 0.044715 * v ** 3)))
    h = x.astype(np.float64)
    split = lambda t: t.reshape(len(h), config.heads, config.head).transpose(1, 0, 2)  # noqa: E731
    for p in w["layers"]:
        q, k, v = (h @ p["w" + n].T + p["b" + n] for n in "qkv")
        s = split(q) @ split(k).transpose(0, 2, 1) / np.sqrt(config.head)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ split(v)
        h = layer_norm(h + ctx.transpose(1, 0, 2).reshape(len(h), config.hidden) @ p["wo"].T + p["bo"],
                       p["g1"], p["be1"])
        h = layer_norm(h + gelu_np(h @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"], p["g2"], p["be2"])
    return h.astype(np.float32)


def make_input(seq: int, seed: int = 1, config: Config = SMALL) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((seq, config.hidden)).astype(np.float32)
