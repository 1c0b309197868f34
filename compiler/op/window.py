"""Window ops: pool (max or average pooling over the last 1, 2 or 3 dims of (N, C, ...) data),
roi_align (ONNX's RoiAlign: bilinear samples averaged or maxed over regions of interest) and
col2im (the scatter-add of a transposed convolution).

Native kernels: family "window" (kernels/window.py); numpy references in
tests/numpy_reference.py; attrs and output extents in shape_funcs/window.py.
"""
from __future__ import annotations

from dynvm.compiler.ir.types import Any, TensorType, is_any
from dynvm.compiler.op.builders import positional
from dynvm.compiler.op.registry import REQUIRED, OpDef, get_op, register
from dynvm.compiler.op.type_rels import (FLOAT_DTYPES, NUMERIC_DTYPES, check_arity,
                                         check_dtype_in, fail, tensor_arg, unify_dim)
from dynvm.shape_funcs.window import (col2im_out_dim, col2im_params, pool_out_dim, pool_params,
                                      roi_align_params)
from dynvm.vm.errors import ShapeError


def pool_rel(arg_types, attrs):
    """Any N, C or spatial dim may be Any: the output dims derived from it are Any."""
    check_arity("pool", arg_types, 1)
    x = tensor_arg("pool", arg_types[0], "data")
    try:
        mode, kernel, strides, dilation, lo, hi, ceil_mode, _ = pool_params(attrs)
    except ShapeError as e:
        fail(str(e))
    check_dtype_in("pool", x, NUMERIC_DTYPES if mode == "max" else FLOAT_DTYPES, "data")
    n = len(kernel)
    if x.rank != 2 + n:
        fail(f"pool: a {n}-D window needs data of rank {2 + n} (N, C, spatial...), got {x}")

    def spatial(i):
        size = x.shape[2 + i]
        if is_any(size):
            return Any()
        try:
            return pool_out_dim(size, kernel[i], strides[i], dilation[i], lo[i], hi[i], ceil_mode)
        except ShapeError as e:
            fail(str(e))
    return TensorType(x.shape[:2] + tuple(spatial(i) for i in range(n)), x.dtype)


def roi_align_rel(arg_types, attrs):
    check_arity("roi_align", arg_types, 3)
    data, rois, batch = (tensor_arg("roi_align", t, w)
                         for t, w in zip(arg_types, ("data", "rois", "batch_indices")))
    try:
        _, oh, ow, *_ = roi_align_params(attrs)
    except ShapeError as e:
        fail(str(e))
    check_dtype_in("roi_align", data, FLOAT_DTYPES, "data")
    if rois.dtype != data.dtype or batch.dtype != "int64":
        fail(f"roi_align: rois need data's dtype {data.dtype} and batch_indices int64, got "
             f"{rois} and {batch}")
    if data.rank != 4 or rois.rank != 2 or batch.rank != 1:
        fail(f"roi_align: data must be (N, C, H, W), rois (R, 4) and batch_indices (R,), got "
             f"{data}, {rois}, {batch}")
    unify_dim("roi_align", rois.shape[1], 4, "roi length")
    r = unify_dim("roi_align", rois.shape[0], batch.shape[0], "roi counts (rois, batch_indices)")
    return TensorType((r, data.shape[1], oh, ow), data.dtype)


def col2im_rel(arg_types, attrs):
    check_arity("col2im", arg_types, 1)
    x = tensor_arg("col2im", arg_types[0], "data")
    check_dtype_in("col2im", x, FLOAT_DTYPES, "data")
    if x.rank != 6:
        fail(f"col2im: data must be (N, C, KH, KW, H, W), got {x}")
    try:
        strides, dilation, pads, extra = col2im_params(attrs)
    except ShapeError as e:
        fail(str(e))
    n, c, kh, kw, h, w = x.shape

    def spatial(i, size, k):
        if is_any(size) or is_any(k):
            return Any()
        try:
            return col2im_out_dim(size, k, strides[i], dilation[i], pads[i], pads[2 + i], extra[i])
        except ShapeError as e:
            fail(str(e))
    return TensorType((n, c, spatial(0, h, kh), spatial(1, w, kw)), x.dtype)


def _register_all():
    register(OpDef("pool", ("data",), pool_rel,
                   attrs={"pool_size": REQUIRED, "mode": "max", "strides": None,
                          "dilation": None, "padding": None, "ceil_mode": False,
                          "count_include_pad": False},
                   kernel="compiled", family="window", pattern="opaque",
                   doc="pool(data, pool_size, mode='max', strides=None, dilation=None, "
                       "padding=None, ceil_mode=False, count_include_pad=False): max or "
                       "average ('avg') of each window over the last 1, 2 or 3 dims of "
                       "(N, C, ...) data, ONNX's MaxPool/AveragePool. strides and "
                       "dilation default to 1s; padding (default 0s) is the begin pads then "
                       "the end pads; padded cells never win a max; an average divides by the "
                       "window's cells inside the data, or with count_include_pad inside the "
                       "padded data (cells that only ceil_mode adds never count)."))
    register(OpDef("roi_align", ("data", "rois", "batch_indices"), roi_align_rel,
                   attrs={"mode": "avg", "output_height": 1, "output_width": 1,
                          "sampling_ratio": 0, "spatial_scale": 1.0,
                          "coordinate_transformation_mode": "half_pixel"},
                   kernel="compiled", family="window", pattern="opaque",
                   doc="roi_align(data (N, C, H, W), rois (R, 4), batch_indices (R,) int64, "
                       "mode='avg', output_height=1, output_width=1, sampling_ratio=0, "
                       "spatial_scale=1.0, coordinate_transformation_mode='half_pixel') -> "
                       "(R, C, output_height, output_width): ONNX's RoiAlign. Each roi row "
                       "[x1, y1, x2, y2] (scaled by spatial_scale; half_pixel shifts by -0.5, "
                       "output_half_pixel makes it at least 1 x 1) is cut into output bins; "
                       "each bin averages (or maxes) sampling_ratio x sampling_ratio bilinear "
                       "samples (0: ceil(bin size) per dim) of image batch_indices[r]. A "
                       "sample more than one cell outside the image counts as 0."))
    register(OpDef("col2im", ("data",), col2im_rel,
                   attrs={"strides": [1, 1], "dilation": [1, 1], "padding": [0, 0, 0, 0],
                          "output_padding": [0, 0]},
                   kernel="compiled", family="window", pattern="opaque",
                   doc="col2im(data (N, C, KH, KW, H, W), strides=[1, 1], dilation=[1, 1], "
                       "padding=[0, 0, 0, 0], output_padding=[0, 0]) -> (N, C, OH, OW): the "
                       "transposed convolution's scatter-add, as a gather: out[n, c, y, x] sums "
                       "data[n, c, ky, kx, iy, ix] over y = iy * sh - top + ky * dh (same for "
                       "x); OH = (H - 1) * sh + dh * (KH - 1) + 1 + output_padding - top - "
                       "bottom. padding is the begin pads then the end pads; negative pads add "
                       "output cells. ConvTranspose is a batch_matmul into (N, C, KH, KW, H, W) "
                       "and this."))
    for name in ("pool", "roi_align", "col2im"):
        get_op(name).make = positional(name)


_register_all()
