"""Neural-network ops."""
from __future__ import annotations

from dynvm.shape_funcs.common import broadcast, fails, normalize_axis
from dynvm.shape_funcs.registry import shape_func
from dynvm.vm.errors import ShapeError


def _same(op: str, a: int, b: int, what: str):
    if fails(a == b):
        raise ShapeError(f"{op}: {what} differ ({a} vs {b})")


@shape_func("dense")
def dense(inputs, attrs):
    """(..., units): units = weight[0], or packed_units for a packed weight (strips, k, NR)."""
    data, weight = inputs[0].shape, inputs[1].shape
    _same("dense", data[-1], weight[1], "reduction dims data[-1] and weight[1]")
    units = attrs.get("packed_units", 0)
    if not units:
        return [data[:-1] + (weight[0],)]
    strips, width = weight[0], weight[2]
    if fails((strips - 1) * width < units) or fails(units <= strips * width):
        raise ShapeError(f"dense: a packed weight of {strips} strips of {width} does not hold "
                         f"packed_units={units}")
    return [data[:-1] + (units,)]


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


# ---------------------------------------------------------------- conv2d (NCHW)

def _pair(op: str, value, what: str) -> tuple:
    """An int or a list of 1 or 2 ints -> (h, w)."""
    vals = [value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple)) \
        else None
    if vals is None or not 1 <= len(vals) <= 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ShapeError(f"{op}: {what} must be an int or 1-2 ints, got {value!r}")
    return (vals[0], vals[-1])


def conv2d_params(attrs) -> tuple:
    """((sh, sw), (top, left, bottom, right), (dh, dw), groups) from conv2d attrs, Relay style:
    padding of 1 value pads all sides, 2 values are (top/bottom, left/right), 4 are
    (top, left, bottom, right). Strides and dilation must be >= 1, padding >= 0, groups >= 1."""
    strides = _pair("conv2d", attrs.get("strides", (1, 1)), "strides")
    dilation = _pair("conv2d", attrs.get("dilation", (1, 1)), "dilation")
    pad = attrs.get("padding", (0, 0))
    pad = [pad] if isinstance(pad, int) and not isinstance(pad, bool) else pad
    if not isinstance(pad, (list, tuple)) or len(pad) not in (1, 2, 4) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in pad):
        raise ShapeError(f"conv2d: padding must be 1, 2 or 4 ints, got {pad!r}")
    pad = tuple(pad) * 4 if len(pad) == 1 else tuple(pad) * 2 if len(pad) == 2 else tuple(pad)
    groups = attrs.get("groups", 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ShapeError(f"conv2d: groups must be an int >= 1, got {groups!r}")
    if min(strides + dilation) < 1 or min(pad) < 0:
        raise ShapeError(f"conv2d: strides and dilation must be >= 1 and padding >= 0, got "
                         f"strides={strides}, dilation={dilation}, padding={pad}")
    return strides, pad, dilation, groups


def conv2d_out_dim(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int,
                   dilation: int) -> int:
    """Output extent of one spatial dim; ShapeError when the dilated kernel exceeds the
    padded input."""
    span = dilation * (kernel - 1) + 1
    if fails((kernel >= 1) & (size + pad_lo + pad_hi >= span)):
        raise ShapeError(f"conv2d: kernel extent {kernel} (dilated {span}) does not fit the "
                         f"padded input extent {size + pad_lo + pad_hi}")
    return (size + pad_lo + pad_hi - span) // stride + 1


@shape_func("conv2d")
def conv2d(inputs, attrs):
    data, weight = inputs[0].shape, inputs[1].shape
    if len(data) != 4 or len(weight) != 4:
        raise ShapeError(f"conv2d: data and weight must be 4-D (NCHW, OIHW), got {data}, {weight}")
    (sh, sw), (pt, pl, pb, pr), (dh, dw), groups = conv2d_params(attrs)
    n, c, h, w = data
    o, cg, kh, kw = weight
    if fails((c == cg * groups) & (o % groups == 0)):
        raise ShapeError(f"conv2d: data has {c} channels, weight {weight} with groups={groups} "
                         f"needs {cg * groups} and output channels divisible by groups")
    return [(n, o, conv2d_out_dim(h, kh, sh, pt, pb, dh), conv2d_out_dim(w, kw, sw, pl, pr, dw))]
