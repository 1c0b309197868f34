"""Position embeddings over a sequence of run-time length: positions = arange(len(x)).

    y = x + take(table, arange(0, rows(x), 1))        x: Tensor[(?, 64), float32]

The length of `positions` is data-dependent (a shape function reads start/stop/step at run
time), and one executable serves every sequence length.
"""
from __future__ import annotations

import numpy as np

from dynvm.compiler import ir, op

HIDDEN = 64
MAX_LEN = 512


def position_table(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((MAX_LEN, HIDDEN)).astype(np.float32)


def build_module(table: np.ndarray | None = None) -> ir.IRModule:
    table = position_table() if table is None else table
    x = ir.var("x", ir.TensorType((ir.Any(), HIDDEN), "float32"))
    rows = op.take(op.shape_of(x), ir.const(0, "int64"))
    positions = op.arange(ir.const(0, "int64"), rows, ir.const(1, "int64"), dtype="int64")
    embedded = op.take(ir.const(table), positions, axis=0)
    return ir.IRModule.from_expr(ir.Function([x], op.add(x, embedded)))


def reference(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    return x + table[np.arange(len(x))]


def make_input(length: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((length, HIDDEN)).astype(np.float32)
