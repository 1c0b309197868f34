"""Kernel family "window": pool, max or average pooling over the last 1 or 2 dims of (N, C, W)
or (N, C, H, W) data (ONNX's MaxPool / AveragePool; attrs read by shape_funcs/window.py's
`pool_params`, the numpy reference in tests/numpy_reference.py).

One direct loop nest per (n, c) plane: for each output position the window's taps that fall
inside the data are found arithmetically (the first and last tap index per dim), so the inner
loops run over exactly those taps with no bounds test and padded cells are never loaded. A 1-D
pool is the 2-D loop nest with a height of 1. Planes are independent items of `split_for`: on
the kernel threads when outputs x window cells reach the "reduce" family's PARALLEL_WORK.

Semantics: max keeps the first of equal values and ignores NaN (`v > acc`), like ONNX Runtime;
a window with no cell inside the data gives -inf (the dtype's minimum for ints). avg sums in
the dtype and divides by the window's cells inside the data, or with count_include_pad by its
cells inside the padded data (cells that only ceil_mode adds never count). Any strides (NULL =
compact); the output extents are checked against the attrs before the first store (ERR_SHAPE).
"""
from __future__ import annotations

from llvmlite import ir

from dynvm.kernels.abi import ERR_SHAPE
from dynvm.kernels.family import Family, register
from dynvm.kernels.llvm_util import (MEM_TYPE, c64, check, check_data, const, dot_offset, for_range,
                                     is_float, load, load_strides, new_function, parallel_work,
                                     product, prologue, return_zero_if, smax, smin, split_for,
                                     store)
from dynvm.kernels.sort import single_variant
from dynvm.shape_funcs.window import pool_params
from dynvm.vm.errors import KernelError, ShapeError

DTYPES = {"max": ("float32", "float64", "int32", "int64"), "avg": ("float32", "float64")}
NO_HINTS = dict(vectorize=False, unroll=False)   # strided, data-dependent trip counts


def _params(spec):
    """pool_params as 2-D: a 1-D pool gets a leading window dim of extent 1."""
    mode, kernel, strides, dilation, lo, hi, ceil_mode, include = pool_params(spec)
    if len(kernel) == 1:
        kernel, strides, dilation = (1,) + kernel, (1,) + strides, (1,) + dilation
        lo, hi = (0,) + lo, (0,) + hi
    return mode, kernel, strides, dilation, lo, hi, ceil_mode, include


def _out_dim(b, size, k, s, d, lo, hi, ceil_mode):
    """pool_out_dim in IR; ERR_SHAPE when the dilated window does not fit."""
    room = b.add(size, c64(lo + hi - (d * (k - 1) + 1)))
    check(b, b.icmp_signed(">=", room, c64(0)), ERR_SHAPE | 2 << 16)
    if not ceil_mode:
        return b.add(b.sdiv(room, c64(s)), c64(1))
    out = b.add(b.sdiv(b.add(room, c64(s - 1)), c64(s)), c64(1))
    past = b.icmp_signed(">=", b.mul(b.sub(out, c64(1)), c64(s)), b.add(size, c64(lo)))
    return b.select(past, b.sub(out, c64(1)), out)


def _ceil_div(b, a, d):
    """ceil(max(a, 0) / d) for a constant d >= 1."""
    return b.sdiv(b.add(smax(b, a, c64(0)), c64(d - 1)), c64(d))


def _taps(b, start, size, k, d):
    """[first, stop) of the taps t < k with 0 <= start + t*d < size (stop may be <= first)."""
    first = _ceil_div(b, b.sub(c64(0), start), d)
    return first, smin(b, c64(k), _ceil_div(b, b.sub(size, start), d))


def _pool(module, symbol, sig, spec):
    mode, kernel, strides, dilation, lo, hi, ceil_mode, include = _params(spec)
    dtype = sig[0][0]
    ty = MEM_TYPE[dtype]
    fn, b = new_function(module, symbol)
    (x, xe, xsp), (o, oe, osp) = prologue(b, *fn.args, sig)
    xs, os_ = load_strides(b, xe, xsp), load_strides(b, oe, osp)
    if len(xe) == 3:                       # 1-D: height 1
        xe, xs = xe[:2] + [c64(1)] + xe[2:], xs[:2] + [c64(0)] + xs[2:]
        oe, os_ = oe[:2] + [c64(1)] + oe[2:], os_[:2] + [c64(0)] + os_[2:]
    n, ch, h, w = xe
    oh = _out_dim(b, h, kernel[0], strides[0], dilation[0], lo[0], hi[0], ceil_mode)
    ow = _out_dim(b, w, kernel[1], strides[1], dilation[1], lo[1], hi[1], ceil_mode)
    for j, (got, want) in enumerate(zip(oe, (n, ch, oh, ow))):
        dim = j if sig[1][1] == 4 or j < 2 else j - 1      # the output's own dim
        check(b, b.icmp_signed("==", got, want), ERR_SHAPE | 1 << 8 | dim << 16)
    return_zero_if(b, b.icmp_signed("==", product(b, oe), c64(0)))
    check_data(b, [(o, None, None)])
    # x may be empty (and NULL) when every window lies in the padding: no tap is then loaded
    planes = b.mul(n, ch)
    work = b.mul(product(b, oe[2:]), c64(kernel[0] * kernel[1]))
    worth = b.icmp_signed(">=", b.mul(planes, work), c64(parallel_work(spec, "reduce", "pool")))

    def chunk(cb, vals, first, stop):
        x_, o_, xs_, os2, (ch_, h_, w_, oh_, ow_) = vals
        init = (const(ty, float("-inf")) if mode == "max" and is_float(dtype)
                else const(ty, -(1 << (ty.width - 1))) if mode == "max" else const(ty, 0.0))

        def combine(acc, v):
            if mode == "avg":
                return cb.fadd(acc, v)
            bigger = cb.fcmp_ordered(">", v, acc) if is_float(dtype) else cb.icmp_signed(">", v, acc)
            return cb.select(bigger, v, acc)

        def plane(p):
            ni, ci = cb.sdiv(p, ch_), cb.srem(p, ch_)
            xbase = dot_offset(cb, [ni, ci], xs_[:2])
            obase = dot_offset(cb, [ni, ci], os2[:2])

            def row(oy):
                y0 = cb.sub(cb.mul(oy, c64(strides[0])), c64(lo[0]))
                ylo, yhi = _taps(cb, y0, h_, kernel[0], dilation[0])

                def col(ox):
                    x0 = cb.sub(cb.mul(ox, c64(strides[1])), c64(lo[1]))
                    xlo, xhi = _taps(cb, x0, w_, kernel[1], dilation[1])

                    def tap_row(ky, acc):
                        yoff = cb.add(xbase, cb.mul(cb.add(y0, cb.mul(ky, c64(dilation[0]))), xs_[2]))

                        def tap(kx, acc2):
                            xi = cb.add(x0, cb.mul(kx, c64(dilation[1])))
                            return [combine(acc2[0], load(cb, x_, cb.add(yoff, cb.mul(xi, xs_[3])), ty))]
                        return for_range(cb, xlo, xhi, tap, carried=acc, **NO_HINTS)[1]
                    acc = for_range(cb, ylo, yhi, tap_row, carried=[init], **NO_HINTS)[1][0]
                    if mode == "avg":
                        if include:
                            cy = smin(cb, c64(kernel[0]),
                                      _ceil_div(cb, cb.sub(cb.add(h_, c64(hi[0])), y0), dilation[0]))
                            cx = smin(cb, c64(kernel[1]),
                                      _ceil_div(cb, cb.sub(cb.add(w_, c64(hi[1])), x0), dilation[1]))
                        else:
                            cy, cx = smax(cb, cb.sub(yhi, ylo), c64(0)), smax(cb, cb.sub(xhi, xlo), c64(0))
                        acc = cb.fdiv(acc, cb.sitofp(cb.mul(cy, cx), ty))
                    store(cb, acc, o_, cb.add(obase, dot_offset(cb, [oy, ox], os2[2:])))
                for_range(cb, 0, ow_, col, **NO_HINTS)
            for_range(cb, 0, oh_, row, **NO_HINTS)
        for_range(cb, first, stop, plane, **NO_HINTS)

    split_for(b, [x, o, xs, os_, (ch, h, w, oh, ow)], planes, chunk, worth)
    b.ret(const(ir.IntType(32), 0))


def _check(spec, inputs, outputs):
    what = "pool kernel"
    if spec.get("op") != "pool":
        raise KernelError(f"window family: unknown op {spec.get('op')!r}")
    try:
        mode, kernel, *_ = pool_params(spec)
    except ShapeError as e:
        raise KernelError(f"{what}: {e}") from None
    rank = 2 + len(kernel)
    if len(inputs) != 1 or len(outputs) != 1:
        raise KernelError(f"{what}: needs 1 input and 1 output")
    (xd, xr), (od, orank) = inputs[0], outputs[0]
    if xd != od or xd not in DTYPES[mode]:
        raise KernelError(f"{what}: data and output need one dtype of {DTYPES[mode]} ({mode})")
    if (xr, orank) != (rank, rank):
        raise KernelError(f"{what}: a {len(kernel)}-D window needs data and output of rank "
                          f"{rank}, got {xr} and {orank}")
    parallel_work(spec, "reduce", what)


def _emit(module, symbol, spec, inputs, outputs):
    sig = [tuple(t) for t in inputs] + [tuple(t) for t in outputs]
    return single_variant(module, symbol, sig, lambda m, s, g: _pool(m, s, g, spec))


FAMILY = register(Family("window", _check, _emit))
