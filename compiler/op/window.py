"""Window ops: pool (max or average pooling over the last 1 or 2 dims of (N, C, ...) data).

Native kernel: family "window" (kernels/window.py); numpy reference in tests/numpy_reference.py;
attrs and output extents in shape_funcs/window.py (`pool_params`, `pool_out_dim`).
"""
from __future__ import annotations

from dynvm.compiler.ir.types import Any, TensorType, is_any
from dynvm.compiler.op.builders import positional
from dynvm.compiler.op.registry import REQUIRED, OpDef, get_op, register
from dynvm.compiler.op.type_rels import (FLOAT_DTYPES, NUMERIC_DTYPES, check_arity,
                                         check_dtype_in, fail, tensor_arg)
from dynvm.shape_funcs.window import pool_out_dim, pool_params
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


def _register_all():
    register(OpDef("pool", ("data",), pool_rel,
                   attrs={"mode": "max", "pool_size": REQUIRED, "strides": None,
                          "dilation": None, "padding": None, "ceil_mode": False,
                          "count_include_pad": False},
                   kernel="compiled", family="window", pattern="opaque",
                   doc="pool(data, mode='max', pool_size, strides=1s, dilation=1s, padding=0s, "
                       "ceil_mode=False, count_include_pad=False): max or average ('avg') of "
                       "each window over the last 1 or 2 dims of (N, C, W) or (N, C, H, W) "
                       "data, ONNX's MaxPool/AveragePool. padding is the begin pads then the "
                       "end pads; padded cells never win a max; an average divides by the "
                       "window's cells inside the data, or with count_include_pad inside the "
                       "padded data (cells that only ceil_mode adds never count)."))
    get_op("pool").make = positional("pool")


_register_all()
