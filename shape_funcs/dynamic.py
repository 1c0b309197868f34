"""Data-dependent shape functions: arange, argwhere and the dyn.* ops (they read values)."""
from __future__ import annotations

from dynvm.shape_funcs.common import (FLOAT_DTYPES, all_of, cast_scalar, ceil_int, check_dims,
                                      count_nonzero, element_count, fails, infer_reshape,
                                      is_finite, scalar_input, shape_vector, smax)
from dynvm.shape_funcs.registry import shape_func
from dynvm.shape_funcs.transform import strided_slice
from dynvm.vm.errors import ShapeError


def arange_params(inputs, dtype: str):
    """start, stop, step cast to the output dtype (as Python numbers), validated.

    Inputs may be numpy arrays or the VM's Tensors; one-element Tensors of the output dtype
    are read directly (no cast needed, so the value is exactly what numpy would give)."""
    values = []
    for arr, what in zip(inputs, ("start", "stop", "step")):
        if fails(element_count(arr) == 1):
            raise ShapeError(f"arange: {what} must be a scalar, got shape {tuple(arr.shape)}")
        v = scalar_input(arr)
        if fails(is_finite(v)):
            raise ShapeError(f"arange: {what} must be finite, got {v}")
        values.append(cast_scalar(v, arr, dtype))
    if fails(values[2] != 0):
        raise ShapeError("arange step must not be zero")
    return values


def arange_length(start, stop, step, dtype: str):
    if dtype not in FLOAT_DTYPES:
        return smax(0, -((start - stop) // step))      # exact ceil((stop - start) / step)
    return smax(0, ceil_int((stop - start) / step))


@shape_func("arange", mode="data_dependent", tensor_inputs=True)
def arange(inputs, attrs):
    dtype = attrs.get("dtype", "float32")
    return [(arange_length(*arange_params(inputs, dtype), dtype),)]


@shape_func("argwhere", mode="data_dependent")
def argwhere(inputs, attrs):
    cond = inputs[0]
    return [(count_nonzero(cond), cond.ndim)]


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
    if fails(all_of(s != 0 for s in values["strides"])):
        raise ShapeError(f"{op}: stride must not be zero, got strides {values['strides']}")
    return {**values, "axes": axes}


@shape_func("dyn.strided_slice", mode="data_dependent", tensor_inputs=True)
def dyn_strided_slice(inputs, attrs):
    return strided_slice(inputs[:1], dyn_slice_attrs(inputs, attrs))
