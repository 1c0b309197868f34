"""Shape and layout ops (data-independent: they read input shapes only)."""
from __future__ import annotations

import math

from dynvm.shape_funcs.common import (broadcast, check_dims, fails, infer_reshape,
                                      normalize_axis, same_dims, slice_length)
from dynvm.shape_funcs.registry import shape_func
from dynvm.vm.errors import ShapeError

# how take treats an index outside the axis (compiler/op/transform.py, kernels/transform.py)
TAKE_MODES = ("clip", "wrap", "raise")


@shape_func("shape_of")
def shape_of(inputs, attrs):
    return [(inputs[0].ndim,)]


@shape_func("reshape")
def reshape(inputs, attrs):
    return [infer_reshape("reshape", inputs[0].shape, [int(d) for d in attrs["newshape"]])]


@shape_func("expand_dims")
def expand_dims(inputs, attrs):
    shape = inputs[0].shape
    axis = normalize_axis("expand_dims", attrs["axis"], len(shape) + 1)
    return [shape[:axis] + (1,) * attrs.get("num_newaxis", 1) + shape[axis:]]


@shape_func("squeeze")
def squeeze(inputs, attrs):
    shape = inputs[0].shape
    axis = attrs.get("axis")
    if axis is None:
        return [tuple(d for d in shape if d != 1)]
    axes = {normalize_axis("squeeze", a, len(shape)) for a in ([axis] if isinstance(axis, int) else axis)}
    for a in sorted(axes):
        if fails(shape[a] == 1):
            raise ShapeError(f"squeeze: dim {a} of shape {shape} has size {shape[a]}, not 1")
    return [tuple(d for i, d in enumerate(shape) if i not in axes)]


@shape_func("transpose")
def transpose(inputs, attrs):
    shape = inputs[0].shape
    axes = attrs.get("axes")
    if axes is None:
        return [shape[::-1]]
    return [tuple(shape[normalize_axis("transpose", a, len(shape))] for a in axes)]


@shape_func("concatenate")
def concatenate(inputs, attrs):
    """`inputs` are the tuple's tensors, flattened."""
    if not inputs:
        raise ShapeError("concatenate: needs at least one tensor")
    first = inputs[0].shape
    axis = normalize_axis("concatenate", attrs.get("axis", 0), len(first))
    for x in inputs[1:]:
        s = x.shape
        if len(s) != len(first) or fails(same_dims(s[:axis] + s[axis + 1:],
                                                   first[:axis] + first[axis + 1:])):
            raise ShapeError(f"concatenate: shapes {first} and {s} differ off axis {axis}")
    total = sum(x.shape[axis] for x in inputs)
    return [first[:axis] + (total,) + first[axis + 1:]]


def split_sizes(dim: int, spec) -> list:
    if isinstance(spec, int):
        if spec <= 0 or fails(dim % spec == 0):
            raise ShapeError(f"split: dim {dim} does not divide into {spec} equal sections")
        return [dim // spec] * spec
    bounds = [0, *spec, dim]
    return [slice_length(dim, slice(a, b)) for a, b in zip(bounds, bounds[1:])]


@shape_func("split")
def split(inputs, attrs):
    shape = inputs[0].shape
    axis = normalize_axis("split", attrs.get("axis", 0), len(shape))
    sizes = split_sizes(shape[axis], attrs["indices_or_sections"])
    return [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes]


def slice_spec(attrs, rank: int) -> list:
    """(axis, slice) pairs of a strided_slice; Python slice rules give Relay's clamping."""
    begin, end = list(attrs["begin"]), list(attrs["end"])
    strides = list(attrs.get("strides") or [])
    axes = attrs.get("axes")
    if axes is None:
        axes = range(max(len(begin), len(end)))
    out = []
    for i, a in enumerate(axes):
        b = begin[i] if i < len(begin) else None
        e = end[i] if i < len(end) else None
        s = strides[i] if i < len(strides) else 1
        if fails(s != 0):
            raise ShapeError("strided_slice: stride must not be zero")
        out.append((normalize_axis("strided_slice", a, rank), slice(b, e, s)))
    return out


@shape_func("strided_slice")
def strided_slice(inputs, attrs):
    shape = list(inputs[0].shape)
    for axis, sl in slice_spec(attrs, len(shape)):
        shape[axis] = slice_length(shape[axis], sl)
    return [tuple(shape)]


@shape_func("take")
def take(inputs, attrs):
    data, indices = inputs[0].shape, inputs[1].shape
    axis = attrs.get("axis")
    if axis is None:
        extent, out = math.prod(data), indices
    else:
        axis = normalize_axis("take", axis, len(data))
        extent, out = data[axis], data[:axis] + indices + data[axis + 1:]
    if fails((extent != 0) | (math.prod(indices) == 0)):
        raise ShapeError(f"take: cannot take indices from an empty axis (data shape {data})")
    return [out]


@shape_func("broadcast_to")
def broadcast_to(inputs, attrs):
    target = tuple(attrs["shape"])
    if fails(same_dims(broadcast("broadcast_to", inputs[0].shape, target), target)):
        raise ShapeError(f"broadcast_to: cannot broadcast {inputs[0].shape} to {target}")
    return [target]


@shape_func("zeros", "ones", "full")
def fill(inputs, attrs):
    return [check_dims("fill", tuple(attrs["shape"]))]
