"""Elementwise ops: the output shape is the numpy broadcast of the input shapes.

"broadcast" is the same function for a fused group of elementwise ops (any number of inputs).
"""
from __future__ import annotations

from dynvm.shape_funcs.common import broadcast
from dynvm.shape_funcs.registry import shape_func

UNARY = ("negative", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "cast")
BINARY = ("add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "fmod",
          "less", "greater", "less_equal", "greater_equal", "equal", "logical_and", "where")


@shape_func(*UNARY, *BINARY, "broadcast")
def broadcast_shape(inputs, attrs):
    """attrs may list `perms` [[input, permutation]]: inputs a fused group reads transposed."""
    shapes = [tuple(x.shape) for x in inputs]
    for k, perm in attrs.get("perms", ()):
        shapes[k] = tuple(shapes[k][p] for p in perm)
    return [broadcast("broadcast", *shapes)]
