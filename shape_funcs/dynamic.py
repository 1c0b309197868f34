"""Data-dependent shape functions: arange, argwhere and the dyn.* ops (they read values)."""
from __future__ import annotations

import math

import numpy as np

from dynvm.shape_funcs.common import check_dims, infer_reshape, shape_vector
from dynvm.shape_funcs.registry import shape_func
from dynvm.shape_funcs.transform import slice_spec
from dynvm.vm.errors import ShapeError
from dynvm.vm.values import Tensor, scalar_value


def arange_params(inputs, dtype: str):
    """start, stop, step cast to the output dtype (as Python numbers), validated.

    Inputs may be numpy arrays or the VM's Tensors; one-element Tensors of the output dtype
    are read directly (no cast needed, so the value is exactly what numpy would give)."""
    values = []
    for arr, what in zip(inputs, ("start", "stop", "step")):
        if isinstance(arr, Tensor) and arr.meta[0] == dtype:
            v = scalar_value(arr)
            if v is not None:
                if not math.isfinite(v):
                    raise ShapeError(f"arange: {what} must be finite, got {np.asarray(arr).reshape(-1)[0]}")
                values.append(v)
                continue
        v = np.asarray(arr).reshape(-1)
        if v.size != 1:
            raise ShapeError(f"arange: {what} must be a scalar, got shape {np.shape(arr)}")
        if not np.isfinite(v[0]):
            raise ShapeError(f"arange: {what} must be finite, got {v[0]}")
        values.append(v.astype(dtype)[0].item())
    if values[2] == 0:
        raise ShapeError("arange step must not be zero")
    return values


def arange_length(start, stop, step) -> int:
    if isinstance(step, int):
        return max(0, -((start - stop) // step))      # exact ceil((stop - start) / step)
    return max(0, math.ceil((stop - start) / step))


@shape_func("arange", mode="data_dependent", tensor_inputs=True)
def arange(inputs, attrs):
    return [(arange_length(*arange_params(inputs, attrs.get("dtype", "float32"))),)]


@shape_func("argwhere", mode="data_dependent")
def argwhere(inputs, attrs):
    cond = np.asarray(inputs[0])
    return [(int(np.count_nonzero(cond)), cond.ndim)]


@shape_func("dyn.reshape", mode="data_dependent", tensor_inputs=True)
def dyn_reshape(inputs, attrs):
    return [infer_reshape("dyn.reshape", inputs[0].shape, shape_vector("dyn.reshape", inputs[1]))]


@shape_func("dyn.zeros", "dyn.ones", mode="data_dependent", tensor_inputs=True)
def dyn_fill(inputs, attrs):
    return [check_dims("dyn.zeros/ones", shape_vector("dyn.zeros/ones", inputs[0]))]


@shape_func("dyn.full", mode="data_dependent", tensor_inputs=True)
def dyn_full(inputs, attrs):
    return [check_dims("dyn.full", shape_vector("dyn.full", inputs[1]))]


def dyn_slice_attrs(inputs, attrs) -> dict:
    """The static strided_slice attrs of a dyn.strided_slice call, read from its begin / end /
    strides tensors (1-D ints of length rank(x), or len(axes)); stride 0 is a ShapeError."""
    op = "dyn.strided_slice"
    if len(inputs) != 4:
        raise ShapeError(f"{op}: expected 4 inputs (x, begin, end, strides), got {len(inputs)}")
    rank = len(inputs[0].shape)
    axes = attrs.get("axes")
    n = rank if axes is None else len(axes)
    values = {}
    for arr, what in zip(inputs[1:], ("begin", "end", "strides")):
        v = shape_vector(op, arr)
        if len(v) != n:
            raise ShapeError(f"{op}: {what} has length {len(v)}, expected {n}")
        values[what] = list(v)
    if any(s == 0 for s in values["strides"]):
        raise ShapeError(f"{op}: stride must not be zero, got strides {values['strides']}")
    return {**values, "axes": axes}


@shape_func("dyn.strided_slice", mode="data_dependent", tensor_inputs=True)
def dyn_strided_slice(inputs, attrs):
    shape = list(inputs[0].shape)
    for axis, sl in slice_spec(dyn_slice_attrs(inputs, attrs), len(shape)):
        shape[axis] = len(range(shape[axis])[sl])
    return [tuple(shape)]
