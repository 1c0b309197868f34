"""Kernel family "window": pool, max or average pooling over the last 1, 2 or 3 dims of
(N, C, ...) data (ONNX's MaxPool / AveragePool), col2im (the scatter-add of ConvTranspose) and
roi_align (ONNX's RoiAlign). Attrs are read by shape_funcs/window.py (`pool_params`,
`col2im_params`, `roi_align_params`); the numpy references are in tests/numpy_reference.py.

pool: one direct loop nest per (n, c) plane, built recursively over the pooled dims: for each
output position the window's taps that fall inside the data are found arithmetically (the
first and last tap index per dim). A window wholly inside the data (windows of up to
MAX_UNROLLED_TAPS taps) is straight-line code, one load per tap at a constant offset; a window
crossing the border loops over exactly its taps inside the data with no bounds test, so padded
cells are never loaded. Planes are independent items of `split_for`: on
the kernel threads when outputs x window cells reach the "reduce" family's PARALLEL_WORK.
max keeps the first of equal values and ignores NaN (`v > acc`), like ONNX Runtime; a window
with no cell inside the data gives -inf (the dtype's minimum for ints). avg sums in the dtype
and divides by the window's cells inside the data, or with count_include_pad by its cells
inside the padded data (cells that only ceil_mode adds never count).

col2im (after ConvTranspose's GEMM) is computed as a gather: each output cell sums the (tap,
input cell) pairs that land on it; with dilation 1 only every stride-th tap can, so the tap
loops step by the stride from the first such tap. Planes are independent `split_for` items and
the sum's order is fixed (any thread count).

roi_align: one item of `split_for` per (roi, channel); the roi's geometry is computed in the
data's dtype in the order ONNX Runtime uses (so the sample positions agree), every sample's
four bilinear taps are loaded only when the sample lies within one cell of the image (else it
contributes 0, as in ONNX Runtime). A batch index outside [0, N) returns ERR_VALUE before the
first store.

Every kernel takes any strides (NULL = compact) and checks its output extents against the
attrs before the first store (ERR_SHAPE).
"""
from __future__ import annotations

import itertools
import math

from dynvm.kernels.abi import ERR_SHAPE, ERR_VALUE
from dynvm.kernels.family import Family, register
from dynvm.kernels.llvm_util import (I32, MEM_TYPE, all_of, c64, check, check_data, const,
                                     dot_offset, eq, for_range, if_then, intrinsic, is_float,
                                     load, load_strides, new_function, parallel_work, product,
                                     prologue, return_zero_if, smax, smin, split_for, store)
from dynvm.kernels.sort import single_variant
from dynvm.shape_funcs.window import col2im_params, pool_params, roi_align_params
from dynvm.vm.errors import KernelError, ShapeError

DTYPES = {"max": ("float32", "float64", "int32", "int64"), "avg": ("float32", "float64")}
NO_HINTS = dict(vectorize=False, unroll=False)   # strided, data-dependent trip counts
MAX_UNROLLED_TAPS = 64    # pool windows of up to this many taps get a straight-line interior


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
    """One loop per pooled dim over the output, then one per dim over the window's taps that
    fall inside the data (1 to 3 dims, written once: the nests are built recursively)."""
    mode, kernel, strides, dilation, lo, hi, ceil_mode, include = pool_params(spec)
    dims = len(kernel)
    dtype = sig[0][0]
    ty = MEM_TYPE[dtype]
    fn, b = new_function(module, symbol)
    (x, xe, xsp), (o, oe, osp) = prologue(b, *fn.args, sig)
    xs, os_ = load_strides(b, xe, xsp), load_strides(b, oe, osp)
    sizes = xe[2:]
    outs = [_out_dim(b, sizes[i], kernel[i], strides[i], dilation[i], lo[i], hi[i], ceil_mode)
            for i in range(dims)]
    for j, (got, want) in enumerate(zip(oe, xe[:2] + outs)):
        check(b, b.icmp_signed("==", got, want), ERR_SHAPE | 1 << 8 | j << 16)
    return_zero_if(b, b.icmp_signed("==", product(b, oe), c64(0)))
    check_data(b, [(o, None, None)])
    # x may be empty (and NULL) when every window lies in the padding: no tap is then loaded
    planes = b.mul(xe[0], xe[1])
    work = b.mul(product(b, oe), c64(math.prod(kernel)))
    worth = b.icmp_signed(">=", work, c64(parallel_work(spec, "reduce", "pool")))
    if mode == "avg":
        init = const(ty, 0.0)
    else:
        init = const(ty, float("-inf") if is_float(dtype) else -(1 << (ty.width - 1)))

    def chunk(cb, vals, first, stop):
        x_, o_, xs_, os2, ch_, sizes_, outs_ = vals

        def combine(acc, v):
            if mode == "avg":
                return cb.fadd(acc, v)
            bigger = (cb.fcmp_ordered(">", v, acc) if is_float(dtype)
                      else cb.icmp_signed(">", v, acc))
            return cb.select(bigger, v, acc)

        def cells(axis, start, first_tap, stop_tap):
            """The divisor's factor along one axis (avg only)."""
            if not include:
                return smax(cb, cb.sub(stop_tap, first_tap), c64(0))
            end = cb.sub(cb.add(sizes_[axis], c64(hi[axis])), start)
            return smin(cb, c64(kernel[axis]), _ceil_div(cb, end, dilation[axis]))

        # a window wholly inside the data (the common case) is straight-line code: one load
        # per tap at a constant tap offset, a constant divisor
        unrolled = math.prod(kernel) <= MAX_UNROLLED_TAPS
        tap_offsets = [dot_offset(cb, [c64(t * d) for t, d in zip(tap, dilation)], xs_[2:])
                       for tap in itertools.product(*map(range, kernel))] if unrolled else []

        def whole(corner):
            acc = init
            for off in tap_offsets:
                acc = combine(acc, load(cb, x_, cb.add(corner, off), ty))
            return cb.fdiv(acc, const(ty, float(len(tap_offsets)))) if mode == "avg" else acc

        def window(xbase, windows):
            """The reduced value of the window at (start, first tap, stop tap) per axis."""
            if not unrolled:
                return partial(xbase, windows)
            inside = all_of(cb, [cb.and_(eq(cb, w[1], c64(0)), eq(cb, w[2], c64(k)))
                                 for w, k in zip(windows, kernel)])
            corner = cb.add(xbase, dot_offset(cb, [w[0] for w in windows], xs_[2:]))
            return if_then(cb, inside, lambda _: [whole(corner)],
                           lambda _: [partial(xbase, windows)], carried=[init])[0]

        def partial(xbase, windows):
            """The window at (start, first tap, stop tap) per axis, clipped to the data."""
            def taps(axis, offset, acc):
                if axis == dims:
                    return [combine(acc[0], load(cb, x_, offset, ty))]
                start, first_tap, stop_tap = windows[axis]

                def tap(k, acc2):
                    i = cb.add(start, cb.mul(k, c64(dilation[axis])))
                    return taps(axis + 1, cb.add(offset, cb.mul(i, xs_[2 + axis])), acc2)
                return for_range(cb, first_tap, stop_tap, tap, carried=acc, **NO_HINTS)[1]
            acc = taps(0, xbase, [init])[0]
            if mode == "avg":
                count = product(cb, [cells(i, *w) for i, w in enumerate(windows)])
                acc = cb.fdiv(acc, cb.sitofp(count, ty))
            return acc

        def plane(p):
            ni, ci = cb.sdiv(p, ch_), cb.srem(p, ch_)
            xbase = dot_offset(cb, [ni, ci], xs_[:2])

            def positions(axis, offset, windows):
                if axis == dims:
                    store(cb, window(xbase, windows), o_, offset)
                    return

                def at(q):
                    start = cb.sub(cb.mul(q, c64(strides[axis])), c64(lo[axis]))
                    first_tap, stop_tap = _taps(cb, start, sizes_[axis], kernel[axis],
                                                dilation[axis])
                    positions(axis + 1, cb.add(offset, cb.mul(q, os2[2 + axis])),
                              windows + [(start, first_tap, stop_tap)])
                for_range(cb, 0, outs_[axis], at, **NO_HINTS)
            positions(0, dot_offset(cb, [ni, ci], os2[:2]), [])
        for_range(cb, first, stop, plane, **NO_HINTS)

    split_for(b, [x, o, xs, os_, xe[1], sizes, outs], planes, chunk, worth)
    b.ret(const(I32, 0))


# ---------------------------------------------------------------------------------------------
# roi_align


def _fmax(b, x, y):
    return b.select(b.fcmp_ordered(">", x, y), x, y)


class _Image:
    """Bilinear samples of one (batch, channel) plane of (N, C, H, W) data."""

    def __init__(self, b, data, base, strides, h, w, ty):
        self.b, self.data, self.base, self.strides, self.ty = b, data, base, strides, ty
        self.h, self.w = h, w
        self.hf, self.wf = b.sitofp(h, ty), b.sitofp(w, ty)

    def _axis(self, v, size):
        """(low, high, fraction) of one coordinate, clamped like ONNX Runtime."""
        b, zero = self.b, const(self.ty, 0.0)
        v = _fmax(b, v, zero)
        low = b.fptosi(v, c64(0).type)
        edge = b.icmp_signed(">=", low, b.sub(size, c64(1)))
        last = b.sub(size, c64(1))
        low = b.select(edge, last, low)
        high = b.select(edge, last, b.add(low, c64(1)))
        v = b.select(edge, b.sitofp(last, self.ty), v)
        return low, high, b.fsub(v, b.sitofp(low, self.ty))

    def taps(self, y, x):
        """weight * value of the four taps around (y, x); only for a sample `inside` the image."""
        b, one = self.b, const(self.ty, 1.0)
        yl, yh, ly = self._axis(y, self.h)
        xl, xh, lx = self._axis(x, self.w)
        hy, hx = b.fsub(one, ly), b.fsub(one, lx)
        out = []
        for yi, xi, wy, wx in ((yl, xl, hy, hx), (yl, xh, hy, lx), (yh, xl, ly, hx),
                               (yh, xh, ly, lx)):
            at = b.add(self.base, dot_offset(b, [yi, xi], self.strides))
            out.append(b.fmul(b.fmul(wy, wx), load(b, self.data, at, self.ty)))
        return out

    def inside(self, y, x):
        b, minus_one = self.b, const(self.ty, -1.0)
        ok = b.and_(b.icmp_signed(">", self.h, c64(0)), b.icmp_signed(">", self.w, c64(0)))
        for v, size in ((y, self.hf), (x, self.wf)):
            ok = b.and_(ok, b.and_(b.fcmp_ordered(">=", v, minus_one),
                                   b.fcmp_ordered("<=", v, size)))
        return ok


def _roi_align(module, symbol, sig, spec):
    mode, oh, ow, ratio, scale, half = roi_align_params(spec)
    ty = MEM_TYPE[sig[0][0]]
    fn, b = new_function(module, symbol)
    arrays = prologue(b, *fn.args, sig)
    (x, xe, _), (rois, re_, _), (bi, be, _), (o, oe, _) = arrays
    xs, rs, bs, os_ = (load_strides(b, e, p) for _, e, p in arrays)
    n, ch, h, w = xe
    count = re_[0]
    check(b, b.icmp_signed("==", re_[1], c64(4)), ERR_SHAPE | 1 << 8 | 1 << 16)
    check(b, b.icmp_signed("==", be[0], count), ERR_SHAPE | 2 << 8)
    for j, want in enumerate((count, ch, c64(oh), c64(ow))):
        check(b, b.icmp_signed("==", oe[j], want), ERR_SHAPE | 3 << 8 | j << 16)
    return_zero_if(b, b.icmp_signed("==", product(b, oe), c64(0)))
    check_data(b, [arrays[1], arrays[2], arrays[3]])

    def in_range(r):
        k = load(b, bi, b.mul(r, bs[0]), c64(0).type)
        check(b, b.and_(b.icmp_signed(">=", k, c64(0)), b.icmp_signed("<", k, n)),
              ERR_VALUE | 2 << 8)
    for_range(b, 0, count, in_range, **NO_HINTS)
    items = b.mul(count, ch)
    work = b.mul(items, c64(oh * ow * 4 * max(ratio, 2) ** 2))
    worth = b.icmp_signed(">=", work, c64(parallel_work(spec, "reduce", "roi_align")))

    def chunk(cb, vals, first, stop):
        x_, rois_, bi_, o_, xs_, rs_, bs_, os2, (ch_, h_, w_) = vals
        f = lambda v: const(ty, v)  # noqa: E731

        def item(i):
            r, c = cb.sdiv(i, ch_), cb.srem(i, ch_)
            corner = [cb.fsub(cb.fmul(load(cb, rois_, dot_offset(cb, [r, c64(k)], rs_), ty),
                                      f(scale)), f(0.5 if half else 0.0)) for k in range(4)]
            x0, y0, x1, y1 = corner
            rw, rh = cb.fsub(x1, x0), cb.fsub(y1, y0)
            if not half:
                rw, rh = _fmax(cb, rw, f(1.0)), _fmax(cb, rh, f(1.0))
            bin_h, bin_w = cb.fdiv(rh, f(oh)), cb.fdiv(rw, f(ow))
            ceil = intrinsic(cb.module, "llvm.ceil", ty)
            gh, gw = ((c64(ratio), c64(ratio)) if ratio > 0 else
                      (cb.fptosi(cb.call(ceil, [cb.fdiv(v, f(e))]), c64(0).type)
                       for v, e in ((rh, oh), (rw, ow))))
            gh_f, gw_f = cb.sitofp(gh, ty), cb.sitofp(gw, ty)
            cells = cb.sitofp(smax(cb, cb.mul(gh, gw), c64(1)), ty)
            batch = load(cb, bi_, cb.mul(r, bs_[0]), c64(0).type)
            image = _Image(cb, x_, dot_offset(cb, [batch, c], xs_[:2]), xs_[2:], h_, w_, ty)
            out_base = dot_offset(cb, [r, c], os2[:2])

            def cell(ph, pw):
                ystart = cb.fadd(y0, cb.fmul(cb.sitofp(ph, ty), bin_h))
                xstart = cb.fadd(x0, cb.fmul(cb.sitofp(pw, ty), bin_w))

                def at(start, i, size, grid):
                    """start + (i + 0.5) * size / grid, in ONNX Runtime's order."""
                    half = cb.fadd(cb.sitofp(i, ty), f(0.5))
                    return cb.fadd(start, cb.fdiv(cb.fmul(half, size), grid))

                def row(iy, acc):
                    yy = at(ystart, iy, bin_h, gh_f)

                    def col(ix, acc2):
                        xx = at(xstart, ix, bin_w, gw_f)

                        def sample(_):
                            taps = image.taps(yy, xx)
                            combine = cb.fadd if mode == "avg" else lambda p, q: _fmax(cb, p, q)
                            return [combine(combine(combine(taps[0], taps[1]), taps[2]), taps[3])]
                        value = if_then(cb, image.inside(yy, xx), sample, carried=[f(0.0)])[0]
                        if mode == "avg":
                            return [cb.fadd(acc2[0], value)]
                        return [_fmax(cb, acc2[0], value)]
                    return for_range(cb, 0, gw, col, carried=acc, **NO_HINTS)[1]
                init = f(0.0) if mode == "avg" else f(float("-inf"))
                acc = for_range(cb, 0, gh, row, carried=[init], **NO_HINTS)[1][0]
                if mode == "avg":
                    acc = cb.fdiv(acc, cells)
                else:       # no sample at all (an empty grid): 0, as ONNX Runtime
                    some = cb.and_(cb.icmp_signed(">", gh, c64(0)), cb.icmp_signed(">", gw, c64(0)))
                    acc = cb.select(some, acc, f(0.0))
                store(cb, acc, o_, cb.add(out_base, dot_offset(cb, [ph, pw], os2[2:])))
            for_range(cb, 0, oh, lambda ph: for_range(cb, 0, ow, lambda pw: cell(ph, pw),
                                                      **NO_HINTS), **NO_HINTS)
        for_range(cb, first, stop, item, **NO_HINTS)

    split_for(b, [x, rois, bi, o, xs, rs, bs, os_, (ch, h, w)], items, chunk, worth)
    b.ret(const(I32, 0))


# ---------------------------------------------------------------------------------------------
# col2im


def _first_tap(b, pos, pad, stride, dil):
    """The first tap index worth visiting and the step between taps: with dilation 1 only
    every stride-th tap can land on an input cell, starting at (pos + pad) mod stride."""
    if dil != 1 or stride == 1:
        return c64(0), 1
    r = b.srem(b.add(pos, c64(pad)), c64(stride))
    return b.select(b.icmp_signed("<", r, c64(0)), b.add(r, c64(stride)), r), stride


def _source(b, pos, pad, k, stride, dil, size, stepped):
    """(valid: i1, input index) of tap k for output position pos: pos + pad - k * dil must be
    a non-negative multiple of the stride (known when the taps are `stepped`) below
    size * stride."""
    t = b.sub(b.add(pos, c64(pad)), b.mul(k, c64(dil)))
    q = b.sdiv(t, c64(stride))
    ok = b.and_(b.icmp_signed(">=", t, c64(0)), b.icmp_signed("<", q, size))
    if stride > 1 and not stepped:
        ok = b.and_(ok, b.icmp_signed("==", b.srem(t, c64(stride)), c64(0)))
    return ok, q


def _col2im(module, symbol, sig, spec):
    (sh, sw), (dh, dw), (pt, pl, pb, pr), (eh, ew) = col2im_params(spec)
    ty = MEM_TYPE[sig[0][0]]
    fn, b = new_function(module, symbol)
    (x, xe, xsp), (o, oe, osp) = prologue(b, *fn.args, sig)
    xs, os_ = load_strides(b, xe, xsp), load_strides(b, oe, osp)
    n, ch, kh, kw, h, w = xe
    for j, (size, k, s, d, lo, hi, e) in enumerate(((h, kh, sh, dh, pt, pb, eh),
                                                     (w, kw, sw, dw, pl, pr, ew))):
        want = b.add(b.add(b.mul(b.sub(size, c64(1)), c64(s)), b.mul(b.sub(k, c64(1)), c64(d))),
                     c64(1 + e - lo - hi))
        check(b, b.icmp_signed("==", oe[2 + j], want), ERR_SHAPE | 1 << 8 | (2 + j) << 16)
    for j in range(2):
        check(b, b.icmp_signed("==", oe[j], xe[j]), ERR_SHAPE | 1 << 8 | j << 16)
    return_zero_if(b, b.icmp_signed("==", product(b, oe), c64(0)))
    check_data(b, [(o, None, None)])
    planes = b.mul(n, ch)
    work = b.mul(product(b, oe), b.mul(kh, kw))
    worth = b.icmp_signed(">=", work, c64(parallel_work(spec, "reduce", "col2im")))

    def chunk(cb, vals, first, stop):
        x_, o_, xs_, os2, (ch_, kh_, kw_, h_, w_, oh_, ow_) = vals

        def plane(p):
            xbase = dot_offset(cb, [cb.sdiv(p, ch_), cb.srem(p, ch_)], xs_[:2])
            obase = dot_offset(cb, [cb.sdiv(p, ch_), cb.srem(p, ch_)], os2[:2])

            def cell(y, xo):
                (ky0, sy), (kx0, sx) = _first_tap(cb, y, pt, sh, dh), _first_tap(cb, xo, pl, sw, dw)

                def tap_row(ky, acc):
                    ok, iy = _source(cb, y, pt, ky, sh, dh, h_, sy > 1)

                    def columns(acc2):
                        def tap(kx, acc3):
                            ok2, ix = _source(cb, xo, pl, kx, sw, dw, w_, sx > 1)
                            at = cb.add(xbase, dot_offset(cb, [ky, kx, iy, ix], xs_[2:]))
                            return if_then(cb, ok2, lambda a: [cb.fadd(a[0], load(cb, x_, at, ty))],
                                           carried=acc3)
                        return for_range(cb, kx0, kw_, tap, step=sx, carried=acc2, **NO_HINTS)[1]
                    return if_then(cb, ok, columns, carried=acc)
                acc = for_range(cb, ky0, kh_, tap_row, step=sy, carried=[const(ty, 0.0)],
                                **NO_HINTS)[1][0]
                store(cb, acc, o_, cb.add(obase, dot_offset(cb, [y, xo], os2[2:])))
            for_range(cb, 0, oh_, lambda y: for_range(cb, 0, ow_, lambda xo: cell(y, xo),
                                                      **NO_HINTS), **NO_HINTS)
        for_range(cb, first, stop, plane, **NO_HINTS)

    split_for(b, [x, o, xs, os_, (ch, kh, kw, h, w, oe[2], oe[3])], planes, chunk, worth)
    b.ret(const(I32, 0))


def _params(what, parse, spec):
    """`parse(spec)`, a spec it rejects as the kernel's KernelError."""
    try:
        return parse(spec)
    except ShapeError as e:
        raise KernelError(f"{what}: {e}") from None


def _check_float_signature(what, inputs, outputs, ranks_in, rank_out, *more):
    """inputs of `ranks_in` (one float dtype, then the fixed `more` entries) -> one output."""
    dtype = inputs[0][0] if inputs else None
    want = [[dtype, r] for r in ranks_in] + [list(t) for t in more], [[dtype, rank_out]]
    got = [list(t) for t in inputs], [list(t) for t in outputs]
    if dtype not in DTYPES["avg"] or got != want:
        raise KernelError(f"{what}: signature must be {want[0]} -> {want[1]} with a float "
                          f"dtype, got {got[0]} -> {got[1]}")


def _check_col2im(spec, inputs, outputs):
    _params("col2im kernel", col2im_params, spec)
    _check_float_signature("col2im kernel", inputs, outputs, [6], 4)


def _check_pool(spec, inputs, outputs):
    what = "pool kernel"
    mode, kernel, *_ = _params(what, pool_params, spec)
    rank = 2 + len(kernel)
    if len(inputs) != 1 or len(outputs) != 1:
        raise KernelError(f"{what}: needs 1 input and 1 output")
    (xd, xr), (od, orank) = inputs[0], outputs[0]
    if xd != od or xd not in DTYPES[mode]:
        raise KernelError(f"{what}: data and output need one dtype of {DTYPES[mode]} ({mode})")
    if (xr, orank) != (rank, rank):
        raise KernelError(f"{what}: a {len(kernel)}-D window needs data and output of rank "
                          f"{rank}, got {xr} and {orank}")


def _check_roi_align(spec, inputs, outputs):
    _params("roi_align kernel", roi_align_params, spec)
    _check_float_signature("roi_align kernel", inputs, outputs, [4, 2], 4, ["int64", 1])


OPS = {"pool": (_check_pool, _pool), "roi_align": (_check_roi_align, _roi_align),
       "col2im": (_check_col2im, _col2im)}


def _check(spec, inputs, outputs):
    if spec.get("op") not in OPS:
        raise KernelError(f"window family: unknown op {spec.get('op')!r}")
    OPS[spec["op"]][0](spec, inputs, outputs)
    parallel_work(spec, "reduce", f"{spec['op']} kernel")


def _emit(module, symbol, spec, inputs, outputs):
    sig = [tuple(t) for t in inputs] + [tuple(t) for t in outputs]
    emit = OPS[spec["op"]][1]
    return single_variant(module, symbol, sig, lambda m, s, g: emit(m, s, g, spec))


FAMILY = register(Family("window", _check, _emit))
