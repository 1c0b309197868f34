"""numpy references of every op's kernel: the oracle the compiled kernels are tested against.

`REFERENCE_KERNELS[op](inputs, outputs, attrs)` writes into the preallocated `outputs` (their shapes
come from the op's type or shape function, their dtypes are the output dtypes). A tuple-typed
argument arrives flattened (concatenate gets the tuple's tensors as separate inputs). Integer
semantics of the elementwise ops follow the kernel contract: integer division truncates toward zero,
x / 0 == 0 and INT_MIN / -1 == INT_MIN, never a trap.

A result whose shape does not fit the output array is a ShapeError, never a silent broadcast.
"""
from __future__ import annotations

import numpy as np

from dynvm.shape_funcs.common import infer_reshape, normalize_axis
from dynvm.shape_funcs.dynamic import arange_params, dyn_slice_attrs
from dynvm.shape_funcs.reduce import reduced_axes
from dynvm.shape_funcs.transform import slice_spec
from dynvm.vm.errors import KernelError, ShapeError

REFERENCE_KERNELS: dict = {}


def reference(*names):
    def register(fn):
        for name in names:
            REFERENCE_KERNELS[name] = fn
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
          "power": _power, "maximum": np.maximum, "minimum": np.minimum, "fmod": np.fmod,
          "less": np.less,
          "greater": np.greater, "less_equal": np.less_equal, "greater_equal": np.greater_equal,
          "equal": np.equal, "logical_and": np.logical_and}


def _elementwise(name, fn):
    def kernel(inputs, outputs, attrs):
        args = [np.asarray(a) for a in inputs]
        with np.errstate(all="ignore"):
            result = fn(*args)
        store_broadcast(name, outputs[0], np.asarray(result).astype(outputs[0].dtype, copy=False))
    kernel.__name__ = name
    REFERENCE_KERNELS[name] = kernel


for _name, _fn in {**UNARY, **BINARY}.items():
    _elementwise(_name, _fn)
_elementwise("where", np.where)


@reference("cast")
def cast(inputs, outputs, attrs):
    with np.errstate(all="ignore"):
        store_broadcast("cast", outputs[0], inputs[0].astype(outputs[0].dtype))


# ---------------------------------------------------------------- VM-lowered ops (references)

@reference("shape_of")
def shape_of(inputs, outputs, attrs):
    store("shape_of", outputs[0], np.array(inputs[0].shape, dtype=np.int64))


@reference("reshape", "expand_dims", "squeeze")
def reshape_like(inputs, outputs, attrs):
    """These only relabel dims: the output shape (from the shape function) says how."""
    x = inputs[0]
    if x.size != outputs[0].size:
        raise ShapeError(f"reshape: {x.shape} has {x.size} elements, output {outputs[0].shape} "
                         f"has {outputs[0].size}")
    outputs[0][...] = x.reshape(outputs[0].shape)


@reference("dyn.reshape")
def dyn_reshape(inputs, outputs, attrs):
    shape = infer_reshape("dyn.reshape", inputs[0].shape, np.asarray(inputs[1]).tolist())
    store("dyn.reshape", outputs[0], inputs[0].reshape(shape))


# ---------------------------------------------------------------- transforms

@reference("transpose")
def transpose(inputs, outputs, attrs):
    store("transpose", outputs[0], np.transpose(inputs[0], attrs.get("axes")))


@reference("concatenate")
def concatenate(inputs, outputs, attrs):
    try:
        result = np.concatenate(inputs, axis=attrs.get("axis", 0))
    except ValueError as e:
        raise ShapeError(f"concatenate: {e}") from None
    store("concatenate", outputs[0], result)


@reference("split")
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


@reference("strided_slice")
def strided_slice(inputs, outputs, attrs):
    x = inputs[0]
    index = [slice(None)] * x.ndim
    for axis, sl in slice_spec(attrs, x.ndim):
        index[axis] = sl
    store("strided_slice", outputs[0], x[tuple(index)])


@reference("take")
def take(inputs, outputs, attrs):
    data, indices = inputs
    axis = attrs.get("axis")
    if axis is None:
        data, axis = data.reshape(-1), 0
    axis = normalize_axis("take", axis, data.ndim)
    if data.shape[axis] == 0 and indices.size:
        raise ShapeError(f"take: cannot take indices from an empty axis (data shape {data.shape})")
    try:
        store("take", outputs[0], np.take(data, indices, axis=axis, mode=attrs.get("mode", "clip")))
    except IndexError as e:      # mode "raise"
        raise KernelError(f"take: {e}") from None


@reference("set_row")
def set_row(inputs, outputs, attrs):
    """data with row index (clamped into [0, n - 1]) replaced; an empty axis has no row."""
    data, index, row = inputs
    if data.shape[0] == 0:
        raise ShapeError(f"set_row: data of shape {data.shape} has no row to replace")
    out = data.copy()
    out[min(max(int(index), 0), data.shape[0] - 1)] = row
    store("set_row", outputs[0], out)


@reference("cumulative")
def cumulative(inputs, outputs, attrs):
    """Running sums or products along the axis, combined one element after another."""
    x = np.moveaxis(inputs[0], attrs["axis"], -1)
    if attrs.get("reverse"):
        x = x[..., ::-1]
    combine = np.add if attrs["mode"] == "sum" else np.multiply
    out, acc = np.empty_like(x), np.full(x.shape[:-1], 0 if attrs["mode"] == "sum" else 1, x.dtype)
    for k in range(x.shape[-1]):
        total = combine(acc, x[..., k])
        out[..., k] = acc if attrs.get("exclusive") else total
        acc = total
    if attrs.get("reverse"):
        out = out[..., ::-1]
    store("cumulative", outputs[0], np.moveaxis(out, -1, attrs["axis"]))


@reference("scatter_rows")
def scatter_rows(inputs, outputs, attrs):
    """Update row k into row positions[k] in order (negative from the end; outside: an error)."""
    data, positions, updates = inputs
    if updates.shape != (positions.shape[0], data.shape[1]):
        raise ShapeError(f"scatter_rows: updates of shape {updates.shape} for {positions.shape[0]} "
                         f"rows of width {data.shape[1]}")
    combine = {"none": lambda old, new: new, "add": np.add, "mul": np.multiply,
               "max": np.maximum, "min": np.minimum}[attrs.get("reduction", "none")]
    out = data.copy()
    for p, row in zip(positions.tolist(), updates):
        if not -data.shape[0] <= p < data.shape[0]:
            raise KernelError(f"scatter_rows: position {p} outside {data.shape[0]} rows")
        out[p] = combine(out[p], row)
    store("scatter_rows", outputs[0], out)


@reference("recurrent")
def recurrent(inputs, outputs, attrs):
    """One direction of an RNN/GRU/LSTM layer step by step, each sequence on its own length."""
    x, wb, r_t, rb, h0, c0, lens = inputs
    x = x + wb
    acts = {"Sigmoid": _sigmoid, "Tanh": np.tanh, "Relu": lambda v: np.maximum(v, 0)}
    plain = f = [acts[a] for a in attrs["activations"]]
    clip = attrs.get("clip")
    if clip is not None:        # the gates' inputs, not the cell state h() reads
        f = [lambda v, g=g: g(np.clip(v, -clip, clip)) for g in f]
    seq, batch, hidden = x.shape[0], x.shape[1], r_t.shape[0]
    y, yh, yc = (np.zeros(o.shape, x.dtype) for o in outputs)
    if any(not 0 <= int(n) <= seq for n in lens):
        raise KernelError(f"recurrent: a sequence length outside [0, {seq}]: {lens}")
    for b in range(batch):
        n = int(lens[b])
        h, c = h0[b].copy(), c0[b].copy() if attrs["cell"] == "lstm" else np.zeros_like(h0[b])
        for t in (range(n - 1, -1, -1) if attrs.get("reverse") else range(n)):
            xt = np.split(x[t, b], {"rnn": 1, "gru": 3, "lstm": 4}[attrs["cell"]])
            if attrs["cell"] == "rnn":
                h = f[0](xt[0] + rb + h @ r_t)
            elif attrs["cell"] == "lstm":
                gi, go, gf, gc = (xt[k] + gk for k, gk in enumerate(np.split(rb + h @ r_t, 4)))
                c = f[0](gf) * c + f[0](gi) * f[1](gc)
                h = f[0](go) * plain[2](c)
            else:
                rz, rr, rh = np.split(r_t, 3, axis=1)
                bz, br, bh = np.split(rb, 3)
                z, r = f[0](xt[0] + bz + h @ rz), f[0](xt[1] + br + h @ rr)
                if attrs.get("linear_before_reset"):
                    cand = f[1](xt[2] + r * (bh + h @ rh))
                else:
                    cand = f[1](xt[2] + bh + (r * h) @ rh)
                h = (1 - z) * cand + z * h
            y[t, b] = h
        if n:       # a sequence of length 0 ends with zero states (as ONNX Runtime)
            yh[b], yc[b] = h, c
    for out, value in zip(outputs, (y, yh, yc)):
        store("recurrent", out, value)


@reference("broadcast_to")
def broadcast_to(inputs, outputs, attrs):
    try:
        result = np.broadcast_to(inputs[0], tuple(attrs["shape"]))
    except ValueError:
        raise ShapeError(f"broadcast_to: cannot broadcast {inputs[0].shape} to "
                         f"{tuple(attrs['shape'])}") from None
    store("broadcast_to", outputs[0], result)


@reference("zeros", "dyn.zeros")
def zeros(inputs, outputs, attrs):
    outputs[0][...] = 0


@reference("ones", "dyn.ones")
def ones(inputs, outputs, attrs):
    outputs[0][...] = 1


@reference("full", "dyn.full")
def full(inputs, outputs, attrs):
    fill = np.asarray(inputs[0])
    if fill.size != 1:
        raise ShapeError(f"full: fill_value must be a scalar, got shape {fill.shape}")
    outputs[0][...] = fill.reshape(()).astype(outputs[0].dtype)


# ---------------------------------------------------------------- data-dependent

@reference("arange")
def arange(inputs, outputs, attrs):
    """The length comes from the output (the shape function sized it)."""
    out = outputs[0]
    start, _, step = arange_params(inputs, out.dtype.name)
    n = out.shape[0]
    if out.dtype.kind in "iu":
        out[...] = start + step * np.arange(n, dtype=out.dtype)
    else:
        out[...] = start + step * np.arange(n, dtype=np.float64)


@reference("argwhere")
def argwhere(inputs, outputs, attrs):
    store("argwhere", outputs[0], np.argwhere(inputs[0]))


# ---------------------------------------------------------------- reductions

def _reduce_args(op, x, attrs):
    axes = tuple(reduced_axes(op, x.ndim, attrs))
    return axes, bool(attrs.get("keepdims", False))


@reference("sum")
def reduce_sum(inputs, outputs, attrs):
    x = inputs[0]
    axes, keep = _reduce_args("sum", x, attrs)
    store("sum", outputs[0], np.sum(x, axis=axes, keepdims=keep, dtype=outputs[0].dtype))


@reference("mean")
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


@reference("max")
def reduce_max(inputs, outputs, attrs):
    x = inputs[0]
    axes, keep = _reduce_args("max", x, attrs)
    _check_not_empty("max", x, axes, outputs[0])
    if outputs[0].size == 0:
        return
    store("max", outputs[0], np.max(x, axis=axes, keepdims=keep))


@reference("argmax")
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

@reference("dense")
def dense(inputs, outputs, attrs):
    data, weight = inputs
    store("dense", outputs[0], np.matmul(data, weight.T).astype(outputs[0].dtype, copy=False))


@reference("matmul")
def matmul(inputs, outputs, attrs):
    store("matmul", outputs[0], np.matmul(*inputs).astype(outputs[0].dtype, copy=False))


@reference("batch_matmul")
def batch_matmul(inputs, outputs, attrs):
    a, b = inputs
    if attrs.get("transpose_a", False):
        a = np.swapaxes(a, 1, 2)
    if attrs.get("transpose_b", True):
        b = np.swapaxes(b, 1, 2)
    store("batch_matmul", outputs[0], np.matmul(a, b).astype(outputs[0].dtype, copy=False))


@reference("softmax")
def softmax(inputs, outputs, attrs):
    x = inputs[0]
    if x.size == 0:
        return
    axis = attrs.get("axis", -1)
    with np.errstate(all="ignore"):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        store("softmax", outputs[0], e / np.sum(e, axis=axis, keepdims=True))


@reference("layer_norm")
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


@reference("conv2d")
def conv2d(inputs, outputs, attrs):
    """NCHW data x OIHW weight reference: pad, then one einsum per group and kernel tap."""
    from dynvm.shape_funcs.nn import conv2d_params
    x, w = inputs
    out = outputs[0]
    (sh, sw), (pt, pl, pb, pr), (dh, dw), groups = conv2d_params(attrs)
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    _, _, oh, ow = out.shape
    if out.size == 0:
        return
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    og = o // groups if groups else 0
    result = np.zeros((n, o, oh, ow), dtype=out.dtype)
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                           j * dw: j * dw + sw * (ow - 1) + 1: sw]          # (n, cg, oh, ow)
                result[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j]).astype(out.dtype)
    store("conv2d", out, result)


@reference("pool")
def pool(inputs, outputs, attrs):
    """Max (NaN ignored, like np.fmax) or average of each window: the data padded far enough for
    every window (with -inf / the int minimum for max, 0 for avg), one strided slice per tap;
    the average divides by the taps inside the data (or inside the declared padding)."""
    from dynvm.shape_funcs.window import pool_params
    x, out = inputs[0], outputs[0]
    mode, kernel, strides, dilation, lo, hi, _, include = pool_params(attrs)
    if out.size == 0:
        return
    sizes = x.shape[2:]
    ends = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out.shape[2:], strides, kernel,
                                                                  dilation)]
    grow = [max(0, e - l - n) for e, l, n in zip(ends, lo, sizes)]
    widths = [(0, 0), (0, 0)] + [(l, g) for l, g in zip(lo, grow)]
    if mode == "max":
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    else:
        fill = 0
    xp = np.pad(x, widths, constant_values=fill)
    inside = np.pad(np.ones(sizes), widths[2:])
    declared = np.pad(np.ones([l + n + h for l, n, h in zip(lo, sizes, hi)]),
                      [(0, max(0, g - h)) for g, h in zip(grow, hi)])
    acc, count = None, 0
    for tap in np.ndindex(*kernel):
        cells = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                      for t, d, o, s in zip(tap, dilation, out.shape[2:], strides))
        part = xp[(slice(None), slice(None)) + cells]
        if mode == "max":
            larger = np.fmax if x.dtype.kind == "f" else np.maximum
            acc = part if acc is None else larger(acc, part)
        else:
            acc = part if acc is None else acc + part
            count = count + (declared if include else inside)[cells]
    with np.errstate(invalid="ignore", divide="ignore"):
        store("pool", out, acc if mode == "max" else (acc / count).astype(out.dtype))


@reference("roi_align")
def roi_align(inputs, outputs, attrs):
    """ONNX's RoiAlign in the data's dtype: per roi its bins' sample grid (sampling_ratio, or
    ceil(bin size) per dim), each sample bilinear from its four clamped taps (0 when more than
    a cell outside the image); a bin averages its samples over max(grid cells, 1) or takes the
    largest weighted tap (0 without samples)."""
    from dynvm.shape_funcs.window import roi_align_params
    x, rois, batch = inputs
    out = outputs[0]
    mode, oh, ow, ratio, scale, half = roi_align_params(attrs)
    t = x.dtype.type
    _, _, h, w = x.shape
    result = np.zeros(out.shape, x.dtype)
    for r in range(rois.shape[0]):
        x0, y0, x1, y1 = (rois[r] * t(scale) - t(0.5 if half else 0.0)).astype(x.dtype)
        rh, rw = y1 - y0, x1 - x0
        if not half:
            rh, rw = max(rh, t(1)), max(rw, t(1))
        bh, bw = rh / t(oh), rw / t(ow)
        gh, gw = (ratio, ratio) if ratio else (int(np.ceil(rh / t(oh))), int(np.ceil(rw / t(ow))))
        img = x[batch[r]]
        for ph, pw in np.ndindex(oh, ow):
            samples = []
            for iy, ix in np.ndindex(max(gh, 0), max(gw, 0)):
                yy = y0 + t(ph) * bh + (t(iy) + t(0.5)) * bh / t(gh)
                xx = x0 + t(pw) * bw + (t(ix) + t(0.5)) * bw / t(gw)
                if not (h and w and -1 <= yy <= h and -1 <= xx <= w):
                    samples.append(np.zeros(x.shape[1], x.dtype))
                    continue
                taps = []
                for v, n in ((max(yy, t(0)), h), (max(xx, t(0)), w)):
                    low = int(v)
                    if low >= n - 1:
                        taps.append((n - 1, n - 1, t(0)))
                    else:
                        taps.append((low, low + 1, v - t(low)))
                (yl, yh, ly), (xl, xh, lx) = taps
                hy, hx = t(1) - ly, t(1) - lx
                parts = [hy * hx * img[:, yl, xl], hy * lx * img[:, yl, xh],
                         ly * hx * img[:, yh, xl], ly * lx * img[:, yh, xh]]
                samples.append(parts[0] + parts[1] + parts[2] + parts[3] if mode == "avg"
                               else np.max(parts, axis=0))
            if mode == "avg":
                total = sum(samples, np.zeros(x.shape[1], x.dtype))
                result[r, :, ph, pw] = total / t(max(gh * gw, 1))
            elif samples:
                result[r, :, ph, pw] = np.max(samples, axis=0)
    store("roi_align", out, result)


@reference("col2im")
def col2im(inputs, outputs, attrs):
    """Scatter-add: every tap (ky, kx) of every input cell (iy, ix) adds into output cell
    (iy * sh - top + ky * dh, ix * sw - left + kx * dw) when that cell exists."""
    from dynvm.shape_funcs.window import col2im_params
    x, out = inputs[0], outputs[0]
    (sh, sw), (dh, dw), (pt, pl, _, _), _ = col2im_params(attrs)
    n, c, kh, kw, h, w = x.shape
    oh, ow = out.shape[2:]
    result = np.zeros(out.shape, x.dtype)
    for ky, kx, iy, ix in np.ndindex(kh, kw, h, w):
        y, xo = iy * sh - pt + ky * dh, ix * sw - pl + kx * dw
        if 0 <= y < oh and 0 <= xo < ow:
            result[:, :, y, xo] += x[:, :, ky, kx, iy, ix]
    store("col2im", out, result)


# ---------------------------------------------------------------- sorting (references)
# Order: by value (NaN largest, -0.0 == 0.0), equal values by lower index, i.e. a stable sort;
# descending reverses the value order only. See kernels/sort.py for the native kernels.

from dynvm.shape_funcs.vision import (_fmax, _fmin, nms_select, stable_order,  # noqa: E402
                                topk_extent)


@reference("sort")
def sort(inputs, outputs, attrs):
    x = inputs[0]
    axis = attrs.get("axis", -1)
    order = stable_order(x, axis, not attrs.get("is_ascend", True))
    store("sort", outputs[0], np.take_along_axis(x, order, axis))


@reference("argsort")
def argsort(inputs, outputs, attrs):
    order = stable_order(inputs[0], attrs.get("axis", -1), not attrs.get("is_ascend", True))
    store("argsort", outputs[0], order.astype(outputs[0].dtype))


@reference("topk")
def topk(inputs, outputs, attrs):
    """The k first elements (k < 1: all) of the order; is_ascend=False gives the largest."""
    x = inputs[0]
    axis, k = topk_extent(x.shape, attrs)
    order = np.take(stable_order(x, axis, not attrs.get("is_ascend", False)), np.arange(k),
                    axis=axis)
    values = np.take_along_axis(x, order, axis)
    ret = attrs.get("ret_type", "both")
    results = {"both": [values, order], "values": [values], "indices": [order]}[ret]
    for out, result in zip(outputs, results):
        store("topk", out, result.astype(out.dtype))


@reference("unique")
def unique(inputs, outputs, attrs):
    """np.unique: sorted distinct values, all NaNs as one trailing NaN; optional counts."""
    x = inputs[0]
    if attrs.get("return_counts", False):
        values, counts = np.unique(x, return_counts=True)
        store("unique", outputs[0], values)
        store("unique", outputs[1], counts.astype(np.int64))
    else:
        store("unique", outputs[0], np.unique(x))


# ---------------------------------------------------------------- detection (references)
# Boxes are rows [class, score, x1, y1, x2, y2] (columns from id_index, score_index,
# coord_start). float32 throughout, in the operation order of the native kernels
# (kernels/vision.py), so results agree exactly.


@reference("get_valid_counts")
def get_valid_counts(inputs, outputs, attrs):
    """TVM: boxes with score > score_threshold (and class >= 0 unless id_index < 0) move to
    the top in their original order; the rest become -1 rows; out_indices[i, j] is the input
    anchor of row j (-1 for padding); valid_count[i] how many are valid."""
    data = inputs[0]
    score_index, id_index = attrs.get("score_index", 1), attrs.get("id_index", 0)
    if data.shape[2] <= max(score_index, id_index):
        raise ShapeError(f"get_valid_counts: box length {data.shape[2]} is too short")
    valid = data[:, :, score_index] > np.float32(attrs.get("score_threshold", 0.0))
    if id_index >= 0:
        valid &= data[:, :, id_index] >= 0
    counts, out, out_idx = outputs
    out[...] = -1
    out_idx[...] = -1
    for i in range(data.shape[0]):
        rows = np.nonzero(valid[i])[0]
        out[i, :len(rows)] = data[i, rows]
        out_idx[i, :len(rows)] = rows
        counts[i] = len(rows)


def _tvm_suppressed(box, kept, coord, threshold):
    """TVM hybrid_nms: IoU(box, each kept box) >= threshold, corners normalised by min/max."""
    def corners(b):
        x1, y1, x2, y2 = (b[..., coord + t] for t in range(4))
        return _fmin(x1, x2), _fmin(y1, y2), _fmax(x1, x2), _fmax(y1, y2)
    al, at, ar, ab = corners(box)
    bl, bt, br, bb = corners(kept)
    zero = np.float32(0)
    with np.errstate(all="ignore"):
        w = _fmax(zero, _fmin(ar, br) - _fmax(al, bl))
        h = _fmax(zero, _fmin(ab, bb) - _fmax(at, bt))
        area = h * w
        union = ((ar - al) * (ab - at) + (br - bl) * (bb - bt)) - area
        iou = np.where(union <= zero, zero, area / union)
    return iou >= threshold


def tvm_nms_rows(data_i, valid, attrs):
    """Per position j < N of one batch: the input row it holds, or None for an invalid (-1)
    entry. TVM: with iou_threshold > 0 the first `valid` rows are visited by score
    (descending, ties by lower index), only the first top_k (> 0) of them; a row with score > 0
    is kept unless a kept row (class >= 0, same class unless force_suppress or id_index < 0)
    overlaps it with IoU >= iou_threshold; rows with score <= 0 pass through unchanged; once
    max_output_size (>= 0) rows are kept the rest are invalid. iou_threshold <= 0: the first
    `valid` rows in input order."""
    n = data_i.shape[0]
    if attrs["iou_threshold"] <= 0:
        return list(range(valid)) + [None] * (n - valid)
    score, cls, coord = attrs["score_index"], attrs["id_index"], attrs["coord_start"]
    top_k, max_out = attrs["top_k"], attrs["max_output_size"]
    threshold = np.float32(attrs["iou_threshold"])
    order = stable_order(data_i[:valid, score], 0, descending=True)
    keep_n = top_k if 0 < top_k < valid else valid
    rows, kept = [], []
    for j in range(keep_n):
        r = int(order[j])
        if max_out >= 0 and len(kept) == max_out:
            rows.append(None)
        elif not data_i[r, score] > 0:
            rows.append(r)
        else:
            k = np.array(kept, dtype=np.int64)
            if cls >= 0:
                same = data_i[k, cls] >= 0
                if not attrs["force_suppress"]:
                    same &= data_i[k, cls] == data_i[r, cls]
                k = k[same]
            if len(k) and _tvm_suppressed(data_i[r], data_i[k], coord, threshold).any():
                rows.append(None)
            else:
                kept.append(r)
                rows.append(r)
    return rows + [None] * (n - keep_n)


@reference("non_max_suppression")
def non_max_suppression(inputs, outputs, attrs):
    """TVM non_max_suppression; valid_count is clamped to [0, N]. return_indices: the kept
    entries' `indices` values that are >= 0, compacted to the front, -1 after, and their count
    (B, 1); otherwise the boxes (invalid entries -1), compacted when invalid_to_bottom (an
    entry counts as valid when its column 0 is >= 0, as in TVM)."""
    data, valid_count, indices = inputs
    b, n, k = data.shape
    if data.shape[2] < attrs["coord_start"] + 4:
        raise ShapeError(f"non_max_suppression: box length {k} is too short")
    for out in outputs:
        out[...] = -1
    for i in range(b):
        valid = min(max(int(valid_count[i]), 0), n)
        rows = tvm_nms_rows(data[i], valid, attrs)
        if attrs["return_indices"]:
            picked = [int(indices[i, r]) for r in rows if r is not None]
            picked = [v for v in picked if v >= 0]
            outputs[0][i, :len(picked)] = picked
            outputs[1][i, 0] = len(picked)
        elif attrs["invalid_to_bottom"]:
            picked = [r for r in rows if r is not None and data[i, r, 0] >= 0]
            outputs[0][i, :len(picked)] = data[i, picked]
        else:
            for j, r in enumerate(rows):
                if r is not None:
                    outputs[0][i, j] = data[i, r]


@reference("nms")
def nms(inputs, outputs, attrs):
    """Simple NMS (shape_funcs.vision.nms_select). One output: exactly the selected indices.
    Two outputs (upper-bound form): selected padded with -1, then the count as a 0-d int64."""
    selected = nms_select(inputs[0], inputs[1], attrs)
    if len(outputs) == 1:
        store("nms", outputs[0], selected)
        return
    if len(selected) > outputs[0].shape[0]:
        raise ShapeError(f"nms: {len(selected)} boxes selected, output holds {outputs[0].shape[0]}")
    outputs[0][...] = -1
    outputs[0][:len(selected)] = selected
    outputs[1][...] = len(selected)


@reference("dyn.strided_slice")
def dyn_strided_slice(inputs, outputs, attrs):
    """strided_slice with begin / end / strides read from the tensor inputs 1..3."""
    x = inputs[0]
    index = [slice(None)] * x.ndim
    for axis, sl in slice_spec(dyn_slice_attrs(inputs, attrs), x.ndim):
        index[axis] = sl
    store("dyn.strided_slice", outputs[0], x[tuple(index)])
