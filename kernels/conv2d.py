"""The "conv2d" kernel family: NCHW data x OIHW weight as an implicit-im2col GEMM.

For image n and group g the convolution is a matrix product (kernels/matmul.py's core):
    C[o, p] = sum_k W[g*Og + o, k] * X_col[k, p],   k = (ci, kh, kw), p = (oh, ow)
with A = the weight rows of the group (compact OIHW, so k has unit stride), C = the output
plane of the group, and B = the im2col matrix, which is never materialised: `pack_b` gathers
a KC x NC block of it straight from the input (zero where the tap falls into the padding)
into the packed layout the micro-kernel reads. The batch of products runs over (n, g).

Variants as in matmul: "tiny" (direct scalar loops), "blocked", "fast" (OH*OW a multiple of
the micro-tile width and unit column stride). Any N/H/W are run-time extents; the output
extents are checked against the attrs (ERR_SHAPE) like the shape function computes them.
An epilogue (spec["epilogue"], see matmul.py) gets extra inputs broadcast to (N, O, OH, OW).
"""
from __future__ import annotations

from dynvm.kernels import family
from dynvm.kernels.abi import ERR_LAYOUT, ERR_SHAPE
from dynvm.kernels.llvm_util import (c64, check, dot_offset, eq, for_range, if_then, load,
                                     load_strides, parallel_work, smin, store)
from dynvm.kernels.matmul import (CONV_VARIANTS, DTYPES, Geometry, broadcast_extras,
                                  check_epilogue, emit_gemm_kernel)
from dynvm.shape_funcs.nn import conv2d_params
from dynvm.vm.errors import DynVMError, KernelError


def _compact_ok(b, ext, strides, dims):
    """Strides of `dims` (consecutive, last one innermost) nest compactly (extent-1 dims free)."""
    ok = None
    for d in dims[:-1]:
        inner = b.mul(strides[d + 1], ext[d + 1])
        fits = b.or_(eq(b, ext[d], c64(1)), eq(b, strides[d], inner))
        ok = fits if ok is None else b.and_(ok, fits)
    return ok


class ConvGeometry(Geometry):
    """Batch index bi = n * groups + g; rows m = output channel within the group; columns
    p = oh * OW + ow; depth k = (ci * KH + kh) * KW + kw."""

    def __init__(self, b, spec, sig, arrays):
        (sh, sw), (pt, pl, pb, pr), (dh, dw), groups = conv2d_params(spec)
        (self.x, xe, xsp), (w, we, wsp) = arrays[0], arrays[1]
        self.c, oe, osp = arrays[-1]
        out_arg = len(sig) - 1
        xs, ws, os_ = (load_strides(b, e, p) for e, p in ((xe, xsp), (we, wsp), (oe, osp)))
        n, ch, h, wd = xe
        o, cg, kh, kw = we
        g = c64(groups)
        channels_ok = b.and_(eq(b, ch, b.mul(cg, g)), eq(b, b.urem(o, g), c64(0)))
        check(b, channels_ok, ERR_SHAPE | 1 << 8 | 1 << 16)
        check(b, b.and_(b.icmp_signed(">=", kh, c64(1)), b.icmp_signed(">=", kw, c64(1))),
              ERR_SHAPE | 1 << 8 | 2 << 16)
        oh = self._out_dim(b, h, kh, sh, pt + pb, dh)
        ow = self._out_dim(b, wd, kw, sw, pl + pr, dw)
        for j, want in enumerate((n, o, oh, ow)):
            check(b, eq(b, oe[j], want), ERR_SHAPE | out_arg << 8 | j << 16)
        check(b, _compact_ok(b, we, ws, [1, 2, 3]), ERR_LAYOUT | 1 << 8)
        spatial_ok = b.or_(b.icmp_signed("<=", oh, c64(1)),
                           b.or_(eq(b, ow, c64(1)), eq(b, os_[2], b.mul(os_[3], ow))))
        check(b, spatial_ok, ERR_LAYOUT | out_arg << 8)
        self.groups, self.og, self.cg = g, b.udiv(o, g), cg
        self.kh, self.kw, self.oh, self.ow, self.h, self.w = kh, kw, oh, ow, h, wd
        self.stride, self.pad, self.dil = (sh, sw), (pt, pl), (dh, dw)
        self.nb, self.M, self.N = b.mul(n, g), self.og, b.mul(oh, ow)
        self.K = b.mul(cg, b.mul(kh, kw))
        self.a, self.sa_k = w, ws[3]
        self.a_strides = [c64(0), b.mul(self.og, ws[0]), ws[0]]       # idx = [n, g, m]
        self.c_strides = [os_[0], b.mul(self.og, os_[1]), os_[1]]
        self.sc_n = b.select(eq(b, ow, c64(1)), os_[2], os_[3])
        self.xs = xs
        self.extras = broadcast_extras(b, arrays, 2, oe, [dt for dt, _ in sig])
        self.dtype = sig[-1][0]

    @staticmethod
    def _out_dim(b, size, k, stride, pad, dil):
        num = b.sub(b.add(size, c64(pad)), b.add(b.mul(c64(dil), b.sub(k, c64(1))), c64(1)))
        check(b, b.icmp_signed(">=", num, c64(0)), ERR_SHAPE | 2 << 16)
        return b.add(b.sdiv(num, c64(stride)), c64(1))

    def row_index(self, b, bi, m):
        return [b.udiv(bi, self.groups), b.urem(bi, self.groups), m]

    # epilogue extras: a row is (n, channel), a column p = oh * OW + ow

    def extra_row(self, b, extra, idx):
        n, g, m = idx
        return dot_offset(b, [n, b.add(b.mul(g, self.og), m)], extra.strides[:2])

    def extra_columns(self, b, extra):
        """Linear in p when the (oh, ow) strides nest (s_oh == s_ow * OW: compact planes and
        full broadcasts such as a per-channel bias) or one of OH, OW is 1."""
        s_oh, s_ow = extra.strides[2:]
        one = c64(1)
        nested = eq(b, s_oh, b.mul(s_ow, self.ow))
        linear = b.or_(b.or_(b.icmp_signed("<=", self.oh, one), eq(b, self.ow, one)), nested)
        return linear, b.select(eq(b, self.ow, one), s_oh, s_ow)

    def column_cursor(self, b, p):
        return [b.udiv(p, self.ow), b.urem(p, self.ow)]

    def next_cursor(self, b, cursor):
        oh, ow = cursor
        ow1 = b.add(ow, c64(1))
        wrap = eq(b, ow1, self.ow)
        return [b.select(wrap, b.add(oh, c64(1)), oh), b.select(wrap, c64(0), ow1)]

    def cursor_offset(self, b, extra, cursor):
        return dot_offset(b, cursor, extra.strides[2:])

    def _tap(self, b, k):
        """Decompose depth index k -> (input channel within the group, kh, kw)."""
        kwi = b.urem(k, self.kw)
        rest = b.udiv(k, self.kw)
        return b.udiv(rest, self.kh), b.urem(rest, self.kh), kwi

    def _source(self, b, bi, ci, khi, kwi, ohi, owi):
        """(in bounds: i1, element offset into X) of one im2col entry."""
        n, g = b.udiv(bi, self.groups), b.urem(bi, self.groups)
        ih = b.add(b.mul(ohi, c64(self.stride[0])), c64(-self.pad[0]))
        ih = b.add(ih, b.mul(khi, c64(self.dil[0])))
        iw = b.add(b.mul(owi, c64(self.stride[1])), c64(-self.pad[1]))
        iw = b.add(iw, b.mul(kwi, c64(self.dil[1])))
        inside = b.and_(b.icmp_unsigned("<", ih, self.h), b.icmp_unsigned("<", iw, self.w))
        chan = b.add(b.mul(g, self.cg), ci)
        off = dot_offset(b, [n, chan, ih, iw], self.xs)
        return inside, off

    def _value(self, b, blk, inside, off):
        """X[off] when `inside`, else 0 (no load outside: X may be empty)."""
        return if_then(b, inside, lambda _: [load(b, self.x, off, blk.ty)], carried=[blk.zero])[0]

    def b_value(self, b, blk, bi, k, p):
        ci, khi, kwi = self._tap(b, k)
        inside, off = self._source(b, bi, ci, khi, kwi, b.udiv(p, self.ow), b.urem(p, self.ow))
        return self._value(b, blk, inside, off)

    def pack_b(self, b, blk, bi, pc, kc, jc, nc, dst):
        """Gather im2col[pc:pc+kc, jc:jc+nc] into NR-wide strips, zero past nc; (oh, ow)
        advance incrementally along a strip row so the inner loop has no division."""
        nr = blk.nr

        def strip(t):
            width = smin(b, c64(nr), b.sub(nc, t))
            p0 = b.add(jc, t)
            oh0, ow0 = b.udiv(p0, self.ow), b.urem(p0, self.ow)

            def row(k):
                ci, khi, kwi = self._tap(b, b.add(pc, k))
                out = b.add(b.mul(t, kc), b.mul(k, c64(nr)))

                def col(c, pos):
                    ohi, owi = pos
                    inside, off = self._source(b, bi, ci, khi, kwi, ohi, owi)
                    store(b, self._value(b, blk, inside, off), dst, b.add(out, c))
                    ow1 = b.add(owi, c64(1))
                    wrap = eq(b, ow1, self.ow)
                    return [b.select(wrap, b.add(ohi, c64(1)), ohi), b.select(wrap, c64(0), ow1)]
                for_range(b, 0, width, col, carried=[oh0, ow0])
                for_range(b, width, nr, lambda cc: store(b, blk.zero, dst, b.add(out, cc)))
            for_range(b, 0, kc, row)
        for_range(b, 0, nc, strip, step=nr)


def _check(spec, inputs, outputs):
    what = "conv2d kernel"
    if spec.get("op") != "conv2d":
        raise KernelError(f"conv2d family: unknown op {spec.get('op')!r}")
    try:
        conv2d_params(spec)
    except DynVMError as e:
        raise KernelError(f"{what}: {e}") from None
    if len(outputs) != 1 or len(inputs) < 2:
        raise KernelError(f"{what}: needs 2+ inputs and 1 output")
    (xd, xr), (wd, wr), (od, orank) = inputs[0], inputs[1], outputs[0]
    if not xd == wd == od or xd not in DTYPES:
        raise KernelError(f"{what}: data, weight and output need one dtype of {DTYPES}")
    if (xr, wr, orank) != (4, 4, 4):
        raise KernelError(f"{what}: data, weight and output must be 4-D, got {xr}, {wr}, {orank}")
    if any(rank > 4 for _, rank in inputs[2:]):
        raise KernelError(f"{what}: an epilogue input has a higher rank than the output")
    check_epilogue(spec, od, [dt for dt, _ in inputs[2:]], what)
    parallel_work(spec, "matmul", what)


def _emit(module, symbol, spec, inputs, outputs):
    sig = [tuple(x) for x in inputs] + [tuple(x) for x in outputs]
    return emit_gemm_kernel(module, symbol, spec, sig,
                            lambda b, spec_, sig_, arrays: ConvGeometry(b, spec_, sig_, arrays),
                            CONV_VARIANTS)


FAMILY = family.register(family.Family("conv2d", _check, _emit))
