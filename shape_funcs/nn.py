"""Neural-network ops."""
from __future__ import annotations

from shape_funcs.common import broadcast, normalize_axis
from shape_funcs.registry import shape_func
from vm.errors import ShapeError


def _same(op: str, a: int, b: int, what: str):
    if a != b:
        raise ShapeError(f"{op}: {what} differ ({a} vs {b})")


@shape_func("dense")
def dense(inputs, attrs):
    data, weight = inputs[0].shape, inputs[1].shape
    _same("dense", data[-1], weight[1], "reduction dims data[-1] and weight[1]")
    return [data[:-1] + (weight[0],)]


@shape_func("matmul")
def matmul(inputs, attrs):
    a, b = inputs[0].shape, inputs[1].shape
    _same("matmul", a[1], b[0], "reduction dims a[1] and b[0]")
    return [(a[0], b[1])]


@shape_func("batch_matmul")
def batch_matmul(inputs, attrs):
    a, b = inputs[0].shape, inputs[1].shape
    m, ka = (a[2], a[1]) if attrs.get("transpose_a") else (a[1], a[2])
    n, kb = (b[1], b[2]) if attrs.get("transpose_b", True) else (b[2], b[1])
    _same("batch_matmul", ka, kb, "reduction dims")
    (batch,) = broadcast("batch_matmul", (a[0],), (b[0],))
    return [(batch, m, n)]


@shape_func("softmax")
def softmax(inputs, attrs):
    return [inputs[0].shape]


@shape_func("layer_norm")
def layer_norm(inputs, attrs):
    x = inputs[0].shape
    axis = normalize_axis("layer_norm", attrs.get("axis", -1), len(x))
    for t, what in zip(inputs[1:], ("gamma", "beta")):
        _same("layer_norm", t.shape[0], x[axis], f"{what} length and x dim {axis}")
    return [x]
