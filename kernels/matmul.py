"""The "matmul" kernel family: dense, matmul and batch_matmul as one blocked GEMM core.

Every op is seen as a batch of products C[bi] = A[bi] @ B[bi] (A: M x K, B: K x N) described by
a `Geometry` (where row m of A and C starts, the K stride of A, how to copy a block of B) plus an
optional elementwise *epilogue* applied to each result element before it is final (bias add,
relu, ... fused by the compiler; see `epilogue` below). conv2d (kernels/conv2d.py) reuses the
core with its own Geometry (an implicit im2col B).

Variants (symbols `S__<variant>`, dispatcher `S` from family.emit_dispatcher):
- "tiny": scalar triple loop, no setup; any strides, K == 0, small problems.
- "blocked": GotoBLAS/BLIS-style cache blocking. Loops jc (NC columns) > pc (KC of K: pack a
  KC x NC panel of B into NR-wide strips) > ic (MC rows: pack an MC x KC block of A into MR-high
  strips) > jr > ir, and a register-blocked micro-kernel: MR x NR accumulators held in vector
  registers (NR = 2 native vectors), one `llvm.fma` per (row, vector) per k. Packing zero-pads
  partial strips, so the micro-kernel always runs full tiles; the write-back handles the
  partial ones (and any output strides).
- "fast": the same with N % NR == 0 and unit column stride of C: every tile is written with
  whole-vector loads/stores and no edge test. Whenever a tile has NR contiguous columns and
  C's rows are evenly spaced (`Geometry.c_rows`), the micro-kernel writes (first K block) or
  adds it straight into C (`micro_kernel(to_c=True)`): no round trip through a tile buffer,
  no per-row address arithmetic in the caller, the same additions (1-2% of a square GEMM,
  2% of BERT SMALL at seq 128 on one thread).
- "gemv" (matmul family only; conv2d's implicit B is never contiguous): skinny shapes with no
  packing at all, up to GEMV_MAX_ROWS rows per batch (an LSTM step, BERT at a few tokens).
  The "dot" form when A rows and B columns are contiguous along K (dense, batch_matmul with
  transpose_b): B is cut into column panels of about GEMV_PANEL_BYTES, each kept in cache
  while every group of up to GEMV_ROWS rows of A streams over it: GEMV_COLS columns per K
  loop, rows x cols vector FMA accumulators, a masked last vector (for one or two rows also a
  masked first one, so that B's loads are aligned), a shuffle-tree horizontal sum; the
  epilogue per (row group, panel), in L1. The "axpy" form when B and C rows are contiguous
  along N (matmul's weight): B streamed row by row into a segment of C (all rows,
  GEMV_STREAM_BYTES), C[m, seg] += A[m, k] * B[k, seg] for GEMV_K_ROWS rows k at a time,
  masked last vector; the epilogue per segment. Other strides: tiny code.
- "skinny" (dense of a rank-2 x only): a few rows of x (up to SKINNY_MAX_ROWS, in whole NR)
  against a weight with contiguous rows, as the transpose C^T = W x^T (`TransposedDense`): W is
  never packed (each call of the packed forms packs all of it, which at 16 rows cost as much as
  the product: ORT packs constant weights once), the micro-kernel broadcasts its elements
  straight from W's rows (`micro_kernel(packed_a=False)`); x^T is packed once for the whole K;
  the K blocks are summed exactly as in "fast" (the same bits), the tiles of an MC block of
  W's rows gathered in a stack buffer and written to C a row at a time.
- "packed" (dense whose weight was packed at build time: spec "packed_units" = N, the weight
  (ceil(N/NR), K, NR), `PackedDense`; its kernel has only "tiny" and "packed"): B's strips are
  read straight from the weight, never packed. Up to PACKED_IN_PLACE_ROWS rows the
  micro-kernel reads x's rows in place (one or two rows several strips per call,
  `strips_kernel`); more rows pack A in MC x KC blocks as "fast" does. Same bits as "fast".
Packed buffers live on the stack (bounded allocas: KC*NC + MC*KC + MR*NR elements, about
610 KiB for any dtype), so kernels never call malloc; callers' threads need that much stack
(glibc's default thread stack is 8 MiB).

Threads: gemv, blocked, fast and skinny compute items of output columns (a batch's gemv panel or
column block: NC on one thread, smaller on more, see `column_step`), cut into chunks by
llvm_util's `split_for` like every family; each item runs in the one-thread loop order, so
every output element is summed the same way whoever computes it: results are identical for
every thread count. "packed" splits its rows instead from PACKED_ROW_SPLIT rows (no item packs
B, each packs only its own rows of A; `emit_packed_items`). The chunks run on the kernel
threads (kernels/pool.py) when M*N*K*batches >= `spec["parallel_work"]` (default
llvm_util.PARALLEL_WORK["matmul"], measured; a spec may lower it, e.g. to 0 in tests, or raise
it), else in one call on the calling thread.

Epilogue: `spec["epilogue"]` is an elementwise expression (kernels/elementwise.py format) in
which ["in", 0] is the raw product element and ["in", k] (k >= 1) are the extra kernel inputs
that follow the op's own inputs, broadcast to the output shape (numpy rules). It runs on the
tile / rows just written while they are still in L1 (`apply_epilogue`): as <VL x T> vector
code (a masked load/store only for a partial last vector) when C's columns are contiguous and
every extra's column stride is 0 or 1 (bias broadcasts, full tensors), else per element with
the geometry's column cursor.

Error codes: the shared prologue's, plus ERR_SHAPE (extents that do not fit each other: K of A
and B, the output shape, a batch that does not broadcast) and ERR_BROADCAST for an epilogue
input that does not broadcast to the output.
"""
from __future__ import annotations

import copy

import numpy as np
from llvmlite import ir

from dynvm.kernels import family
from dynvm.kernels.abi import ERR_BROADCAST, ERR_LAYOUT, ERR_SHAPE
from dynvm.kernels.elementwise import emit_expr, expr_dtype
from dynvm.kernels.llvm_math import fma, vector_lanes
from dynvm.kernels.llvm_util import (I1, I32, I64, MEM_TYPE, PTR, c64, check, check_data,
                                     check_equal, const, dot_offset, elem_ptr, eq, for_range,
                                     get_function, if_then, kernel_threads, load, load_strides,
                                     masked_load, masked_store, new_function, parallel_work,
                                     product, prologue, return_zero_if, smin, split_for, splat,
                                     stack_buffer, store, tail_mask, to_reg, transpose_vectors,
                                     unravel)
from dynvm.vm.errors import KernelError

DTYPES = ("float32", "float64", "int32", "int64")
OPS = {"dense": 2, "matmul": 2, "batch_matmul": 2}
VARIANTS = ("tiny", "gemv", "blocked", "fast")      # the matmul family's
CONV_VARIANTS = ("tiny", "blocked", "fast")        # conv2d's B (im2col) is never contiguous
# the packed KC x NC panel of B at one thread (L2-sized on znver2: each MC x KC block of A,
# packed again for every NC columns, is then reused over 512 float32 columns, not 128: 1024^3
# went from 0.79 to 0.86-0.92 of single-threaded OpenBLAS at load 6). 1024 columns ran 1024^3
# 2.5-3.5% faster still (quiet, 1 thread), but the kernel's frame would grow from 610 KiB to
# 1.1 MiB of the caller's stack (abi.KERNEL_STACK_BYTES): a thread of 1 MiB could no longer
# call it. On more threads the column blocks shrink to give each thread about two items
# (`column_step`), which changes no result
NC_BYTES = 512 * 1024
MK_UNROLL = 4    # k steps per trip of the micro-kernel's loop
TINY_WORK = 16 * 16 * 16   # M*N*K at or below which setup costs more than blocking saves
GEMV_ROWS = 4    # rows of A per pass over B in "gemv" (M <= GEMV_ROWS streams B once)
GEMV_COLS = 4    # output columns per K loop in gemv's dot form (<= the vector lanes)
# gemv's dot form aligns B's loads for up to GEMV_ALIGN_ROWS rows: then the loads bound the K
# loop and a misaligned weight (numpy puts large arrays 16 bytes past a 64-byte boundary) costs
# 15-20% (LSTM step, 1 x 1024 x 256). With more rows the FMAs bound it, and one more (masked)
# vector per column group and A's loads, misaligned in turn, cost 3-8% instead.
GEMV_ALIGN_ROWS = 2
GEMV_K_ROWS = 4  # rows of B per pass over the C segment in gemv's axpy form (8: no faster)
# gemv's axpy form: the C segment (all rows), in L1/L2. Longer segments read B in longer runs
# per row: at 8 rows 16 KiB (2 KiB runs) gave 0.92x numpy at 8 x 4096 x 4096, 64 KiB 1.26x;
# 1 row is bound by memory either way (znver2, 1 thread, thread CPU time, load 3-5)
GEMV_STREAM_BYTES = 64 * 1024
GEMV_PANEL_BYTES = 128 * 1024   # gemv: columns of B per panel, kept in cache across row groups
# dispatcher: gemv up to GEMV_MAX_ROWS rows per batch. Each group of GEMV_ROWS rows streams
# all of B again, so past a few groups the packed GEMM wins: with the vectorised packing, BERT's
# dense + bias shapes (benchmarks/kernels_matmul.py --bert-only, AVX2, 1 thread, load 3-4)
# take 40/156/147 us in gemv vs 49/174/202 in fast at 8 rows, 78/308/287 vs 64/248/268 at 16,
# 598 vs 295 us (256 x 256) at 128.
GEMV_MAX_ROWS = 8
# dispatcher: "skinny" for dense of a rank-2 x on one thread, x's rows a multiple of NR up
# to SKINNY_MAX_ROWS (BERT's dense + bias, AVX2, 1 thread, weights cycled through 12 MB of
# them as in a model, thread CPU time, us, skinny / fast / ORT's MatMul: 256 x 256 at 16 rows
# 40 / 45-80 / 51, 1024 x 256 at 16 rows 228 / 270 / 200, 256 x 1024 at 32 rows 293 / - / 344;
# from 48 rows fast is level with ORT. At 9 or 24 rows the half-empty strip of x^T costs more
# than packing W: fast is kept there.)
SKINNY_MAX_ROWS = 32
# dense of a weight packed at build time ("packed_units", PackedDense): variants; rows of A up
# to which the micro-kernel reads them in place (more are packed, MC x KC, as in "fast");
# rows from which items on several threads are row blocks
PACKED_VARIANTS = ("tiny", "packed")
PACKED_IN_PLACE_ROWS = 32
PACKED_ROW_SPLIT = 48
# k steps ahead the micro-kernel prefetches a packed weight's strip (a line per k step for
# float32): one sequential stream per call got ~12 GB/s from memory; 4 x 1024 x 4096 went from
# 1.41 to 1.24 ms, 8 rows from 1.91 to 1.61 (thread CPU time, load 2-3; 128 steps: the same)
PACKED_PREFETCH_K = 64
# a prepacked dense below PARALLEL_WORK's multiply-adds still splits from this many weight
# elements when it is wide enough (`packed_streams`): a few rows are bound by streaming the
# weight, and each thread streams (and keeps in its own L2) half of it. Back-to-back calls on
# 2 threads vs 1 (znver2, quiet): 1 x 256 x 1024 1.27x, 1 x 512 x 512 1.24x, 4 x 256 x 1024
# 1.29x, 1 x 1024 x 1024 1.62x; the while-loop LSTM's steps (1 x 256 x 1024) 1.67x in all
PACKED_STREAM_WEIGHT = 1 << 18


# ---------------------------------------------------------------------------------------------
# blocking parameters


class Blocking:
    """Register and cache block sizes for one element type (VL = lanes per vector).

    `nr` (a power of two) fixes the micro-tile width instead of this machine's two native
    vectors: a weight packed at build time on another machine keeps its strips (an AVX2 file's
    16 float32 on AVX-512 are one native vector, an AVX-512 file's 32 on AVX2 four), so the
    kernels regenerated here read it as it is, with fewer rows per tile where more vectors
    per row would not fit the registers."""

    def __init__(self, dtype, nr=None):
        self.ty = MEM_TYPE[dtype]
        self.is_float = dtype.startswith("float")
        lanes = vector_lanes(self.ty)
        self.vl = lanes if nr is None else min(lanes, nr)
        self.vec = ir.VectorType(self.ty, self.vl)
        self.zero = const(self.ty, 0.0 if self.is_float else 0)
        self.nv = 2 if nr is None else nr // self.vl     # vectors per micro-tile row
        self.nr = self.nv * self.vl      # micro-tile columns (32 float32 with AVX-512)
        # MR x NV accumulators + NV vectors of B + A's splat must fit the vector registers:
        # 12 x 2 + 3 of AVX-512's 32, 6 x 2 + 3 of AVX2's 16 (more spills every k step)
        registers = 32 if family.vector_bits() >= 512 else 16
        self.mr = min(12 if registers == 32 else 6, (registers - self.nv - 1) // self.nv)
        size = self.size = {"float32": 4, "float64": 8, "int32": 4, "int64": 8}[dtype]
        self.kc = 256 if size == 4 else 128
        self.mc = self.mr * (96 // self.mr)
        self.nc = self.nr * max(1, (NC_BYTES // size) // (self.kc * self.nr))   # at most


# ---------------------------------------------------------------------------------------------
# GEMM arithmetic


def madd(b, x, y, acc, is_float):
    return fma(b, x, y, acc) if is_float else b.add(b.mul(x, y), acc)


def hsum(b, vectors, is_float):
    """Horizontal sums of `vectors` (a power of two of them, at most their lane count, all
    `<w x T>`) as one `<len(vectors) x T>` vector: lane j = sum of vectors[j]. Pairs are merged
    by halving every lane group (shuffles + one add per step), so c vectors cost c - 1 + log2(w/c)
    adds instead of c * log2(w)."""
    add = b.fadd if is_float else b.add
    w = vectors[0].type.count
    groups = 1                       # lane groups per vector, one per input vector it sums

    def halves(width, groups):
        size = width // groups
        lo = [g * size + i for g in range(groups) for i in range(size // 2)]
        return lo, [i + size // 2 for i in lo]

    def shuffle(x, y, idx):
        return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, len(idx)), idx))

    while len(vectors) > 1:
        lo, hi = halves(w, groups)
        vectors = [add(shuffle(x, y, lo + [w + i for i in lo]), shuffle(x, y, hi + [w + i for i in hi]))
                   for x, y in zip(vectors[::2], vectors[1::2])]
        groups *= 2
    v = vectors[0]
    while w > groups:
        lo, hi = halves(w, groups)
        v = add(shuffle(v, v, lo), shuffle(v, v, hi))
        w //= 2
    return v


# ---------------------------------------------------------------------------------------------
# epilogue


def check_epilogue(spec, out_dtype, extra_dtypes, what):
    """The epilogue's result dtype must be the output dtype; returns the expression or None."""
    expr = spec.get("epilogue")
    if expr is None:
        if extra_dtypes:
            raise KernelError(f"{what}: extra inputs given but no epilogue")
        return None
    result = expr_dtype(expr, [out_dtype] + list(extra_dtypes))
    if result != out_dtype:
        raise KernelError(f"{what}: epilogue gives {result}, the output is {out_dtype}")
    return expr


class Extra:
    """An epilogue input: data pointer, dtype, strides aligned with the output dims
    (0 where it is broadcast)."""

    def __init__(self, data, dtype, strides):
        self.data, self.dtype, self.strides = data, dtype, strides


def broadcast_extras(b, arrays, first, out_ext, dtypes):
    """Check extra inputs arrays[first:-1] broadcast to `out_ext`; their effective strides."""
    extras = []
    r = len(out_ext)
    for k in range(first, len(arrays) - 1):
        data, ext, sptr = arrays[k]
        strides = load_strides(b, ext, sptr)
        eff = [c64(0)] * (r - len(ext))
        for j, (e, s) in enumerate(zip(ext, strides)):
            o = out_ext[r - len(ext) + j]
            check(b, b.or_(eq(b, e, o), eq(b, e, c64(1))), ERR_BROADCAST | k << 8 | j << 16)
            eff.append(b.select(eq(b, e, c64(1)), c64(0), s))
        extras.append(Extra(data, dtypes[k], eff))
    return extras


# ---------------------------------------------------------------------------------------------
# geometry of the matmul-like ops


class Geometry:
    """C[bi, m, n] = sum_k A[bi, m, k] * B[bi, k, n] over run-time extents.

    Subclasses set nb (batches), M, N, K (i64 IR values), the data pointers a/bm/c, the
    column strides sa_k/sc_n, `extras`, and implement row_index / a_row / c_row / pack_b /
    b_offset and, for the epilogue, extra_row / extra_columns / the column cursor. Row offsets take `idx`, the output multi-index without its last
    dim, computed once per row by `row_index(b, bi, m)`.
    """

    def row_index(self, b, bi, m):
        raise NotImplementedError

    def a_row(self, b, idx):
        return dot_offset(b, idx, self.a_strides)

    def c_row(self, b, idx):
        return dot_offset(b, idx, self.c_strides)

    def c_rows(self, b):
        """(stride, i1): consecutive rows of C inside one batch are `stride` elements apart
        when the i1 holds (then the micro-kernel may write its tile straight into C)."""
        return c64(0), const(I1, 0)

    # where the epilogue's extra inputs are: offset = extra_row(idx) + (column part)

    def extra_row(self, b, extra, idx):
        """Offset of `extra` at output row `idx`, column 0."""
        return dot_offset(b, idx, extra.strides[:-1])

    def extra_columns(self, b, extra):
        """(linear: i1, stride): when linear, column n of a row is at extra_row + n * stride."""
        return const(I1, 1), extra.strides[-1]

    def column_cursor(self, b, n):
        """Per-column state of the scalar epilogue walk, starting at column n (no division
        per element: see next_cursor)."""
        return [n]

    def next_cursor(self, b, cursor):
        return [b.add(cursor[0], c64(1))]

    def cursor_offset(self, b, extra, cursor):
        """The column part of `extra`'s offset at `cursor`."""
        return b.mul(cursor[0], extra.strides[-1])

    def b_offset(self, b, bi, k, n):
        base = b.mul(bi, self.sb_b)
        return b.add(base, b.add(b.mul(k, self.sb_k), b.mul(n, self.sb_n)))

    def b_value(self, b, blk, bi, k, n):
        """B[bi, k, n] as a scalar (the tiny variant's access)."""
        return load(b, self.bm, self.b_offset(b, bi, k, n), blk.ty)

    packs_b = True     # B's panels are packed by the kernel (`pack_b`) into a stack buffer
    b_align = 64       # the bytes the micro-kernel may assume its B strips are aligned to

    def b_panel(self, b, blk, bi, pc, kc, jc, nc, buf):
        """The KC x nc panel of B at depth pc, columns jc.. in NR-wide strips: (start, scale),
        the strip of column jc + jr (jr a multiple of NR) at start + jr * scale. Here packed into
        `buf` (`pack_b`); a geometry whose B is already in that layout points into it."""
        self.pack_b(b, blk, bi, pc, kc, jc, nc, buf)
        return buf, kc

    def pack_b(self, b, blk, bi, pc, kc, jc, nc, dst):
        """dst[t*kc*NR + k*NR + c] = B[pc + k, jc + t*NR + c], zero past nc."""
        ty, nr, zero = blk.ty, blk.nr, blk.zero

        columns = eq(b, self.sb_k, c64(1))     # B read by columns (dense's weight rows)

        def strip(t):
            width = smin(b, c64(nr), b.sub(nc, t))
            out = b.mul(t, kc)        # t is a multiple of NR: strip start = t * kc

            def by_rows():
                def row(k):
                    src = self.b_offset(b, bi, b.add(pc, k), b.add(jc, t))
                    o = b.add(out, b.mul(k, c64(nr)))
                    for_range(b, 0, width, lambda c: store(
                        b, load(b, self.bm, b.add(src, b.mul(c, self.sb_n)), ty), dst,
                        b.add(o, c)))
                    for_range(b, width, nr, lambda c: store(b, zero, dst, b.add(o, c)))
                for_range(b, 0, kc, row)

            def by_columns():
                src = [self.b_offset(b, bi, pc, b.add(jc, b.add(t, c64(c)))) for c in range(nr)]
                pack_strip(b, blk, self.bm, src, self.sb_k, kc, dst, out)
            if_then(b, b.and_(columns, eq(b, width, c64(nr))), by_columns, by_rows)
        rows = eq(b, self.sb_n, c64(1))        # B's rows contiguous (matmul's weight)
        whole = b.mul(b.udiv(nc, c64(nr)), c64(nr))
        if_then(b, rows, lambda: self.pack_rows(b, blk, bi, pc, kc, jc, whole, dst))
        for_range(b, b.select(rows, whole, c64(0)), nc, strip, step=nr)

    def pack_rows(self, b, blk, bi, pc, kc, jc, whole, dst):
        """pack_b's whole strips [0, whole) of a B with contiguous rows, row by row: each row's
        run of the panel is read in order (one page of B after another, where strip by strip
        read one line of each of KC rows, a page apart in a square product), NR at a time."""
        def row(k):
            src = self.b_offset(b, bi, b.add(pc, k), jc)
            o = b.mul(k, c64(blk.nr))

            def strip(t):
                for v in range(blk.nv):
                    x = load(b, self.bm, b.add(src, b.add(t, c64(v * blk.vl))), blk.vec)
                    store(b, x, dst, b.add(b.add(b.mul(t, kc), o), c64(v * blk.vl)),
                          align=blk.vl * blk.size)
            for_range(b, 0, whole, strip, step=blk.nr)
        for_range(b, 0, kc, row)


def nested_rows(b, strides, dims):
    """(stride, i1): the rows of a multi-index over `dims` with `strides`, in order, are
    `stride` apart when the i1 holds (each stride the next one's times its extent, or an
    extent of 1)."""
    if not strides:
        return c64(0), const(I1, 1)
    ok = const(I1, 1)
    for i in range(len(strides) - 1):
        nested = eq(b, strides[i], b.mul(strides[i + 1], dims[i + 1]))
        ok = b.and_(ok, b.or_(nested, eq(b, dims[i], c64(1))))
    return strides[-1], ok


def _shape_checks(b, got, want, arg):
    for j, (g, w) in enumerate(zip(got, want)):
        check_equal(b, g, w, arg, j)


class MatmulGeometry(Geometry):
    """dense / matmul / batch_matmul after validating every extent against the others."""

    def __init__(self, b, op, spec, sig, arrays):
        self.op = op
        out_data, out_ext, out_sptr = arrays[-1]
        out_strides = load_strides(b, out_ext, out_sptr)
        (xa, xe, xs), (wa, we, ws) = arrays[0], arrays[1]
        xs, ws = load_strides(b, xe, xs), load_strides(b, we, ws)
        self.a, self.bm, self.c = xa, wa, out_data
        self.out_arg = len(sig) - 1
        self.nb, self.sb_b = c64(1), c64(0)
        getattr(self, "_" + op)(b, spec, xe, xs, we, ws, out_ext)
        self.out_ext = out_ext
        self.sc_n = out_strides[-1]
        self.c_strides = out_strides[:-1]
        self.extras = broadcast_extras(b, arrays, 2, out_ext, [dt for dt, _ in sig])
        self.dtype = sig[-1][0]

    def _dense(self, b, spec, xe, xs, we, ws, out_ext):
        r = len(xe)
        self.K, self.N = xe[-1], we[0]
        check(b, eq(b, we[1], self.K), ERR_SHAPE | 1 << 8 | 1 << 16)
        _shape_checks(b, out_ext, list(xe[:-1]) + [self.N], self.out_arg)
        self.row_dims = list(xe[:-1])
        self.M = product(b, self.row_dims)
        self.a_strides, self.sa_k = xs[:-1], xs[-1]
        self.sb_k, self.sb_n = ws[1], ws[0]
        self.rank = r

    def _matmul(self, b, spec, xe, xs, we, ws, out_ext):
        self.M, self.K, self.N = xe[0], xe[1], we[1]
        check(b, eq(b, we[0], self.K), ERR_SHAPE | 1 << 8)
        _shape_checks(b, out_ext, [self.M, self.N], self.out_arg)
        self.row_dims = [self.M]
        self.a_strides, self.sa_k = xs[:1], xs[1]
        self.sb_k, self.sb_n = ws[0], ws[1]

    def _batch_matmul(self, b, spec, xe, xs, we, ws, out_ext):
        ta, tb = bool(spec.get("transpose_a", False)), bool(spec.get("transpose_b", True))
        ba, bb = xe[0], we[0]
        self.M, ka = (xe[2], xe[1]) if ta else (xe[1], xe[2])
        self.N, kb = (we[1], we[2]) if tb else (we[2], we[1])
        check(b, eq(b, ka, kb), ERR_SHAPE | 1 << 8 | (2 if tb else 1) << 16)
        self.K = ka
        one = c64(1)
        batch = b.select(eq(b, bb, one), ba, bb)
        ok = b.and_(b.or_(eq(b, ba, one), eq(b, ba, batch)),
                    b.or_(eq(b, bb, one), eq(b, bb, batch)))
        check(b, ok, ERR_SHAPE | 1 << 8)
        _shape_checks(b, out_ext, [batch, self.M, self.N], self.out_arg)
        self.nb = batch
        self.row_dims = [batch, self.M]
        sa_b = b.select(eq(b, ba, one), c64(0), xs[0])
        self.a_strides = [sa_b, xs[2] if ta else xs[1]]
        self.sa_k = xs[1] if ta else xs[2]
        self.sb_b = b.select(eq(b, bb, one), c64(0), ws[0])
        self.sb_k, self.sb_n = (ws[2], ws[1]) if tb else (ws[1], ws[2])

    def row_index(self, b, bi, m):
        if self.op == "batch_matmul":
            return [bi, m]
        if self.op == "matmul":
            return [m]
        return unravel(b, m, self.row_dims)

    def c_rows(self, b):
        if self.op == "batch_matmul":       # rows of one batch
            return self.c_strides[1], const(I1, 1)
        return nested_rows(b, self.c_strides, self.row_dims)


def matmul_geometry(op):
    return lambda b, spec, sig, arrays: MatmulGeometry(b, op, spec, sig, arrays)


class TransposedDense(Geometry):
    """dense(x, w) for x of rank 2 computed as its transpose, C^T = W X^T ("skinny"): W is the
    A operand, which the micro-kernel reads in place (rows `a_row_stride` apart), and X^T the
    B operand, its strips packed from x's rows. At a few rows of x, packing W (all of it, every
    call) cost more than the product; packing x is small."""

    def __init__(self, g):
        self.nb, self.sb_b, self.dtype, self.out_arg = g.nb, g.sb_b, g.dtype, g.out_arg
        self.M, self.N, self.K = g.N, g.M, g.K
        self.a, self.bm, self.c = g.bm, g.a, g.c
        self.a_row_stride, self.sa_k = g.sb_n, g.sb_k        # W[n, k]
        self.a_strides = [g.sb_n]
        self.sb_k, self.sb_n = g.sa_k, g.a_strides[0]        # B[k, m] = x[m, k]
        self.c_strides, self.sc_n = [g.sc_n], g.c_strides[0]  # C^T[n, m] = C[m, n]
        self.c_origin = c64(0)
        self.extras = [Extra(e.data, e.dtype, e.strides[::-1]) for e in g.extras]

    def row_index(self, b, bi, m):
        return [m]

    def c_row(self, b, idx):
        return b.mul(b.sub(idx[0], self.c_origin), self.c_strides[0])

    def staged(self, buf, first_row, rows):
        """This geometry writing rows [first_row, first_row + rows) of C^T into `buf` instead,
        row n at n - first_row, columns `rows` apart: written whole lines at a time afterwards
        (`unstage`), C's rows take no scattered stores (with C's rows a multiple of 4 KiB
        apart, the tiles' stores all fell into one L1 set: 1024 x 256 at 16 rows ran 1.5x
        slower than 1000 x 256)."""
        staged = copy.copy(self)
        staged.c, staged.c_origin, staged.c_strides, staged.sc_n = buf, first_row, [c64(1)], rows
        return staged

    def unstage(self, b, buf, first_row, rows, stride, m_lo, m_hi):
        """C^T[first_row + i, m] = buf[m * stride + i] for i < rows, m_lo <= m < m_hi."""
        def column(m):
            base = b.mul(m, self.sc_n)
            for_range(b, 0, rows, lambda i: store(
                b, load(b, buf, b.add(b.mul(m, stride), i), MEM_TYPE[self.dtype]), self.c,
                b.add(base, self.c_row(b, [b.add(first_row, i)]))))
        for_range(b, m_lo, m_hi, column)


class PackedDense(MatmulGeometry):
    """dense(x, Wp) with the weight packed at build time (compiler/passes/prepack_dense.py):
    Wp[s, k, c] = W[s*NR + c, k], zero for s*NR + c >= N, shape (ceil(N/NR), K, NR), N the
    spec's "packed_units". The KC block [pc, pc + kc) of strip s is the run at s*K*NR + pc*NR,
    exactly what the micro-kernel reads: B is never packed at run time. NR is the spec's
    "packed_width" (the build machine's, recorded by the pass; 0: this machine's). A weight that
    does not fit (K, N and NR; compact) is an error, never a wrong read."""

    packs_b = False

    def __init__(self, b, spec, sig, arrays):
        blk = blocking(spec, sig)
        # the weight may be anywhere: unaligned loads (on the VM's 64-byte aligned constants
        # they cost nothing)
        self.nr, self.units, self.b_align = blk.nr, spec["packed_units"], blk.size
        self.spec, self.sig = spec, sig
        super().__init__(b, "dense", spec, sig, arrays)

    def _dense(self, b, spec, xe, xs, we, ws, out_ext):
        nr = c64(self.nr)
        self.K, self.N = xe[-1], c64(self.units)
        fits = b.and_(b.and_(eq(b, we[0], c64(-(-self.units // self.nr))), eq(b, we[1], self.K)),
                      eq(b, we[2], nr))
        check(b, fits, ERR_SHAPE | 1 << 8)
        compact = b.and_(b.and_(eq(b, ws[2], c64(1)),
                                b.or_(eq(b, ws[1], nr), eq(b, we[1], c64(1)))),
                         b.or_(eq(b, ws[0], b.mul(self.K, nr)), eq(b, we[0], c64(1))))
        check(b, b.or_(compact, eq(b, self.K, c64(0))), ERR_LAYOUT | 1 << 8)   # K = 0: empty
        _shape_checks(b, out_ext, list(xe[:-1]) + [self.N], self.out_arg)
        self.row_dims = list(xe[:-1])
        self.M = product(b, self.row_dims)
        self.a_strides, self.sa_k = xs[:-1], xs[-1]
        self.sb_k, self.sb_n = nr, None
        self.rank = len(xe)

    def b_value(self, b, blk, bi, k, n):
        nr = c64(self.nr)
        strip = b.add(b.mul(b.udiv(n, nr), self.K), k)
        return load(b, self.bm, b.add(b.mul(strip, nr), b.urem(n, nr)), blk.ty)

    def b_panel(self, b, blk, bi, pc, kc, jc, nc, buf):
        return self.strip(b, blk, jc, pc), self.K

    def strip(self, b, blk, n0, pc):
        """The strip of columns n0.. (a multiple of NR) at depth pc."""
        return elem_ptr(b, self.bm, b.add(b.mul(n0, self.K), b.mul(pc, c64(self.nr))), blk.ty)

    def row_stride(self, b):
        """(lda, i1): A's rows, in the order of the output's, are lda apart (k contiguous) when
        the i1 holds, so the micro-kernel can read them in place."""
        lda, nested = nested_rows(b, self.a_strides, self.row_dims)
        return lda, b.and_(eq(b, self.sa_k, c64(1)), nested)


def blocking(spec, sig) -> Blocking:
    """The blocking of a matmul kernel: a packed dense weight's strip width ("packed_width",
    recorded when it was packed) or, for everything else, this machine's."""
    return Blocking(sig[-1][0], spec.get("packed_width") or None)


def packed_width(dtype) -> int:
    """NR of this machine's kernels for `dtype`: the strip width a packed dense weight gets."""
    return Blocking(dtype).nr


def pack_weight(w, nr=None):
    """The packed layout of dense's weight w (N, K) that PackedDense reads: (ceil(N/NR), K, NR),
    [s, k, c] = w[s*NR + c, k], zeros past N; NR this machine's unless given."""
    nr = nr or packed_width(w.dtype.name)
    n, k = w.shape
    strips = -(-n // nr)
    padded = np.zeros((strips * nr, k), w.dtype)
    padded[:n] = w
    packed = np.empty((strips, k, nr), w.dtype)     # row-major strides even when k is 0
    packed[...] = padded.reshape(strips, nr, k).transpose(0, 2, 1)
    return packed


def transposed_dense(make_geometry):
    return lambda b, spec, sig, arrays: TransposedDense(make_geometry(b, spec, sig, arrays))


# ---------------------------------------------------------------------------------------------
# variant bodies shared by every Geometry


def apply_epilogue(b, geo, blk, expr, bi, m0, rows, n0, cols):
    """C[m0:m0+rows, n0:n0+cols] = epilogue(C, extras), in place (the tile or rows just written,
    still in L1); nothing without an epilogue.

    Vector form when C's columns are contiguous and every extra input's column offsets are
    linear with stride 0 (broadcast: a splat) or 1 (a vector): whole <VL x T> vectors of C with
    plain loads/stores, a partial last one masked (no scalar tail; masked stores are slow on
    AMD cores, so only the tail uses one); extras through a masked load either way (stride 0
    loads no lane). Otherwise one element at a time, the extras' offsets advanced by the
    geometry's column cursor (no division per element)."""
    if expr is None:
        return
    extras = geo.extras
    dtypes = [geo.dtype] + [e.dtype for e in extras]
    vl = blk.vl
    columns = [geo.extra_columns(b, e) for e in extras]
    vector_ok = eq(b, geo.sc_n, c64(1))
    for linear, stride in columns:
        vector_ok = b.and_(vector_ok, b.and_(linear, b.icmp_unsigned("<=", stride, c64(1))))
    unit = [splat(b, eq(b, stride, c64(1)), vl) for _, stride in columns]

    def vector_rows():
        def row(r):
            idx = geo.row_index(b, bi, b.add(m0, r))
            cbase = b.add(geo.c_row(b, idx), n0)
            ebase = [b.add(geo.extra_row(b, e, idx), b.mul(n0, stride))
                     for e, (_, stride) in zip(extras, columns)]

            def chunk(c, mask):
                cptr = elem_ptr(b, geo.c, b.add(cbase, c), blk.ty)
                x = _vector_load(b, blk, cptr, mask)

                def load_input(i):
                    if i == 0:
                        return x
                    e, (_, stride) = extras[i - 1], columns[i - 1]
                    ty = MEM_TYPE[e.dtype]
                    p = elem_ptr(b, e.data, b.add(ebase[i - 1], b.mul(c, stride)), ty)
                    first = b.load(p, typ=ty)      # lane 0 exists: c < cols
                    on = unit[i - 1] if mask is None else b.and_(mask, unit[i - 1])
                    return to_reg(b, masked_load(b, p, on, splat(b, first, vl)), e.dtype)
                value, _ = emit_expr(b, expr, dtypes, load_input, vl)
                _vector_store(b, blk, value, cptr, mask)
            vector_columns(b, blk, c64(0), cols, chunk)
        for_range(b, 0, rows, row)

    def scalar_rows():
        def row(r):
            idx = geo.row_index(b, bi, b.add(m0, r))
            crow = geo.c_row(b, idx)
            erow = [geo.extra_row(b, e, idx) for e in extras]

            def col(c, cursor):
                o = b.add(crow, b.mul(b.add(n0, c), geo.sc_n))

                def load_input(i):
                    if i == 0:
                        return load(b, geo.c, o, blk.ty)
                    e = extras[i - 1]
                    off = b.add(erow[i - 1], geo.cursor_offset(b, e, cursor))
                    return to_reg(b, load(b, e.data, off, MEM_TYPE[e.dtype]), e.dtype)
                value, _ = emit_expr(b, expr, dtypes, load_input)
                store(b, value, geo.c, o)
                return geo.next_cursor(b, cursor)
            for_range(b, 0, cols, col, carried=geo.column_cursor(b, n0))
        for_range(b, 0, rows, row)
    if_then(b, vector_ok, vector_rows, scalar_rows)


def emit_tiny_body(b, geo, blk, expr):
    """for bi, m: C[m, :] = sum_k A*B (scalar, any strides), then the row's epilogue."""
    ty, zero = blk.ty, blk.zero

    def batch(bi):
        def row(m):
            idx = geo.row_index(b, bi, m)
            arow, crow = geo.a_row(b, idx), geo.c_row(b, idx)

            def col(n):
                def step(k, acc):
                    av = load(b, geo.a, b.add(arow, b.mul(k, geo.sa_k)), ty)
                    return [madd(b, av, geo.b_value(b, blk, bi, k, n), acc[0], blk.is_float)]
                _, (total,) = for_range(b, 0, geo.K, step, carried=[zero])
                store(b, total, geo.c, b.add(crow, b.mul(n, geo.sc_n)))
            for_range(b, 0, geo.N, col)
            apply_epilogue(b, geo, blk, expr, bi, m, c64(1), c64(0), geo.N)
        for_range(b, 0, geo.M, row)
    for_range(b, 0, geo.nb, batch)


def micro_kernel(module, blk, packed_a=True, b_align=64, to_c=False):
    """internal void mk(ptr ap, ptr bp, i64 kc, ptr t[, i64 lda, i64 rows]): t[MR x NR] =
    A strip @ Bp strip. A is a packed strip (ap[k*MR + r]) or, not `packed_a`, `rows` rows of
    a matrix read in place (row r at ap + r*lda, k contiguous; rows past `rows` read the last
    one again and are not written back). Bp's vectors are `b_align`-byte aligned; when that is
    less than 64 Bp is a packed weight, prefetched PACKED_PREFETCH_K steps ahead (a hint: it
    never faults, past the strip's end too).

    `to_c` (packed A only): internal void mk(ptr ap, ptr bp, i64 kc, ptr c, i64 ldc, i64 rows,
    i64 first) writes the tile straight into C instead (row r at c + r*ldc, NR contiguous
    columns, rows past `rows` not written): C = tile on the first K block, else C = tile + C,
    the additions `write_tile` makes (the same bits), without the round trip through a tile
    buffer and the caller's per-row address arithmetic; it prefetches C's tile itself."""
    form = ("" if packed_a else ".rows") + ("" if b_align == 64 else f".b{b_align}") + \
        (".c" if to_c else "")
    name = f"dynvm.gemm.micro{form}.{blk.ty}.{blk.mr}x{blk.nr}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    extra = [I64, I64, I64] if to_c else [] if packed_a else [I64, I64]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, PTR] + extra),
                     name=name)
    fn.linkage = "internal"
    for a in fn.args[:2] + fn.args[3:4]:
        a.add_attribute("noalias")
    ap, bp, kc, t = fn.args[:4]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vec, mr, nv, vl = blk.vec, blk.mr, blk.nv, blk.vl
    zero = ir.Constant(vec, [0.0 if blk.is_float else 0] * vl)
    if packed_a:
        def a_offset(k, r):
            return b.add(b.mul(k, c64(mr)), c64(r))
    else:
        lda, rows = fn.args[4:]
        starts = [b.mul(smin(b, c64(r), b.sub(rows, c64(1))), lda) for r in range(mr)]

        def a_offset(k, r):
            return b.add(starts[r], k)

    if to_c:
        ldc = fn.args[4]
        for r in range(mr):
            for col in (0, blk.nr - 1):    # both lines of the tile row (see prefetch_tile)
                prefetch(b, elem_ptr(b, t, b.add(b.mul(c64(r), ldc), c64(col)), blk.ty), True)

    def step(k, accs):
        bvecs = [load(b, bp, b.add(b.mul(k, c64(blk.nr)), c64(v * vl)), vec, align=b_align)
                 for v in range(nv)]
        if b_align != 64:     # a packed weight (PackedDense), streamed from L3 or memory
            prefetch(b, elem_ptr(b, bp, b.mul(b.add(k, c64(PACKED_PREFETCH_K)), c64(blk.nr)),
                                 blk.ty), False)
        new = []
        for r in range(mr):
            a = splat(b, load(b, ap, a_offset(k, r), blk.ty), vl)
            new += [madd(b, a, bvecs[v], accs[r * nv + v], blk.is_float) for v in range(nv)]
        return new

    accs = k_loop(b, kc, step, [zero] * (mr * nv))
    if to_c:
        store_to_c(b, blk, accs, t, *fn.args[4:])
    else:
        for r in range(mr):
            for v in range(nv):
                store(b, accs[r * nv + v], t, c64(r * blk.nr + v * vl), align=64)
    b.ret_void()
    return fn


def k_loop(b, kc, step, accs):
    """The accumulators after step(k, accs) -> accs for k = 0 .. kc - 1, in order: MK_UNROLL
    steps per trip (less loop overhead per FMA), then the kc % MK_UNROLL left."""
    def steps(k, accs):
        for u in range(MK_UNROLL):
            accs = step(b.add(k, c64(u)), accs)
        return accs
    main = b.sub(kc, b.urem(kc, c64(MK_UNROLL)))
    _, accs = for_range(b, 0, main, steps, step=MK_UNROLL, carried=accs, vectorize=False,
                        unroll=False)
    _, accs = for_range(b, main, kc, step, carried=accs, vectorize=False, unroll=False)
    return accs


def prefetch(b, p, write):
    """A hint that the line at `p` is wanted soon, for reading or `write` (it never faults)."""
    fn = get_function(b.module, "llvm.prefetch.p0",
                      ir.FunctionType(ir.VoidType(), [PTR, I32, I32, I32]))
    b.call(fn, [p, const(I32, int(write)), const(I32, 3), const(I32, 1)])


def store_to_c(b, blk, accs, c, ldc, rows, first):
    """The micro-kernel's accumulators into C's tile (`micro_kernel(to_c=True)`): rows below
    `rows`, written on the first K block, else added to C as `write_tile` adds."""
    def rows_out(accumulate):
        for r in range(blk.mr):
            def row():
                for v in range(blk.nv):
                    p = elem_ptr(b, c, b.add(b.mul(c64(r), ldc), c64(v * blk.vl)), blk.ty)
                    x = accs[r * blk.nv + v]
                    if accumulate:
                        y = b.load(p, typ=blk.vec, align=blk.size)
                        x = b.fadd(x, y) if blk.is_float else b.add(x, y)
                    b.store(x, p, align=blk.size)
            if_then(b, b.icmp_signed("<", c64(r), rows), row)
    if_then(b, b.icmp_unsigned("!=", first, c64(0)), lambda: rows_out(False),
            lambda: rows_out(True))


def concat(b, vectors):
    """One vector holding `vectors` (all one type) one after the other, then undefined lanes up
    to a power of two of them."""
    while len(vectors) > 1:
        if len(vectors) % 2:
            vectors = vectors + [ir.Constant(vectors[0].type, ir.Undefined)]
        width = vectors[0].type.count
        idx = ir.Constant(ir.VectorType(I32, 2 * width), list(range(2 * width)))
        vectors = [b.shuffle_vector(x, y, idx) for x, y in zip(vectors[::2], vectors[1::2])]
    return vectors[0]


def pack_strip(b, blk, base, src, stride, kc, dst, out):
    """dst[out + k*R + r] = base[src[r] + k*stride] for k < kc, r < R = len(src): R rows of a
    matrix, each read along k, interleaved (a packed strip of A, or of B read by columns). With
    stride 1 it moves VL columns at a time: the rows in groups of VL (the last padded with
    undefined rows), each group one vector load per row and a VL x VL transpose
    (`transpose_vectors`), then per column k one R-element store of the groups' vectors; the
    last kc % VL columns (and other strides) one column of R elements at a time."""
    rows, vl = len(src), blk.vl
    vwidth = b.select(eq(b, stride, c64(1)), b.sub(kc, b.urem(kc, c64(vl))), c64(0))
    undef = ir.Constant(blk.vec, ir.Undefined)
    first_lanes = ir.Constant(ir.VectorType(I32, rows), list(range(rows)))

    def vectors(k):
        groups = []
        for g in range(0, rows, vl):
            loaded = [load(b, base, b.add(o, k), blk.vec) for o in src[g:g + vl]]
            groups.append(transpose_vectors(b, loaded + [undef] * (vl - len(loaded))))
        for kk in range(vl):
            column = concat(b, [group[kk] for group in groups])
            if column.type.count != rows:
                column = b.shuffle_vector(column, ir.Constant(column.type, ir.Undefined),
                                          first_lanes)
            store(b, column, dst, b.add(out, b.mul(b.add(k, c64(kk)), c64(rows))))

    def column(k):
        for r, o in enumerate(src):
            value = load(b, base, b.add(o, b.mul(k, stride)), blk.ty)
            store(b, value, dst, b.add(out, b.add(b.mul(k, c64(rows)), c64(r))))
    for_range(b, 0, vwidth, vectors, step=vl, vectorize=False, unroll=False)
    for_range(b, vwidth, kc, column, vectorize=False, unroll=False)


def pack_a(b, geo, blk, bi, ic, mc, pc, kc, dst):
    """dst[s*MR*kc + k*MR + r] = A[ic + s*MR + r, pc + k], zero rows past mc: full strips by
    `pack_strip`, the last partial one row by row."""
    mr, ty, zero = blk.mr, blk.ty, blk.zero
    full = b.udiv(mc, c64(mr))

    def strip(s):
        first = b.add(ic, b.mul(s, c64(mr)))
        src = [b.add(geo.a_row(b, geo.row_index(b, bi, b.add(first, c64(r)))),
                     b.mul(pc, geo.sa_k)) for r in range(mr)]
        pack_strip(b, blk, geo.a, src, geo.sa_k, kc, dst, b.mul(s, b.mul(c64(mr), kc)))
    for_range(b, 0, full, strip)

    def row(i):      # the last, partial strip
        out = b.add(b.mul(b.udiv(i, c64(mr)), b.mul(c64(mr), kc)), b.urem(i, c64(mr)))

        def real():
            src = b.add(geo.a_row(b, geo.row_index(b, bi, b.add(ic, i))), b.mul(pc, geo.sa_k))
            for_range(b, 0, kc, lambda k: store(
                b, load(b, geo.a, b.add(src, b.mul(k, geo.sa_k)), ty), dst,
                b.add(out, b.mul(k, c64(mr)))))

        def pad():
            for_range(b, 0, kc, lambda k: store(b, zero, dst, b.add(out, b.mul(k, c64(mr)))))
        if_then(b, b.icmp_signed("<", i, mc), real, pad)
    padded = b.mul(b.udiv(b.add(mc, c64(mr - 1)), c64(mr)), c64(mr))
    for_range(b, b.mul(full, c64(mr)), padded, row)


def write_tile(b, geo, blk, bi, m0, n0, rows, cols, first, tile, fast):
    """C[m0:m0+rows, n0:n0+cols] (+)= tile; whole vectors when the tile is full and contiguous."""
    ty, vec, nr = blk.ty, blk.vec, blk.nr

    def vector_path():
        def rows_loop(accumulate):
            def row(r):
                base = b.add(geo.c_row(b, geo.row_index(b, bi, b.add(m0, r))), n0)
                for v in range(blk.nv):
                    x = b.load(elem_ptr(b, tile, b.add(b.mul(r, c64(nr)), c64(v * blk.vl)), ty),
                               typ=vec, align=64)
                    p = elem_ptr(b, geo.c, b.add(base, c64(v * blk.vl)), ty)
                    if accumulate:
                        y = b.load(p, typ=vec, align=blk.size)
                        x = b.fadd(x, y) if blk.is_float else b.add(x, y)
                    b.store(x, p, align=blk.size)
            for_range(b, 0, rows, row)
        if_then(b, first, lambda: rows_loop(False), lambda: rows_loop(True))

    def scalar_path():
        def rows_loop(accumulate):
            def row(r):
                base = geo.c_row(b, geo.row_index(b, bi, b.add(m0, r)))

                def col(c):
                    x = load(b, tile, b.add(b.mul(r, c64(nr)), c), ty)
                    o = b.add(base, b.mul(b.add(n0, c), geo.sc_n))
                    if accumulate:
                        y = load(b, geo.c, o, ty)
                        x = b.fadd(x, y) if blk.is_float else b.add(x, y)
                    store(b, x, geo.c, o)
                for_range(b, 0, cols, col)
            for_range(b, 0, rows, row)
        if_then(b, first, lambda: rows_loop(False), lambda: rows_loop(True))

    if fast:
        vector_path()
        return
    full = b.and_(eq(b, cols, c64(nr)), eq(b, geo.sc_n, c64(1)))
    if_then(b, full, vector_path, scalar_path)


def prefetch_tile(b, geo, blk, bi, m0, n0, rows):
    """Ask for the lines of C's tile at (m0, n0) while the micro-kernel runs: the write-back
    reads them, and C's rows, a power of two of bytes apart in a square product, miss in cache
    (12% of 1024^3 without this). A hint: prefetches never fault; rows past `rows` repeat the
    last one."""
    last = b.sub(rows, c64(1))
    for r in range(blk.mr):
        row = geo.c_row(b, geo.row_index(b, bi, b.add(m0, smin(b, c64(r), last))))
        for col in (0, blk.nr - 1):    # the tile row's first and last element: both its lines
            p = elem_ptr(b, geo.c, b.add(row, b.mul(b.add(n0, c64(col)), geo.sc_n)), blk.ty)
            prefetch(b, p, True)


def finish_tile(b, out, blk, expr, bi, m0, rows, n0, cols, first, last, tile, fast):
    """C (of geometry `out`) from the micro-kernel's tile of one K block: written (first) or
    added, then at the last block the epilogue."""
    write_tile(b, out, blk, bi, m0, n0, rows, cols, first, tile, fast)
    if expr is not None:
        if_then(b, last, lambda: apply_epilogue(b, out, blk, expr, bi, m0, rows, n0, cols))


def emit_blocked_columns(b, geo, blk, expr, fast, bi, jc, step, m_lo=None, m_hi=None):
    """The cache-blocked GEMM of batch `bi`, columns [jc, jc + step) (step <= NC unless the
    geometry's B is already packed; K, M, N >= 1 checked by the caller), rows [m_lo, m_hi)
    (default all): pack a KC x step panel of B (`Geometry.b_panel`), then every MC-row block of
    A against it. Each output element sums the same KC blocks in the same order whatever the
    step or the rows."""
    mk = micro_kernel(b.module, blk, b_align=geo.b_align)
    ap = stack_buffer(b, blk.ty, blk.mc * blk.kc)
    bp = stack_buffer(b, blk.ty, blk.kc * blk.nc) if geo.packs_b else None
    tile = stack_buffer(b, blk.ty, blk.mr * blk.nr)
    N, K = geo.N, geo.K
    m_lo, m_hi = (c64(0), geo.M) if m_lo is None else (m_lo, m_hi)
    nc = smin(b, step, b.sub(N, jc))
    ldc, direct = geo.c_rows(b)     # and whole NR contiguous columns: tiles straight to C
    direct = direct if fast else b.and_(direct, eq(b, geo.sc_n, c64(1)))

    def depth_block(pc):
        kc = smin(b, c64(blk.kc), b.sub(K, pc))
        first = eq(b, pc, c64(0))
        last = eq(b, b.add(pc, kc), K)
        panel, scale = geo.b_panel(b, blk, bi, pc, kc, jc, nc, bp)

        def row_block(ic):
            mc = smin(b, c64(blk.mc), b.sub(m_hi, ic))
            pack_a(b, geo, blk, bi, ic, mc, pc, kc, ap)

            def col_strip(jr):
                cols = smin(b, c64(blk.nr), b.sub(nc, jr))
                bstrip = elem_ptr(b, panel, b.mul(jr, scale), blk.ty)

                def row_strip(ir_):
                    rows = smin(b, c64(blk.mr), b.sub(mc, ir_))
                    astrip = elem_ptr(b, ap, b.mul(ir_, kc), blk.ty)
                    m0, n0 = b.add(ic, ir_), b.add(jc, jr)

                    def to_c():
                        c = elem_ptr(b, geo.c, b.add(geo.c_row(b, geo.row_index(b, bi, m0)),
                                                     n0), blk.ty)
                        b.call(micro_kernel(b.module, blk, b_align=geo.b_align, to_c=True),
                               [astrip, bstrip, kc, c, ldc, rows, b.zext(first, I64)])
                        if expr is not None:
                            if_then(b, last, lambda: apply_epilogue(b, geo, blk, expr, bi, m0,
                                                                    rows, n0, cols))

                    def via_tile():
                        prefetch_tile(b, geo, blk, bi, m0, n0, rows)
                        b.call(mk, [astrip, bstrip, kc, tile])
                        finish_tile(b, geo, blk, expr, bi, m0, rows, n0, cols, first, last,
                                    tile, fast)
                    whole = direct if fast else b.and_(direct, eq(b, cols, c64(blk.nr)))
                    if_then(b, whole, to_c, via_tile)
                for_range(b, 0, mc, row_strip, step=blk.mr)
            for_range(b, 0, nc, col_strip, step=blk.nr)
        for_range(b, m_lo, m_hi, row_block, step=blk.mc)
    for_range(b, 0, K, depth_block, step=blk.kc)


def emit_skinny_columns(b, geo, blk, expr, bi, jc, step):
    """"skinny" (a TransposedDense geometry, checked to fit by the variant): C^T's columns
    [jc, jc + step) (rows of x, few) against all of W. x^T is packed once for the whole K;
    W's rows are read in place by the micro-kernel; per MC block of W's rows the K blocks go
    in KC steps as in the packed forms (each output element the same FMA chains and
    additions: the same bits as "fast"), the tiles into a stack buffer (`TransposedDense.staged`)
    written to C by whole rows at the end of the block."""
    mk = micro_kernel(b.module, blk, packed_a=False)
    bp = stack_buffer(b, blk.ty, blk.kc * blk.nc)
    tile = stack_buffer(b, blk.ty, blk.mr * blk.nr)
    stage = stack_buffer(b, blk.ty, blk.mc * skinny_columns(blk))
    M, N, K = geo.M, geo.N, geo.K
    nc = smin(b, step, b.sub(N, jc))
    geo.pack_b(b, blk, bi, c64(0), K, jc, nc, bp)

    def row_block(ic):
        mc = smin(b, c64(blk.mc), b.sub(M, ic))
        out = geo.staged(stage, ic, c64(blk.mc))

        def depth_block(pc):
            kc = smin(b, c64(blk.kc), b.sub(K, pc))
            first, last = eq(b, pc, c64(0)), eq(b, b.add(pc, kc), K)

            def col_strip(jr):
                cols = smin(b, c64(blk.nr), b.sub(nc, jr))
                bstrip = elem_ptr(b, bp, b.add(b.mul(jr, K), b.mul(pc, c64(blk.nr))), blk.ty)

                def row_strip(ir_):
                    rows = smin(b, c64(blk.mr), b.sub(mc, ir_))
                    m0, n0 = b.add(ic, ir_), b.add(jc, jr)
                    arow = b.add(geo.a_row(b, geo.row_index(b, bi, m0)), b.mul(pc, geo.sa_k))
                    b.call(mk, [elem_ptr(b, geo.a, arow, blk.ty), bstrip, kc, tile,
                                geo.a_row_stride, rows])
                    finish_tile(b, out, blk, expr, bi, m0, rows, n0, cols, first, last, tile,
                                False)
                for_range(b, 0, mc, row_strip, step=blk.mr)
            for_range(b, 0, nc, col_strip, step=blk.nr)
        for_range(b, 0, K, depth_block, step=blk.kc)
        geo.unstage(b, stage, ic, mc, c64(blk.mc), jc, b.add(jc, nc))
    for_range(b, 0, M, row_block, step=blk.mc)


def strips_kernel(module, blk, rows, strips):
    """internal void mk(ptr ap, i64 lda, ptr bp, i64 bstride, i64 kc, ptr t): for `rows` rows
    of A read in place (row r at ap + r*lda, k contiguous) and `strips` strips of a packed B
    (strip s at bp + s*bstride, NR-wide, unaligned), tile s at t + s*MR*NR: t[s][r, c] =
    sum_k A[r, k] * Bs[k, c], each a chain of FMAs from 0 in k order, as in `micro_kernel`
    (the same bits). One or two rows of a product are memory-bound: several strips per k step
    keep enough independent FMA chains going to stream B at memory speed."""
    name = f"dynvm.gemm.strips.{blk.ty}.{rows}x{strips}x{blk.nr}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I64, PTR, I64, I64, PTR]),
                     name=name)
    fn.linkage = "internal"
    for a in (fn.args[0], fn.args[2], fn.args[5]):
        a.add_attribute("noalias")
    ap, lda, bp, bstride, kc, t = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vec, nv, vl, nr = blk.vec, blk.nv, blk.vl, blk.nr
    zero = ir.Constant(vec, [0.0 if blk.is_float else 0] * vl)
    arows = [b.mul(c64(r), lda) for r in range(rows)]
    bstarts = [b.mul(c64(s), bstride) for s in range(strips)]

    def step(k, accs):
        bvecs = [load(b, bp, b.add(bstarts[s], b.add(b.mul(k, c64(nr)), c64(v * vl))), vec)
                 for s in range(strips) for v in range(nv)]
        avals = [splat(b, load(b, ap, b.add(o, k), blk.ty), vl) for o in arows]
        return [madd(b, avals[r], bvecs[j], accs[r * strips * nv + j], blk.is_float)
                for r in range(rows) for j in range(strips * nv)]

    accs = k_loop(b, kc, step, [zero] * (rows * strips * nv))
    for r in range(rows):
        for s in range(strips):
            for v in range(nv):
                store(b, accs[(r * strips + s) * nv + v], t,
                      c64(s * blk.mr * nr + r * nr + v * vl), align=64)
    b.ret_void()
    return fn


def emit_packed_rows(b, geo, blk, expr, bi, m_lo, m_hi, n_lo, n_hi):
    """Prepacked dense (a PackedDense geometry), rows [m_lo, m_hi) read in place (checked by
    the caller: `PackedDense.row_stride`), columns [n_lo, n_hi) (n_lo a multiple of NR): nothing
    is packed. The weight is read once, in memory order: strip by strip (or group of strips),
    each over its KC blocks. One or two rows take MR or MR / 2 strips per call of
    `strips_kernel` (the micro-kernel's number of FMA chains: enough to stream B) when the
    item has that many strips; else per strip and KC block (in L1 for all the rows) every
    group of up to MR rows by the micro-kernel reading A's rows in place. Each output element
    sums the KC blocks in order, each an FMA chain from 0: the same bits as the packed-A path.
    One write-back (`finish_tile`) per form keeps the code small."""
    mr, nr = blk.mr, blk.nr
    mk = micro_kernel(b.module, blk, packed_a=False, b_align=geo.b_align)
    tile = stack_buffer(b, blk.ty, mr * nr * mr)
    lda, _ = geo.row_stride(b)
    rows = b.sub(m_hi, m_lo)
    one = eq(b, rows, c64(1))
    many = b.select(one, c64(mr), c64(mr // 2))
    width = b.mul(many, c64(nr))
    n_end = b.add(n_lo, b.mul(_ceil_div(b, b.sub(n_hi, n_lo), c64(nr)), c64(nr)))
    enough = b.and_(b.icmp_signed("<=", rows, c64(2)),
                    b.icmp_signed(">=", b.sub(n_end, n_lo), width))
    n_many = b.select(enough, n_hi, n_lo)

    def depth_blocks(body):
        """body(pc, kc, first, last) for the KC blocks of K, in order."""
        def block(pc):
            kc = smin(b, c64(blk.kc), b.sub(geo.K, pc))
            body(pc, kc, eq(b, pc, c64(0)), eq(b, b.add(pc, kc), geo.K))
        for_range(b, 0, geo.K, block, step=blk.kc)

    def a_rows(m0, pc):
        return elem_ptr(b, geo.a, b.add(geo.a_row(b, geo.row_index(b, bi, m0)), pc), blk.ty)

    def finish(m0, count, n0, t, first, last):
        cols = smin(b, c64(nr), b.sub(geo.N, n0))
        finish_tile(b, geo, blk, expr, bi, m0, count, n0, cols, first, last, t, False)

    def strips(n0):
        """The group of strips from n0; the last one ends at the item's last strip and
        overlaps the one before: strips already written are computed again (the same bits)
        but not written."""
        g = smin(b, n0, b.sub(n_end, width))

        def depth(pc, kc, first, last):
            args = [a_rows(m_lo, pc), lda, geo.strip(b, blk, g, pc), b.mul(geo.K, c64(nr)), kc,
                    tile]
            if_then(b, one, lambda: b.call(strips_kernel(b.module, blk, 1, mr), args),
                    lambda: b.call(strips_kernel(b.module, blk, 2, mr // 2), args))

            def write(s):
                col = b.add(g, b.mul(s, c64(nr)))
                if_then(b, b.icmp_signed(">=", col, n0), lambda: finish(
                    m_lo, rows, col, elem_ptr(b, tile, b.mul(s, c64(mr * nr)), blk.ty), first,
                    last))
            for_range(b, 0, many, write)
        depth_blocks(depth)
    for_range(b, n_lo, n_many, strips, step=width)

    def strip(n0):
        def depth(pc, kc, first, last):
            def group(m0):
                count = smin(b, c64(mr), b.sub(m_hi, m0))
                b.call(mk, [a_rows(m0, pc), geo.strip(b, blk, n0, pc), kc, tile, lda, count])
                finish(m0, count, n0, tile, first, last)
            for_range(b, m_lo, m_hi, group, step=mr)
        depth_blocks(depth)
    for_range(b, n_many, n_hi, strip, step=nr)


def packed_streams(b, geo, blk):
    """i1: a prepacked dense with too little work for PARALLEL_WORK that still pays a second
    thread, because it is bound by streaming the weight, not by its multiply-adds: a weight
    of at least PACKED_STREAM_WEIGHT elements, wide enough for two column items per thread of
    MR strips each (narrower items cost more than they save: 1 x 1024 x 256 ran 0.73x)."""
    weight = b.mul(b.mul(geo.N, geo.K), geo.nb)
    return b.and_(b.icmp_unsigned(">=", weight, c64(PACKED_STREAM_WEIGHT)),
                  b.icmp_signed(">=", geo.N, c64(4 * blk.mr * blk.nr)))


def emit_packed_items(b, fn, geo, blk, parallel, chunk_item):
    """Prepacked dense's items: row blocks (whole MR strips, about two per thread) from
    PACKED_ROW_SPLIT rows on several threads -- B is packed already and each item packs only
    its own rows of A, so no thread repeats another's work --, else column blocks (whole NR
    strips, `thread_columns`: a few rows of A, packed again or read in place per item).
    chunk_item(cb, cgeo, m_lo, m_hi, n_lo, n_hi) emits one item."""
    threads = b.select(parallel, kernel_threads(b), c64(1))
    by_rows = b.and_(b.icmp_signed(">", threads, c64(1)),
                     b.icmp_signed(">=", geo.M, c64(PACKED_ROW_SPLIT)))
    per_item = _ceil_div(b, _ceil_div(b, geo.M, b.mul(threads, c64(2))), c64(blk.mr))
    row_step = b.select(by_rows, b.mul(per_item, c64(blk.mr)), geo.M)
    col_step = b.select(by_rows, geo.N, thread_columns(b, geo, blk.nr, parallel, geo.N))
    col_items = _ceil_div(b, geo.N, col_step)

    def chunks(cb, values, lo, hi):
        (args, nargs), row_step, col_step, col_items = values
        cgeo = PackedDense(cb, geo.spec, geo.sig, prologue(cb, args, nargs, geo.sig))

        def item(c):
            m_lo = cb.mul(cb.udiv(c, col_items), row_step)
            n_lo = cb.mul(cb.urem(c, col_items), col_step)
            chunk_item(cb, cgeo, m_lo, smin(cb, cb.add(m_lo, row_step), cgeo.M), n_lo,
                       smin(cb, cb.add(n_lo, col_step), cgeo.N))
        for_range(cb, lo, hi, item)
    items = b.mul(_ceil_div(b, geo.M, row_step), col_items)
    split_for(b, (tuple(fn.args), row_step, col_step, col_items), items, chunks, parallel)


def packed_item(b, geo, blk, expr, m_lo, m_hi, n_lo, n_hi):
    """One item of prepacked dense: A's rows read in place when they can be and there are at
    most PACKED_IN_PLACE_ROWS of them, else the blocked GEMM packing A (MC x KC blocks) in
    column blocks of NC: the KC x NC block of the weight stays in L2 for every MC block of A
    (with all of a 1024-wide weight's columns, 1 MiB per KC block streamed from L3 per MC
    block)."""
    _, in_place = geo.row_stride(b)
    few = b.icmp_signed("<=", b.sub(m_hi, m_lo), c64(PACKED_IN_PLACE_ROWS))

    def blocked():
        for_range(b, n_lo, n_hi, lambda jc: emit_blocked_columns(
            b, geo, blk, expr, False, c64(0), jc, smin(b, c64(blk.nc), b.sub(n_hi, jc)), m_lo,
            m_hi), step=blk.nc)
    if_then(b, b.and_(in_place, few),
            lambda: emit_packed_rows(b, geo, blk, expr, c64(0), m_lo, m_hi, n_lo, n_hi),
            blocked)


def gemv_layouts(b, geo):
    """(dot, axpy): i1s telling which streaming form of "gemv" fits the strides.
    dot: rows of A and columns of B contiguous along K (dense's weight rows, batch_matmul
    with transpose_b); axpy: rows of B and of C contiguous along N (matmul's weight)."""
    one = c64(1)
    dot = b.and_(eq(b, geo.sa_k, one), eq(b, geo.sb_k, one))
    axpy = b.and_(eq(b, geo.sb_n, one), eq(b, geo.sc_n, one))
    return dot, axpy


def _row_offsets(b, geo, bi, m0, rows):
    idx = [geo.row_index(b, bi, b.add(m0, c64(r))) for r in range(rows)]
    return [geo.a_row(b, i) for i in idx], [geo.c_row(b, i) for i in idx]


def aligned_start(b, blk, ptr, limit):
    """Elements from `ptr` to the next vector-size boundary, at most `limit`: a K loop that
    starts there loads no vector that splits a cache line (two L1 accesses instead of one)."""
    width = c64(blk.vl * blk.size)
    gap = b.urem(b.sub(width, b.urem(b.ptrtoint(ptr, I64), width)), width)
    return smin(b, b.udiv(gap, c64(blk.size)), limit)


def gemv_dot(b, geo, blk, bi, m0, rows, n_lo, n_hi):
    """C[m0:m0+rows, n_lo:n_hi] for `rows` (a constant <= GEMV_ROWS) rows, K contiguous in A
    and B. Per group of GEMV_COLS columns: one pass over K in vectors, rows x cols FMA
    accumulators (each B vector loaded once, used by every row): for up to GEMV_ALIGN_ROWS rows
    a masked first vector up to the first column's vector boundary, then whole vectors, a
    masked last one; then one shuffle-tree horizontal sum per row. So B is read exactly once
    for all the rows."""
    ty, vec, vl = blk.ty, blk.vec, blk.vl
    zero = ir.Constant(vec, None)
    aoffs, coffs = _row_offsets(b, geo, bi, m0, rows)
    arows = [elem_ptr(b, geo.a, o, ty) for o in aoffs]
    bbase = b.mul(bi, geo.sb_b)
    ncols = min(GEMV_COLS, vl)

    def group(n0, cols):
        bcols = [elem_ptr(b, geo.bm, b.add(bbase, b.mul(b.add(n0, c64(j)), geo.sb_n)), ty)
                 for j in range(cols)]
        head = aligned_start(b, blk, bcols[0], geo.K) if rows <= GEMV_ALIGN_ROWS else c64(0)
        kmain = b.sub(geo.K, b.urem(b.sub(geo.K, head), c64(vl)))

        def fmas(k, accs, mask):
            av = [_vector_load(b, blk, elem_ptr(b, p, k, ty), mask) for p in arows]
            bv = [_vector_load(b, blk, elem_ptr(b, p, k, ty), mask) for p in bcols]
            return [madd(b, av[r], bv[j], accs[r * cols + j], blk.is_float)
                    for r in range(rows) for j in range(cols)]
        accs = [zero] * (rows * cols)
        accs = if_then(b, b.icmp_signed(">", head, c64(0)),
                       lambda accs: fmas(c64(0), accs, tail_mask(b, c64(0), head, vl)),
                       carried=accs)
        _, accs = for_range(b, head, kmain, lambda k, accs: fmas(k, accs, None), step=vl,
                            carried=accs)
        accs = if_then(b, b.icmp_signed("<", kmain, geo.K),
                       lambda accs: fmas(kmain, accs, tail_mask(b, kmain, geo.K, vl)), carried=accs)
        for r in range(rows):
            sums = hsum(b, accs[r * cols:(r + 1) * cols], blk.is_float)
            for j in range(cols):
                o = b.add(coffs[r], b.mul(b.add(n0, c64(j)), geo.sc_n))
                store(b, b.extract_element(sums, const(I32, j)), geo.c, o)
    nmain = b.sub(n_hi, b.urem(b.sub(n_hi, n_lo), c64(ncols)))
    for_range(b, n_lo, nmain, lambda n0: group(n0, ncols), step=ncols)
    for_range(b, nmain, n_hi, lambda n: group(n, 1))


def vector_columns(b, blk, n_lo, n_hi, body):
    """body(n, mask) for every vector of columns [n_lo, n_hi): whole vectors (mask None), then
    one masked partial vector."""
    vl = blk.vl
    nmain = b.sub(n_hi, b.urem(b.sub(n_hi, n_lo), c64(vl)))
    for_range(b, n_lo, nmain, lambda n: body(n, None), step=vl)
    if_then(b, b.icmp_signed("<", nmain, n_hi),
            lambda: body(nmain, tail_mask(b, nmain, n_hi, vl)))


def _vector_load(b, blk, ptr, mask):
    if mask is None:
        return b.load(ptr, typ=blk.vec, align=blk.size)
    return masked_load(b, ptr, mask, ir.Constant(blk.vec, None))


def _vector_store(b, blk, value, ptr, mask):
    if mask is None:
        b.store(value, ptr, align=blk.size)
    else:
        masked_store(b, value, ptr, mask)


def gemv_axpy(b, geo, blk, bi, n_lo, n_hi):
    """C[:, n_lo:n_hi] (every row), N contiguous in B and C, streaming B's rows: the segment of
    C is zeroed, then for each group of GEMV_K_ROWS rows k of B and each group of up to
    GEMV_ROWS rows m of C, C[m, seg] += A[m, k] * B[k, seg] for the k in order, one vector of
    columns at a time (each B vector loaded once for the group's rows). B is read row by row in
    runs of the whole segment (no stride of N per k: each page of B is used once per pass)
    while the C segment (`gemv_panel`) stays in L1/L2. Every C element is the FMA chain
    over k = 0, 1, ... from 0: the same whatever the segments or the thread."""
    ty = blk.ty
    bbase = b.mul(bi, geo.sb_b)
    zero = ir.Constant(blk.vec, None)

    def zero_row(m):
        crow = geo.c_row(b, geo.row_index(b, bi, m))
        vector_columns(b, blk, n_lo, n_hi, lambda n, mask: _vector_store(
            b, blk, zero, elem_ptr(b, geo.c, b.add(crow, n), ty), mask))
    for_range(b, 0, geo.M, zero_row)

    def update(m0, rows, k0, nk):
        aoffs, coffs = _row_offsets(b, geo, bi, m0, rows)
        brows = [b.add(bbase, b.mul(b.add(k0, c64(u)), geo.sb_k)) for u in range(nk)]
        av = [[splat(b, load(b, geo.a, b.add(o, b.mul(b.add(k0, c64(u)), geo.sa_k)), ty), blk.vl)
               for u in range(nk)] for o in aoffs]

        def columns(n, mask):
            bv = [_vector_load(b, blk, elem_ptr(b, geo.bm, b.add(row, n), ty), mask)
                  for row in brows]
            for r in range(rows):
                cptr = elem_ptr(b, geo.c, b.add(coffs[r], n), ty)
                acc = _vector_load(b, blk, cptr, mask)
                for u in range(nk):
                    acc = madd(b, av[r][u], bv[u], acc, blk.is_float)
                _vector_store(b, blk, acc, cptr, mask)
        vector_columns(b, blk, n_lo, n_hi, columns)

    def k_rows(k0, nk):
        for_row_groups(b, geo, lambda m0, rows: update(m0, rows, k0, nk))
    kmain = b.sub(geo.K, b.urem(geo.K, c64(GEMV_K_ROWS)))
    for_range(b, 0, kmain, lambda k0: k_rows(k0, GEMV_K_ROWS), step=GEMV_K_ROWS)
    for_range(b, kmain, geo.K, lambda k: k_rows(k, 1))


def for_row_groups(b, geo, body, after=None):
    """body(m0, rows) over the rows of C in groups of GEMV_ROWS, `rows` a constant (a switch
    on the group's size), then after(m0, rows) with `rows` the run-time size."""
    fn = b.function

    def group(m0):
        rows = smin(b, c64(GEMV_ROWS), b.sub(geo.M, m0))
        join = fn.append_basic_block("rows.done")
        cases = [fn.append_basic_block(f"rows{r}") for r in range(1, GEMV_ROWS + 1)]
        sw = b.switch(rows, cases[-1])
        for r, block in enumerate(cases, 1):
            sw.add_case(c64(r), block)
            b.position_at_end(block)
            body(m0, r)
            b.branch(join)
        b.position_at_end(join)
        if after is not None:
            after(m0, rows)
    for_range(b, 0, geo.M, group, step=GEMV_ROWS)


def _flip_direction(b):
    """i1: walk B's column panels backwards in this call. Each call of a gemv kernel flips it
    (a global of the kernel): a weight bigger than the cache, read in the same order every
    call (an LSTM step), would miss on every line under LRU; walked back and forth, each call
    starts on the panels the last one left in cache. Results do not depend on the order (a
    race between threads only changes the order)."""
    g = ir.GlobalVariable(b.module, I32, name=f"{b.function.name}.backwards")
    g.initializer = const(I32, 0)
    g.linkage = "internal"
    flag = b.load(g, typ=I32)
    b.store(b.xor(flag, const(I32, 1)), g)
    return b.icmp_signed("!=", flag, const(I32, 0))


def gemv_panel(b, geo, blk, parallel):
    """Columns of one gemv item. Dot form: a panel of B of about GEMV_PANEL_BYTES (in units of
    4 vectors of columns, at least one), kept in cache while the row groups stream over it.
    Axpy form: a segment of GEMV_STREAM_BYTES of C over all rows (whole vectors, at least one),
    cut further on several threads like a blocked column block (`thread_columns`)."""
    def fit(nbytes, per_col, unit):
        cols = b.mul(b.udiv(b.udiv(c64(nbytes), per_col), c64(unit)), c64(unit))
        return b.select(b.icmp_signed("<", cols, c64(unit)), c64(unit), cols)
    dot, _ = gemv_layouts(b, geo)
    panel = fit(GEMV_PANEL_BYTES, b.mul(geo.K, c64(blk.size)), 4 * blk.vl)
    segment = fit(GEMV_STREAM_BYTES, b.mul(geo.M, c64(blk.size)), blk.vl)
    return b.select(dot, panel, thread_columns(b, geo, blk.vl, parallel, segment))


def emit_gemv_panel(b, geo, blk, expr, bi, n_fwd, panel, backwards):
    """"gemv" (K >= 1) on batch `bi`, the panel at `n_fwd` counted from the walk's start (the
    last panel first when `backwards`). Dot form: rows in groups of up to GEMV_ROWS, each group
    in one streaming pass over the panel, then the group's epilogue over its rows. Axpy form
    (the caller checked that one of them fits the strides): every row at once (`gemv_axpy`),
    then the epilogue."""
    dot, _ = gemv_layouts(b, geo)
    last_panel = b.mul(b.udiv(b.sub(geo.N, c64(1)), panel), panel)     # N >= 1 here
    n_lo = b.select(backwards, b.sub(last_panel, n_fwd), n_fwd)
    n_hi = smin(b, b.add(n_lo, panel), geo.N)
    cols = b.sub(n_hi, n_lo)

    def dot_rows():
        for_row_groups(b, geo, lambda m0, r: gemv_dot(b, geo, blk, bi, m0, r, n_lo, n_hi),
                       lambda m0, rows: apply_epilogue(b, geo, blk, expr, bi, m0, rows, n_lo,
                                                       cols))

    def axpy_rows():
        gemv_axpy(b, geo, blk, bi, n_lo, n_hi)
        apply_epilogue(b, geo, blk, expr, bi, c64(0), geo.M, n_lo, cols)
    if_then(b, dot, dot_rows, axpy_rows)


# ---------------------------------------------------------------------------------------------
# kernel functions


def _output_empty(b, geo):
    return b.or_(b.or_(eq(b, geo.M, c64(0)), eq(b, geo.N, c64(0))), eq(b, geo.nb, c64(0)))


def column_step(b, geo, blk, variant, parallel):
    """Columns of one item: a gemv panel or segment (`gemv_panel`), or a blocked column block:
    NC on one thread (or when the work stays on the calling thread: `parallel` false), else
    `thread_columns` in whole NR strips (at most NC). Every output element is computed by one
    item in the order one thread uses."""
    if variant == "gemv":
        return gemv_panel(b, geo, blk, parallel)
    return thread_columns(b, geo, blk.nr, parallel, c64(blk.nc))


def thread_columns(b, geo, granule, parallel, single):
    """Columns per item: `single` on one thread (or when `parallel` is false), else on T
    threads N / q with q = ceil(2T / batches) rounded up to whole `granule`s, at most `single`:
    about two items per thread, and no more (every column block of the blocked GEMM packs all
    of A again; batch_matmul over the heads needs no column split at all)."""
    threads = b.select(parallel, kernel_threads(b), c64(1))
    per_batch = _ceil_div(b, b.mul(threads, c64(2)), geo.nb)       # nb >= 1 here
    cols = b.mul(_ceil_div(b, _ceil_div(b, geo.N, per_batch), c64(granule)), c64(granule))
    return b.select(b.icmp_signed("<=", threads, c64(1)), single, smin(b, cols, single))


def skinny_columns(blk):
    """Columns of C^T (rows of x) the skinny form's buffers hold: SKINNY_MAX_ROWS in whole NR."""
    return -(-SKINNY_MAX_ROWS // blk.nr) * blk.nr


def skinny_depth(blk):
    """The deepest K of the skinny form: all of its packed x^T (K x skinny_columns) in the B
    buffer (the dispatcher sends deeper products to the packed forms)."""
    return blk.kc * blk.nc // skinny_columns(blk)


def _ceil_div(b, x, y):
    return b.udiv(b.add(x, b.sub(y, c64(1))), y)


def emit_variant(module, symbol, variant, sig, spec, make_geometry):
    """One variant function: validate everything, then compute (gemv, blocked and fast in
    chunks of output columns, on several threads when the work is at least PARALLEL_WORK)."""
    fn, b = new_function(module, family.variant_symbol(symbol, variant))
    arrays = prologue(b, *fn.args, sig)
    geo = make_geometry(b, spec, sig, arrays)
    blk = blocking(spec, sig)
    expr = spec.get("epilogue")
    return_zero_if(b, _output_empty(b, geo))
    check_data(b, arrays)
    if variant == "tiny":
        emit_tiny_body(b, geo, blk, expr)
        b.ret(const(I32, 0))
        return
    tiny = module.globals.get(family.variant_symbol(symbol, "tiny"))
    k_zero, go = fn.append_basic_block("k0"), fn.append_basic_block("go")
    b.cbranch(eq(b, geo.K, c64(0)), k_zero, go)
    b.position_at_end(k_zero)
    b.ret(b.call(tiny, list(fn.args)))
    b.position_at_end(go)
    backwards = const(I1, 0)
    if variant == "gemv":
        dot, axpy = gemv_layouts(b, geo)
        streams, neither = (fn.append_basic_block(f"gemv.{n}") for n in ("streams", "neither"))
        b.cbranch(b.or_(dot, axpy), streams, neither)
        b.position_at_end(neither)
        b.ret(b.call(tiny, list(fn.args)))
        b.position_at_end(streams)
        backwards = _flip_direction(b)
    if variant == "fast":
        aligned = eq(b, b.urem(geo.N, c64(blk.nr)), c64(0))
        check(b, b.and_(aligned, eq(b, geo.sc_n, c64(1))), ERR_LAYOUT)
    if variant == "skinny":      # all of x^T in the B buffer; W read along its rows
        fits = b.and_(b.icmp_signed("<=", geo.N, c64(skinny_columns(blk))),
                      b.icmp_signed("<=", geo.K, c64(skinny_depth(blk))))
        check(b, b.and_(fits, eq(b, geo.sa_k, c64(1))), ERR_LAYOUT)
    work = b.mul(b.mul(b.mul(geo.M, geo.N), geo.K), geo.nb)
    parallel = b.icmp_unsigned(">=", work, c64(parallel_work(spec, "matmul", symbol)))
    if variant == "packed":
        if "parallel_work" not in spec:
            parallel = b.or_(parallel, packed_streams(b, geo, blk))
        emit_packed_items(b, fn, geo, blk, parallel, lambda cb, cgeo, *bounds: packed_item(
            cb, cgeo, blk, expr, *bounds))
        b.ret(const(I32, 0))
        return
    step = column_step(b, geo, blk, variant, parallel)

    def chunks(cb, values, lo, hi):
        """Items [lo, hi) in a chunk function: item c is batch c / P, column block c % P (P
        blocks per batch). The geometry is derived again from the kernel's own arguments
        (cheap, and no IR value crosses functions)."""
        (args, nargs), backwards, step = values
        cgeo = make_geometry(cb, spec, sig, prologue(cb, args, nargs, sig))
        per_batch = _ceil_div(cb, cgeo.N, step)

        def item(c):
            bi, n0 = cb.udiv(c, per_batch), cb.mul(cb.urem(c, per_batch), step)
            if variant == "gemv":
                emit_gemv_panel(cb, cgeo, blk, expr, bi, n0, step, backwards)
            elif variant == "skinny":
                emit_skinny_columns(cb, cgeo, blk, expr, bi, n0, step)
            else:
                emit_blocked_columns(cb, cgeo, blk, expr, variant == "fast", bi, n0, step)
        for_range(cb, lo, hi, item)
    items = b.mul(geo.nb, _ceil_div(b, geo.N, step))
    split_for(b, (tuple(fn.args), backwards, step), items, chunks, parallel)
    b.ret(const(I32, 0))


def choices(blk, variants, threshold):
    """Dispatcher rules: gemv (if a variant) for 0 < K and M <= GEMV_MAX_ROWS rows per batch
    when a streaming form fits the strides, however little the work (its vector loop beats
    tiny's one scalar chain per output: an ONNX LSTM step's 1x16 by 16x64 dense, 0.9 -> 0.5 us);
    tiny for K == 0 or little work; skinny (if a variant) for a few rows in whole NR strips, W's
    rows contiguous, on one thread (its x^T has too few columns to split: on more threads with
    enough work fast runs, with the same bits); fast when the tiles fit; else blocked."""
    def gemv(b, geo):
        dot, axpy = gemv_layouts(b, geo)
        skinny = b.and_(b.icmp_signed("<=", geo.M, c64(GEMV_MAX_ROWS)), b.or_(dot, axpy))
        return b.and_(skinny, b.icmp_signed(">", geo.K, c64(0)))

    def tiny(b, geo):
        work = b.mul(b.mul(b.mul(geo.M, geo.N), geo.K), geo.nb)
        return b.or_(eq(b, geo.K, c64(0)), b.icmp_signed("<=", work, c64(TINY_WORK)))

    def skinny(b, geo):
        whole = eq(b, b.urem(geo.M, c64(blk.nr)), c64(0))
        few = b.and_(b.and_(b.icmp_signed("<=", geo.M, c64(SKINNY_MAX_ROWS)), whole),
                     b.icmp_signed("<=", geo.K, c64(skinny_depth(blk))))
        work = b.mul(b.mul(geo.M, geo.N), geo.K)
        alone = b.or_(b.icmp_signed("<=", kernel_threads(b), c64(1)),
                      b.icmp_unsigned("<", work, c64(threshold)))
        return b.and_(b.and_(few, eq(b, geo.sb_k, c64(1))), alone)

    def fast(b, geo):
        aligned = eq(b, b.urem(geo.N, c64(blk.nr)), c64(0))
        return b.and_(aligned, eq(b, geo.sc_n, c64(1)))
    rules = [("gemv", gemv), ("tiny", tiny), ("skinny", skinny), ("fast", fast),
             ("blocked", None), ("packed", None)]
    return [(name, rule) for name, rule in rules if name in variants]


def emit_gemm_kernel(module, symbol, spec, sig, make_geometry, variants=VARIANTS):
    """All `variants` (tiny first: the others call it) plus the dispatcher; returns the variant
    names in dispatcher order."""
    for variant in variants:
        geometry = transposed_dense(make_geometry) if variant == "skinny" else make_geometry
        emit_variant(module, symbol, variant, sig, spec, geometry)
    blk = blocking(spec, sig)
    threshold = parallel_work(spec, "matmul", symbol)
    return family.emit_dispatcher(module, symbol, sig, choices(blk, variants, threshold),
                                  prepare=lambda b, arrays: make_geometry(b, spec, sig, arrays))


# ---------------------------------------------------------------------------------------------
# the family


def _check(spec, inputs, outputs):
    op = spec.get("op")
    what = f"matmul kernel {op!r}"
    if op not in OPS:
        raise KernelError(f"matmul family: unknown op {op!r}; known: {sorted(OPS)}")
    if len(outputs) != 1 or len(inputs) < 2:
        raise KernelError(f"{what}: needs 2+ inputs and 1 output, got {len(inputs)} and "
                          f"{len(outputs)}")
    (ad, ar), (bd, br), (od, orank) = inputs[0], inputs[1], outputs[0]
    if not ad == bd == od or ad not in DTYPES:
        raise KernelError(f"{what}: operands and output need one dtype of {DTYPES}, got "
                          f"{ad}, {bd} -> {od}")
    want = {"dense": (ar if ar >= 1 else None, 2, ar), "matmul": (2, 2, 2),
            "batch_matmul": (3, 3, 3)}[op]
    units = spec.get("packed_units", 0)
    if units != 0:
        if op != "dense" or type(units) is not int or units < 0:
            raise KernelError(f"{what}: packed_units (dense only) must be an int >= 0, got "
                              f"{units!r}")
        want = (ar if ar >= 1 else None, 3, ar)
        width = spec.get("packed_width", 0)
        if type(width) is not int or width < 0 or width & (width - 1) or width > 64:
            raise KernelError(f"{what}: packed_width must be 0 (this machine's) or a power of "
                              f"two up to 64, got {width!r}")
    if (ar, br, orank) != want:
        raise KernelError(f"{what}: ranks {ar}, {br} -> {orank} do not fit the op")
    if any(rank > orank for _, rank in inputs[2:]):
        raise KernelError(f"{what}: an epilogue input has a higher rank than the output")
    check_epilogue(spec, od, [dt for dt, _ in inputs[2:]], what)
    parallel_work(spec, "matmul", what)


def _emit(module, symbol, spec, inputs, outputs):
    sig = [tuple(x) for x in inputs] + [tuple(x) for x in outputs]
    if spec.get("packed_units", 0):
        return emit_gemm_kernel(module, symbol, spec, sig, PackedDense, PACKED_VARIANTS)
    skinny = ("skinny",) if spec["op"] == "dense" and sig[0][1] == 2 else ()
    return emit_gemm_kernel(module, symbol, spec, sig, matmul_geometry(spec["op"]),
                            VARIANTS + skinny)


FAMILY = family.register(family.Family("matmul", _check, _emit))
