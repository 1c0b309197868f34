"""Neural-network ops: dense, matmul, batch_matmul, softmax, layer_norm."""
from __future__ import annotations

from dynvm.compiler.ir.types import Any, TensorType, is_any
from dynvm.compiler.op.builders import positional
from dynvm.compiler.op.registry import OpDef, get_op, register
from dynvm.compiler.op.type_rels import (FLOAT_DTYPES, NUMERIC_DTYPES, broadcast_dim, check_arity,
                                   check_dtype_in, fail, normalize_axis, same_dtype, tensor_arg,
                                   unify_dim)
from dynvm.shape_funcs.nn import conv2d_out_dim, conv2d_params
from dynvm.vm.errors import ShapeError


def _matmul_args(op, arg_types, ranks):
    check_arity(op, arg_types, 2)
    a, b = (tensor_arg(op, t) for t in arg_types)
    for t, r, what in zip((a, b), ranks, ("first", "second")):
        if r is not None and t.rank != r:
            fail(f"{op}: {what} operand must have rank {r}, got {t}")
    same_dtype(op, [a, b])
    check_dtype_in(op, a, NUMERIC_DTYPES, "operands")
    return a, b


def dense_rel(arg_types, attrs):
    units = attrs["packed_units"]
    if type(units) is not int or units < 0:
        fail(f"dense: packed_units must be an int >= 0, got {units!r}")
    data, weight = _matmul_args("dense", arg_types, (None, 3 if units else 2))
    if data.rank < 1:
        fail(f"dense: data must have rank >= 1, got {data}")
    unify_dim("dense", data.shape[-1], weight.shape[1], "reduction dims (data[-1], weight[1])")
    if not units:
        return TensorType(data.shape[:-1] + (weight.shape[0],), data.dtype)
    strips, width = weight.shape[0], weight.shape[2]
    if attrs["packed_width"] and not is_any(width) and width != attrs["packed_width"]:
        fail(f"dense: a packed weight of strips {width} wide, packed_width={attrs['packed_width']}")
    if not (is_any(strips) or is_any(width)) and not (strips - 1) * width < units <= strips * width:
        fail(f"dense: a packed weight of {strips} strips of {width} does not hold "
             f"packed_units={units}")
    return TensorType(data.shape[:-1] + (units,), data.dtype)


def matmul_rel(arg_types, attrs):
    a, b = _matmul_args("matmul", arg_types, (2, 2))
    unify_dim("matmul", a.shape[1], b.shape[0], "reduction dims (a[1], b[0])")
    return TensorType((a.shape[0], b.shape[1]), a.dtype)


def batch_matmul_rel(arg_types, attrs):
    a, b = _matmul_args("batch_matmul", arg_types, (3, 3))
    batch = broadcast_dim("batch_matmul", a.shape[0], b.shape[0])
    m, ka = (a.shape[2], a.shape[1]) if attrs["transpose_a"] else (a.shape[1], a.shape[2])
    n, kb = (b.shape[1], b.shape[2]) if attrs["transpose_b"] else (b.shape[2], b.shape[1])
    unify_dim("batch_matmul", ka, kb, "reduction dims")
    return TensorType((batch, m, n), a.dtype)


def conv2d_rel(arg_types, attrs):
    """NCHW x OIHW; N, H, W (and any other dim) may be Any: dims derived from them are Any."""
    data, weight = _matmul_args("conv2d", arg_types, (4, 4))
    try:
        (sh, sw), (pt, pl, pb, pr), (dh, dw), groups = conv2d_params(attrs)
    except ShapeError as e:
        fail(str(e))
    n, c, h, w = data.shape
    o, cg, kh, kw = weight.shape
    if not is_any(cg):
        unify_dim("conv2d", c, cg * groups, f"data channels and weight channels x groups={groups}")
    if not is_any(o) and o % groups:
        fail(f"conv2d: {o} output channels are not divisible by groups={groups}")

    def spatial(size, k, stride, lo, hi, dil):
        if is_any(size) or is_any(k):
            return Any()
        try:
            return conv2d_out_dim(size, k, stride, lo, hi, dil)
        except ShapeError as e:
            fail(str(e))
    return TensorType((n, o, spatial(h, kh, sh, pt, pb, dh), spatial(w, kw, sw, pl, pr, dw)),
                      data.dtype)


def softmax_rel(arg_types, attrs):
    check_arity("softmax", arg_types, 1)
    x = tensor_arg("softmax", arg_types[0])
    check_dtype_in("softmax", x, FLOAT_DTYPES)
    normalize_axis("softmax", attrs["axis"], x.rank)
    return x


def layer_norm_rel(arg_types, attrs):
    check_arity("layer_norm", arg_types, 3)
    x, gamma, beta = (tensor_arg("layer_norm", t) for t in arg_types)
    same_dtype("layer_norm", [x, gamma, beta])
    check_dtype_in("layer_norm", x, FLOAT_DTYPES)
    axis = normalize_axis("layer_norm", attrs["axis"], x.rank)
    for t, what in ((gamma, "gamma"), (beta, "beta")):
        if t.rank != 1:
            fail(f"layer_norm: {what} must be 1-D, got {t}")
        unify_dim("layer_norm", t.shape[0], x.shape[axis], f"{what} length and x dim {axis}")
    return x


def _register_all():
    register(OpDef("dense", ("data", "weight"), dense_rel,
                   attrs={"packed_units": 0, "packed_width": 0},
                   pattern="out_elemwise_fusable", family="matmul",
                   doc="dense(data, weight, packed_units=0, packed_width=0): data (..., k) "
                       "times weight (units, k) transposed -> (..., units). With "
                       "packed_units=N > 0 the weight is in the matmul kernels' packed layout "
                       "instead (build() makes it from a constant weight): shape "
                       "(ceil(N/NR), k, NR), weight[s, j, c] = W[s*NR + c, j], zero past N, NR "
                       "= packed_width (a power of two; build() records the kernels' tile "
                       "width on the build machine, 16 float32 / 8 float64 with AVX2, twice "
                       "that with AVX-512, and any machine's kernels read that width; 0: this "
                       "machine's); -> (..., N)."))
    register(OpDef("matmul", ("a", "b"), matmul_rel, pattern="out_elemwise_fusable",
                   family="matmul",
                   doc="matmul(a, b): 2-D matrix product (m, k) x (k, n) -> (m, n)."))
    register(OpDef("batch_matmul", ("a", "b"), batch_matmul_rel,
                   attrs={"transpose_a": False, "transpose_b": True},
                   pattern="out_elemwise_fusable", family="matmul",
                   doc="batch_matmul(a, b, transpose_a=False, transpose_b=True): (B, M, K) x "
                       "(B, N, K) -> (B, M, N); a batch of 1 broadcasts."))
    register(OpDef("conv2d", ("data", "weight"), conv2d_rel,
                   attrs={"strides": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1},
                   pattern="out_elemwise_fusable", family="conv2d",
                   doc="conv2d(data, weight, strides=[1, 1], padding=[0, 0], dilation=[1, 1], "
                       "groups=1): NCHW data (N, C, H, W) x OIHW weight (O, C/groups, KH, KW) -> "
                       "(N, O, OH, OW); padding is 1, 2 (top/bottom, left/right) or 4 (top, "
                       "left, bottom, right) ints, as in Relay."))
    get_op("conv2d").make = positional("conv2d")
    register(OpDef("softmax", ("x",), softmax_rel, attrs={"axis": -1}, pattern="opaque",
                   family="softmax",
                   doc="softmax(x, axis=-1): exp(x) / sum(exp(x)) along axis, computed stably."))
    register(OpDef("layer_norm", ("x", "gamma", "beta"), layer_norm_rel,
                   attrs={"axis": -1, "epsilon": 1e-5}, pattern="opaque",
                   family="layer_norm",
                   doc="layer_norm(x, gamma, beta, axis=-1, epsilon=1e-5): normalise along axis "
                       "to mean 0 / variance 1, then scale by gamma and shift by beta."))
    for name in ("batch_matmul", "softmax", "layer_norm"):
        get_op(name).make = positional(name)


_register_all()
