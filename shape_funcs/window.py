"""Window ops: pool (max / average pooling over the last 1, 2 or 3 dims, ONNX's semantics) and
roi_align (bilinear samples of regions of interest, ONNX's RoiAlign).

`pool_params` and `roi_align_params` are the one reading of each op's attrs (the type
relation, these shape functions, the kernels and the numpy references all use them);
`pool_out_dim` the one output-extent rule of pooling.
"""
from __future__ import annotations

from dynvm.shape_funcs.common import fails, select
from dynvm.shape_funcs.registry import shape_func
from dynvm.vm.errors import ShapeError

POOL_MODES = ("max", "avg")


def _ints(value, n, what, low):
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value):
        raise ShapeError(f"pool: {what} must be {n} ints >= {low}, got {value!r}")
    return tuple(value)


def _given(attrs, key, default):
    """attrs[key], or `default` when it is missing or None (the op's default)."""
    value = attrs.get(key)
    return default if value is None else value


def pool_params(attrs) -> tuple:
    """(mode, kernel, strides, dilation, pads_begin, pads_end, ceil_mode, count_include_pad):
    kernel/strides/dilation hold one int per pooled dim (1, 2 or 3), `padding` holds the begin
    pads then the end pads (ONNX order). ShapeError for anything else."""
    mode = attrs.get("mode", "max")
    if mode not in POOL_MODES:
        raise ShapeError(f"pool: mode must be one of {POOL_MODES}, got {mode!r}")
    kernel = attrs.get("pool_size")
    if not isinstance(kernel, (list, tuple)) or len(kernel) not in (1, 2, 3):
        raise ShapeError(f"pool: pool_size must be 1, 2 or 3 ints, got {kernel!r}")
    n = len(kernel)
    kernel = _ints(kernel, n, "pool_size", 1)
    strides = _ints(_given(attrs, "strides", [1] * n), n, "strides", 1)
    dilation = _ints(_given(attrs, "dilation", [1] * n), n, "dilation", 1)
    pads = _ints(_given(attrs, "padding", [0] * 2 * n), 2 * n, "padding", 0)
    flags = []
    for key in ("ceil_mode", "count_include_pad"):
        if not isinstance(attrs.get(key, False), bool):
            raise ShapeError(f"pool: {key} must be a bool, got {attrs.get(key)!r}")
        flags.append(attrs.get(key, False))
    return (mode, kernel, strides, dilation, pads[:n], pads[n:], *flags)


def pool_out_dim(size, kernel: int, stride: int, dilation: int, lo: int, hi: int,
                 ceil_mode: bool):
    """Windows along one dim: floor((size + lo + hi - span) / stride) + 1, rounded up with
    ceil_mode, where a last window starting inside the end padding is dropped (ONNX, PyTorch).
    ShapeError when the dilated window exceeds the padded input."""
    span = dilation * (kernel - 1) + 1
    room = size + lo + hi - span
    if fails(room >= 0):
        raise ShapeError(f"pool: window extent {kernel} (dilated {span}) does not fit the "
                         f"padded input extent {size + lo + hi}")
    if not ceil_mode:
        return room // stride + 1
    out = (room + stride - 1) // stride + 1
    return select((out - 1) * stride >= size + lo, out - 1, out)


@shape_func("pool")
def pool(inputs, attrs):
    shape = tuple(inputs[0].shape)
    _, kernel, strides, dilation, lo, hi, ceil_mode, _ = pool_params(attrs)
    n = len(kernel)
    if len(shape) != 2 + n:
        raise ShapeError(f"pool: a {n}-D window needs data of rank {2 + n} (N, C, spatial...), "
                         f"got shape {shape}")
    spatial = tuple(pool_out_dim(shape[2 + i], kernel[i], strides[i], dilation[i], lo[i], hi[i],
                                 ceil_mode) for i in range(n))
    return [shape[:2] + spatial]


# ---------------------------------------------------------------------------------------------
# roi_align

ROI_MODES = ("avg", "max")
ROI_COORDINATES = ("half_pixel", "output_half_pixel")


def roi_align_params(attrs) -> tuple:
    """(mode, output_height, output_width, sampling_ratio, spatial_scale, half_pixel);
    ShapeError for a bad attribute."""
    mode, coords = attrs.get("mode", "avg"), attrs.get("coordinate_transformation_mode",
                                                       "half_pixel")
    if mode not in ROI_MODES or coords not in ROI_COORDINATES:
        raise ShapeError(f"roi_align: mode must be one of {ROI_MODES} and "
                         f"coordinate_transformation_mode one of {ROI_COORDINATES}, got "
                         f"{mode!r}, {coords!r}")
    ints = [attrs.get(k, d) for k, d in (("output_height", 1), ("output_width", 1),
                                         ("sampling_ratio", 0))]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or min(ints[:2]) < 1 \
            or ints[2] < 0:
        raise ShapeError(f"roi_align: output_height and output_width must be ints >= 1 and "
                         f"sampling_ratio an int >= 0, got {ints}")
    scale = attrs.get("spatial_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale:
        raise ShapeError(f"roi_align: spatial_scale must be a number, got {scale!r}")
    return mode, ints[0], ints[1], ints[2], float(scale), coords == "half_pixel"


@shape_func("roi_align")
def roi_align(inputs, attrs):
    data, rois, batch = (tuple(t.shape) for t in inputs)
    _, oh, ow, *_ = roi_align_params(attrs)
    if len(data) != 4 or len(rois) != 2 or len(batch) != 1:
        raise ShapeError(f"roi_align: data must be (N, C, H, W), rois (R, 4) and batch_indices "
                         f"(R,), got {data}, {rois}, {batch}")
    if fails((rois[1] == 4) & (batch[0] == rois[0])):
        raise ShapeError(f"roi_align: rois must be (R, 4) and batch_indices (R,), got {rois} "
                         f"and {batch}")
    return [(rois[0], data[1], oh, ow)]


# ---------------------------------------------------------------------------------------------
# col2im


def col2im_params(attrs) -> tuple:
    """((sh, sw), (dh, dw), (top, left, bottom, right), (extra_h, extra_w)): strides and
    dilation >= 1; padding (begins then ends) may be negative (it then adds output cells);
    output_padding >= 0 extends the end."""
    strides = _ints(_given(attrs, "strides", [1, 1]), 2, "strides", 1)
    dilation = _ints(_given(attrs, "dilation", [1, 1]), 2, "dilation", 1)
    pads = _ints(_given(attrs, "padding", [0, 0, 0, 0]), 4, "padding", -(1 << 31))
    extra = _ints(_given(attrs, "output_padding", [0, 0]), 2, "output_padding", 0)
    return strides, dilation, pads, extra


def col2im_out_dim(size, kernel, stride: int, dilation: int, lo: int, hi: int, extra: int):
    """(size - 1) * stride + dilation * (kernel - 1) + 1 + extra - lo - hi, ConvTranspose's
    output extent (ShapeError when negative)."""
    out = (size - 1) * stride + dilation * (kernel - 1) + 1 + extra - lo - hi
    if fails(out >= 0):
        raise ShapeError(f"col2im: padding {lo} + {hi} exceeds the output extent "
                         f"{out + lo + hi}")
    return out


@shape_func("col2im")
def col2im(inputs, attrs):
    shape = tuple(inputs[0].shape)
    (sh, sw), (dh, dw), (pt, pl, pb, pr), (eh, ew) = col2im_params(attrs)
    if len(shape) != 6:
        raise ShapeError(f"col2im: data must be (N, C, KH, KW, H, W), got shape {shape}")
    n, c, kh, kw, h, w = shape
    return [(n, c, col2im_out_dim(h, kh, sh, dh, pt, pb, eh),
             col2im_out_dim(w, kw, sw, dw, pl, pr, ew))]
