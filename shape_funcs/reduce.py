"""Reductions: drop (or keep as 1) the reduced axes; cumulative keeps its input's shape."""
from __future__ import annotations

import math

from dynvm.shape_funcs.common import fails, normalize_axis
from dynvm.shape_funcs.registry import shape_func
from dynvm.vm.errors import ShapeError

# what cumulative runs (compiler/op/reduce.py, kernels/cumulative.py)
CUMULATIVE_MODES = ("sum", "prod")


def reduced_axes(op: str, rank: int, attrs) -> list:
    axis = attrs.get("axis")
    if axis is None:
        axes = list(range(rank))
    else:
        axes = sorted({normalize_axis(op, a, rank) for a in ([axis] if isinstance(axis, int) else axis)})
    if attrs.get("exclude"):
        axes = [a for a in range(rank) if a not in axes]
    return axes


def reduce_shape(op: str, shape, attrs) -> tuple:
    axes = reduced_axes(op, len(shape), attrs)
    if attrs.get("keepdims"):
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


@shape_func("sum", "mean")
def total(inputs, attrs):
    return [reduce_shape("reduce", inputs[0].shape, attrs)]


@shape_func("max", "argmax")
def extreme(inputs, attrs):
    """max/argmax of nothing is undefined: an empty reduction with a non-empty result fails."""
    shape = inputs[0].shape
    out = reduce_shape("max", shape, attrs)
    axes = reduced_axes("max", len(shape), attrs)
    if fails((math.prod(shape[a] for a in axes) != 0) | (math.prod(out) == 0)):
        raise ShapeError(f"max/argmax over an empty axis of shape {shape} has no value")
    return [out]


@shape_func("cumulative")
def cumulative(inputs, attrs):
    return [tuple(inputs[0].shape)]
