"""Extern kernels: numpy implementations of ops that have no compiled kernel yet.

`EXTERN_KERNELS[op](inputs, outputs, attrs)` writes into the preallocated `outputs` (their shapes
come from the op's type or shape function, their dtypes are the output dtypes). A tuple-typed
argument arrives flattened (concatenate gets the tuple's tensors as separate inputs). The
elementwise ops are here too, as the numpy reference the compiled kernels are tested against;
their integer semantics follow the kernel contract: integer division truncates toward zero,
x / 0 == 0 and INT_MIN / -1 == INT_MIN, never a trap.

A result whose shape does not fit the output array is a ShapeError, never a silent broadcast.
"""
from __future__ import annotations

import numpy as np

from shape_funcs.common import infer_reshape, normalize_axis
from shape_funcs.dynamic import arange_params
from shape_funcs.reduce import reduced_axes
from shape_funcs.transform import slice_spec
from vm.errors import ShapeError

EXTERN_KERNELS: dict = {}


def extern(*names):
    def register(fn):
        for name in names:
            EXTERN_KERNELS[name] = fn
        return fn
    return register


def store(op: str, out: np.ndarray, value):
    """`out[...] = value` when the shapes agree exactly, else ShapeError."""
    value = np.asarray(value)
    if value.shape != out.shape:
        raise ShapeError(f"{op}: result has shape {value.shape} but the output has {out.shape}")
    out[...] = value


def store_broadcast(op: str, out: np.ndarray, value):
    """Elementwise store: the result may broadcast to the output (input dims 1), nothing else."""
    try:
        out[...] = np.broadcast_to(value, out.shape)
    except ValueError:
        raise ShapeError(f"{op}: cannot broadcast result {np.shape(value)} to output {out.shape}") \
            from None


# ---------------------------------------------------------------- elementwise

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


UNARY = {"negative": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
         "tanh": np.tanh, "sigmoid": _sigmoid,
         "relu": lambda x: np.maximum(x, x.dtype.type(0))}


def int_divide(x, y):
    """Truncating integer division with x / 0 == 0 and INT_MIN / -1 == INT_MIN."""
    safe = np.where(y == 0, 1, y).astype(y.dtype)
    with np.errstate(all="ignore"):
        q = x // safe                               # INT_MIN // -1 wraps to INT_MIN
    q = q + ((x % safe != 0) & ((x < 0) != (safe < 0))).astype(q.dtype)
    return np.where(y == 0, 0, q).astype(x.dtype)


def int_power(x, y):
    """Integer power; a negative exponent gives 1/x**-y truncated (0 unless |x| == 1)."""
    r = np.power(x, np.maximum(y, 0))
    neg = np.where(x == 1, 1, np.where(x == -1, np.where(y % 2 == 0, 1, -1), 0))
    return np.where(y < 0, neg, r).astype(x.dtype)


def _divide(x, y):
    return int_divide(x, y) if x.dtype.kind in "iu" else np.true_divide(x, y)


def _power(x, y):
    return int_power(x, y) if x.dtype.kind in "iu" else np.power(x, y)


BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": _divide,
          "power": _power, "maximum": np.maximum, "minimum": np.minimum, "less": np.less,
          "greater": np.greater, "equal": np.equal, "logical_and": np.logical_and}


def _elementwise(name, fn):
    def kernel(inputs, outputs, attrs):
        args = [np.asarray(a) for a in inputs]
        with np.errstate(all="ignore"):
            result = fn(*args)
        store_broadcast(name, outputs[0], np.asarray(result).astype(outputs[0].dtype, copy=False))
    kernel.__name__ = name
    EXTERN_KERNELS[name] = kernel


for _name, _fn in {**UNARY, **BINARY}.items():
    _elementwise(_name, _fn)
_elementwise("where", np.where)


@extern("cast")
def cast(inputs, outputs, attrs):
    with np.errstate(all="ignore"):
        store_broadcast("cast", outputs[0], inputs[0].astype(outputs[0].dtype))


# ---------------------------------------------------------------- VM-lowered ops (references)

@extern("shape_of")
def shape_of(inputs, outputs, attrs):
    store("shape_of", outputs[0], np.array(inputs[0].shape, dtype=np.int64))


@extern("reshape", "expand_dims", "squeeze")
def reshape_like(inputs, outputs, attrs):
    """These only relabel dims: the output shape (from the shape function) says how."""
    x = inputs[0]
    if x.size != outputs[0].size:
        raise ShapeError(f"reshape: {x.shape} has {x.size} elements, output {outputs[0].shape} "
                         f"has {outputs[0].size}")
    outputs[0][...] = x.reshape(outputs[0].shape)


@extern("dyn.reshape")
def dyn_reshape(inputs, outputs, attrs):
    shape = infer_reshape("dyn.reshape", inputs[0].shape, np.asarray(inputs[1]).tolist())
    store("dyn.reshape", outputs[0], inputs[0].reshape(shape))


# ---------------------------------------------------------------- transforms

@extern("transpose")
def transpose(inputs, outputs, attrs):
    store("transpose", outputs[0], np.transpose(inputs[0], attrs.get("axes")))


@extern("concatenate")
def concatenate(inputs, outputs, attrs):
    try:
        result = np.concatenate(inputs, axis=attrs.get("axis", 0))
    except ValueError as e:
        raise ShapeError(f"concatenate: {e}") from None
    store("concatenate", outputs[0], result)


@extern("split")
def split(inputs, outputs, attrs):
    x = inputs[0]
    axis = normalize_axis("split", attrs.get("axis", 0), x.ndim)
    spec = attrs["indices_or_sections"]
    if isinstance(spec, int) and (spec <= 0 or x.shape[axis] % spec):
        raise ShapeError(f"split: dim {x.shape[axis]} does not divide into {spec} equal sections")
    parts = np.split(x, spec, axis=axis)
    if len(parts) != len(outputs):
        raise ShapeError(f"split: {len(parts)} parts for {len(outputs)} outputs")
    for out, part in zip(outputs, parts):
        store("split", out, part)


@extern("strided_slice")
def strided_slice(inputs, outputs, attrs):
    x = inputs[0]
    index = [slice(None)] * x.ndim
    for axis, sl in slice_spec(attrs, x.ndim):
        index[axis] = sl
    store("strided_slice", outputs[0], x[tuple(index)])


@extern("take")
def take(inputs, outputs, attrs):
    data, indices = inputs
    axis = attrs.get("axis")
    if axis is None:
        data, axis = data.reshape(-1), 0
    axis = normalize_axis("take", axis, data.ndim)
    if data.shape[axis] == 0 and indices.size:
        raise ShapeError(f"take: cannot take indices from an empty axis (data shape {data.shape})")
    store("take", outputs[0], np.take(data, indices, axis=axis, mode=attrs.get("mode", "clip")))


@extern("broadcast_to")
def broadcast_to(inputs, outputs, attrs):
    try:
        result = np.broadcast_to(inputs[0], tuple(attrs["shape"]))
    except ValueError:
        raise ShapeError(f"broadcast_to: cannot broadcast {inputs[0].shape} to "
                         f"{tuple(attrs['shape'])}") from None
    store("broadcast_to", outputs[0], result)


@extern("zeros", "dyn.zeros")
def zeros(inputs, outputs, attrs):
    outputs[0][...] = 0


@extern("ones", "dyn.ones")
def ones(inputs, outputs, attrs):
    outputs[0][...] = 1


@extern("full", "dyn.full")
def full(inputs, outputs, attrs):
    fill = np.asarray(inputs[0])
    if fill.size != 1:
        raise ShapeError(f"full: fill_value must be a scalar, got shape {fill.shape}")
    outputs[0][...] = fill.reshape(()).astype(outputs[0].dtype)


# ---------------------------------------------------------------- data-dependent

@extern("arange")
def arange(inputs, outputs, attrs):
    """The length comes from the output (the shape function sized it)."""
    out = outputs[0]
    start, _, step = arange_params(inputs, out.dtype.name)
    n = out.shape[0]
    if out.dtype.kind in "iu":
        out[...] = start + step * np.arange(n, dtype=out.dtype)
    else:
        out[...] = start + step * np.arange(n, dtype=np.float64)


@extern("argwhere")
def argwhere(inputs, outputs, attrs):
    store("argwhere", outputs[0], np.argwhere(inputs[0]))


# ---------------------------------------------------------------- reductions

def _reduce_args(op, x, attrs):
    axes = tuple(reduced_axes(op, x.ndim, attrs))
    return axes, bool(attrs.get("keepdims", False))


@extern("sum")
def reduce_sum(inputs, outputs, attrs):
    x = inputs[0]
    axes, keep = _reduce_args("sum", x, attrs)
    store("sum", outputs[0], np.sum(x, axis=axes, keepdims=keep, dtype=outputs[0].dtype))


@extern("mean")
def reduce_mean(inputs, outputs, attrs):
    """Accumulates in float64; integer results truncate toward zero, float ones of nothing are nan."""
    x = inputs[0]
    axes, keep = _reduce_args("mean", x, attrs)
    out = outputs[0]
    count = int(np.prod([x.shape[a] for a in axes]))
    if count == 0 and out.size and out.dtype.kind in "iu":
        raise ShapeError(f"mean: integer mean over an empty axis of shape {x.shape} has no value")
    with np.errstate(all="ignore"):
        result = np.sum(x, axis=axes, keepdims=keep, dtype=np.float64) / np.float64(count)
    store("mean", out, np.asarray(result).astype(out.dtype))


def _check_not_empty(op, x, axes, out):
    if out.size and not all(x.shape[a] for a in axes):
        raise ShapeError(f"{op}: reduction over an empty axis of shape {x.shape} has no value")


@extern("max")
def reduce_max(inputs, outputs, attrs):
    x = inputs[0]
    axes, keep = _reduce_args("max", x, attrs)
    _check_not_empty("max", x, axes, outputs[0])
    if outputs[0].size == 0:
        return
    store("max", outputs[0], np.max(x, axis=axes, keepdims=keep))


@extern("argmax")
def reduce_argmax(inputs, outputs, attrs):
    """Move the reduced axes last, flatten them, take the first maximum's flat index."""
    x = inputs[0]
    axes, keep = _reduce_args("argmax", x, attrs)
    out = outputs[0]
    _check_not_empty("argmax", x, axes, out)
    if out.size == 0:
        return
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, kept + list(axes))
    flat = moved.reshape([x.shape[a] for a in kept] + [int(np.prod([x.shape[a] for a in axes]))])
    result = np.argmax(flat, axis=-1)
    if keep:
        result = result.reshape([1 if a in axes else x.shape[a] for a in range(x.ndim)])
    store("argmax", out, result)


# ---------------------------------------------------------------- nn

@extern("dense")
def dense(inputs, outputs, attrs):
    data, weight = inputs
    store("dense", outputs[0], np.matmul(data, weight.T).astype(outputs[0].dtype, copy=False))


@extern("matmul")
def matmul(inputs, outputs, attrs):
    store("matmul", outputs[0], np.matmul(*inputs).astype(outputs[0].dtype, copy=False))


@extern("batch_matmul")
def batch_matmul(inputs, outputs, attrs):
    a, b = inputs
    if attrs.get("transpose_a", False):
        a = np.swapaxes(a, 1, 2)
    if attrs.get("transpose_b", True):
        b = np.swapaxes(b, 1, 2)
    store("batch_matmul", outputs[0], np.matmul(a, b).astype(outputs[0].dtype, copy=False))


@extern("softmax")
def softmax(inputs, outputs, attrs):
    x = inputs[0]
    if x.size == 0:
        return
    axis = attrs.get("axis", -1)
    with np.errstate(all="ignore"):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        store("softmax", outputs[0], e / np.sum(e, axis=axis, keepdims=True))


@extern("layer_norm")
def layer_norm(inputs, outputs, attrs):
    x, gamma, beta = inputs
    axis = normalize_axis("layer_norm", attrs.get("axis", -1), x.ndim)
    if x.size == 0:
        return
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        mean = x64.mean(axis=axis, keepdims=True)
        var = ((x64 - mean) ** 2).mean(axis=axis, keepdims=True)
        y = (x64 - mean) / np.sqrt(var + attrs.get("epsilon", 1e-5))
    store("layer_norm", outputs[0],
          (y * gamma.reshape(shape) + beta.reshape(shape)).astype(outputs[0].dtype))
