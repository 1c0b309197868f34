"""Data-movement kernel families: transpose, concatenate, split, strided_slice, take, broadcast_to.

Each kernel is built for fixed dtypes and ranks; extents and strides are read from the DLTensors
at run time. These kernels compute nothing, they move elements, so one generic tool carries most
of them: a loop nest over an extent list that copies the element at `src + sum(i_d * src_d)` to
`dst + sum(i_d * dst_d)` (`copy_nest`), where each op only chooses the extents, the base offsets
and the strides (a slice is an offset plus scaled strides, a broadcast is stride 0, a transpose
is a permutation of the input strides). The fast variants replace the innermost loop by one
`llvm.memcpy` of a contiguous row or block, or (2-D transpose) walk cache-sized tiles.

Every variant validates everything it relies on before touching memory: the shared prologue
(count, rank, dtype, NULL pointers, negative extents), every shape relation between inputs,
outputs and attrs (`ERR_SHAPE`; `ERR_BROADCAST` for a broadcast_to input dim that is neither
the output's nor 1), and its layout requirement (`ERR_LAYOUT`; the dispatcher picks
the generic strided variant whenever a fast one does not fit). Attrs are normalised at build time
(`check`), so the IR sees only static ints.

Variants (dispatcher order; the last one always fits):
  transpose      tiled (compact, a batch of 2-D transposes: block_swap) | rows (last axis
                 kept) | generic
  concatenate    blocks (compact: one memcpy per input block) | strided
  split          blocks | strided
  strided_slice  rows (last-axis step 1: one memcpy per row) | strided
  (dyn.strided_slice: the same family, spec op "dyn.strided_slice": begin / end / strides are
   inputs 1..3, 1-D int32/int64 tensors read inside the kernel; its dispatcher runs the full
   analysis first, so it can prefer rows when the run-time last-axis step is 1)
  take           rows (compact, 4 <= inner block < 128: memcpy) | gather (compact) | strided
  broadcast_to   rows (last dim not broadcast) | strided
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

from llvmlite import ir

from dynvm.kernels.abi import ERR_BROADCAST, ERR_LAYOUT, ERR_NULL, ERR_SHAPE, ERR_VALUE
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol, vector_lanes
from dynvm.kernels.llvm_util import (I1, I32, I64, MEM_TYPE, PTR, add_mul, all_of, check,
                                     check_equal, const, for_nest, for_range, get_function, icmp,
                                     is_compact, load, load_strides, new_function,
                                     parallel_work, product, prologue, smax, smin, split_for,
                                     store, transpose_vectors)
from dynvm.shape_funcs.transform import TAKE_MODES
from dynvm.vm.errors import KernelError

# Python ints in attrs may exceed int64; every extent is far below 2**62, so clamping a bound or
# stride to this magnitude changes no result and keeps the i64 arithmetic exact.
_BIG = 1 << 62
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}
TILE = 32       # transpose tile edge: 32 x 32 x 8 bytes = 8 KiB per tile, well inside L1


# ---------------------------------------------------------------------------------------------
# arrays, checks and loops


class Array:
    """One validated kernel argument: data pointer, extents, element strides, memory type."""

    def __init__(self, b, data, extents, strides_ptr, dtype):
        self.data, self.ext, self.dtype = data, list(extents), dtype
        self.ty = MEM_TYPE[dtype]
        self.strides = load_strides(b, self.ext, strides_ptr)
        self.count = product(b, self.ext)

    @property
    def rank(self):
        return len(self.ext)


def compact(b, a):
    """Row-major compact, ignoring extent-1 dims; an empty array is compact."""
    return is_compact(b, a.ext, a.strides)


def unit_inner(b, a):
    """The innermost dim is contiguous (so one row is a memcpy)."""
    if not a.ext:
        return const(I1, 1)
    fits = b.or_(icmp(b, "<=", a.ext[-1], 1), icmp(b, "==", a.strides[-1], 1))
    return b.or_(icmp(b, "==", a.count, 0), fits)


def element_ptr(b, a, offset):
    return b.gep(a.data, [offset], source_etype=a.ty)


def copy_element(b, dst, dst_off, src, src_off):
    b.store(b.load(element_ptr(b, src, src_off), typ=src.ty), element_ptr(b, dst, dst_off))


def memcpy(b, dst, dst_off, src, src_off, count):
    """Copy `count` consecutive elements (llvm.memcpy; arrays never overlap)."""
    fn = get_function(b.module, "llvm.memcpy.p0.p0.i64",
                      ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I1]))
    size = b.mul(count, const(I64, ITEMSIZE[dst.dtype]))
    b.call(fn, [element_ptr(b, dst, dst_off), element_ptr(b, src, src_off), size, const(I1, 0)])


def copy_nest(b, extents, dst, dst_off, dst_strides, src, src_off, src_strides, rows=False):
    """Copy the element at every index of `extents` from src to dst (strides per extent).

    rows=True copies the innermost extent with one memcpy (both inner strides must be 1).
    """
    rows = rows and bool(extents)
    loops = len(extents) - 1 if rows else len(extents)
    dims = [(extents[d], [dst_strides[d], src_strides[d]]) for d in range(loops)]

    def innermost(offsets):
        if rows:
            memcpy(b, dst, offsets[0], src, offsets[1], extents[-1])
        else:
            copy_element(b, dst, offsets[0], src, offsets[1])
    for_nest(b, dims, [dst_off, src_off], innermost)


# ---------------------------------------------------------------------------------------------
# kernel scaffolding: validated variants plus the shared dispatcher


@dataclass
class Variant:
    """name; body(b, info) emits the work; requires(b, info) -> i1 is the layout condition
    (ERR_LAYOUT when false, None = always fits); prefer(b, info) -> i1 is the dispatcher's
    choice (defaults to `requires`).

    items(b, info) -> i64, when given, makes the body body(b, info, lo, hi) over the items
    [lo, hi) of that many independent ones (rows of the outermost output dim, tiles...), which
    `split_for` runs on the kernel threads once the output has `threshold` elements (see
    `emit_kernel`). A moved element is the same whoever moves it: bit-identical by nature."""

    name: str
    body: Callable
    requires: Callable | None = None
    prefer: Callable | None = None
    items: Callable | None = None


def arrays_of(b, arrays, sig):
    return [Array(b, data, ext, strides, dt) for (data, ext, strides), (dt, _) in zip(arrays, sig)]


def emit_kernel(module, symbol, sig, analyse, variants, threshold=None):
    """Variant functions `symbol__<name>` and the dispatcher `symbol`; returns variant names.

    analyse(b, arrays) -> info checks every shape relation (returning ERR_SHAPE) and returns
    what the bodies need; it runs in each variant, so a variant called directly is safe too.
    A variant with `items` runs them through `split_for`, on the kernel threads when the
    output has at least `threshold` elements (the family's parallel_work).
    """
    for v in variants:
        fn, b = new_function(module, variant_symbol(symbol, v.name))
        arrays = arrays_of(b, prologue(b, *fn.args, sig), sig)
        for k, a in enumerate(arrays):
            not_null = b.icmp_unsigned("!=", a.data, ir.Constant(PTR, None))
            check(b, b.or_(icmp(b, "==", a.count, 0), not_null), ERR_NULL | k << 8)
        info = analyse(b, arrays)
        if v.requires is not None:
            check(b, v.requires(b, info), ERR_LAYOUT)
        if v.items is None:
            v.body(b, info)
        else:
            _split_items(b, tuple(fn.args), sig, analyse, v, info, threshold)
        b.ret(const(I32, 0))

    def prepare(b, raw):
        return analyse_layout(b, arrays_of(b, raw, sig))

    choices = [(v.name, (lambda v: lambda b, info: (v.prefer or v.requires)(b, info))(v))
               for v in variants[:-1]] + [(variants[-1].name, None)]
    return emit_dispatcher(module, symbol, sig, choices, prepare)


def _split_items(b, args, sig, analyse, variant, info, threshold):
    """variant.body over its items in `split_for` chunks; each chunk function reads the
    arrays again from the kernel's own arguments (already validated: cheap, and no IR value
    crosses functions)."""
    def chunks(cb, args, lo, hi):
        variant.body(cb, analyse(cb, arrays_of(cb, prologue(cb, *args, sig), sig)), lo, hi)
    worth = b.icmp_unsigned(">=", info.out.count, const(I64, threshold))
    split_for(b, args, variant.items(b, info), chunks, worth)


class Info(SimpleNamespace):
    """What analyse() found (info.out, info.offsets, ...), shared by a kernel's variant bodies."""


def analyse_layout(b, arrays):
    """The dispatcher's view: arrays only (shape relations are checked by the variant)."""
    return Info(arrays=arrays, inp=arrays[:-1], out=arrays[-1], all=arrays)


def all_compact(b, info):
    return all_of(b, [compact(b, a) for a in info.arrays])


def all_unit_inner(b, info):
    return all_of(b, [unit_inner(b, a) for a in info.arrays])


def normalize_axis(op, axis, rank):
    if isinstance(axis, bool) or not isinstance(axis, int) or not -rank <= axis < rank:
        raise KernelError(f"{op}: axis {axis!r} is out of range for rank {rank}")
    return axis % rank


def check_sig(op, inputs, outputs, n_in=None, n_out=None):
    if n_in is not None and len(inputs) != n_in:
        raise KernelError(f"{op}: expected {n_in} input(s), got {len(inputs)}")
    if n_out is not None and len(outputs) != n_out:
        raise KernelError(f"{op}: expected {n_out} output(s), got {len(outputs)}")


def same_dtype(op, sigs):
    if len({dt for dt, _ in sigs}) > 1:
        raise KernelError(f"{op}: all arrays need one dtype, got {[dt for dt, _ in sigs]}")


def _sig(inputs, outputs):
    return [tuple(x) for x in inputs] + [tuple(x) for x in outputs]


def family(name, check_fn, emit_fn):
    """Register a family whose `emit_fn(module, symbol, spec, sig)` returns variant names."""
    def emit(module, symbol, spec, inputs, outputs):
        check_fn(spec, inputs, outputs)
        return emit_fn(module, symbol, spec, _sig(inputs, outputs))
    return register(Family(name, check_fn, emit))


# ---------------------------------------------------------------------------------------------
# transpose


def transpose_perm(spec, rank):
    axes = spec.get("axes")
    if axes is None:
        return list(range(rank))[::-1]
    perm = [normalize_axis("transpose", a, rank) for a in axes]
    if sorted(perm) != list(range(rank)):
        raise KernelError(f"transpose: axes {axes} are not a permutation of {rank} axes")
    return perm


def check_transpose(spec, inputs, outputs):
    check_sig("transpose", inputs, outputs, 1, 1)
    same_dtype("transpose", inputs + outputs)
    if inputs[0][1] != outputs[0][1]:
        raise KernelError("transpose: input and output ranks differ")
    transpose_perm(spec, inputs[0][1])
    parallel_work(spec, "transpose", "transpose")


def emit_transpose(module, symbol, spec, sig):
    """Every variant splits its outermost output dim (the tiled one: its batches x tile
    columns) over the kernel threads from PARALLEL_WORK["transpose"] output elements."""
    r = sig[0][1]
    perm = transpose_perm(spec, r)

    def analyse(b, arrays):
        x, out = arrays
        for d, p in enumerate(perm):
            check_equal(b, out.ext[d], x.ext[p], 1, d)
        return Info(x=x, out=out, arrays=arrays)

    def generic(b, info, lo=None, hi=None, rows=False):
        """out[lo:hi] (the outermost dim) = the permuted x; everything for rank 0."""
        x, out = info.x, info.out
        ext, start = list(out.ext), [const(I64, 0), const(I64, 0)]
        xs = [x.strides[p] for p in perm]
        if lo is not None:
            ext[0] = b.sub(hi, lo)
            start = [b.mul(lo, out.strides[0]), b.mul(lo, xs[0])]
        copy_nest(b, ext, out, start[0], out.strides, x, start[1], xs, rows=rows)

    outer = (lambda b, info: info.out.ext[0]) if r >= 1 else None
    variants = []
    swap = block_swap(perm)
    if swap is not None:
        view = functools.partial(_swap_view, *swap)
        variants.append(Variant("tiled", lambda b, info, lo, hi: _transpose_tiled(
            b, info, view(b, info), lo, hi), all_compact,
            items=lambda b, info: _tile_columns(b, view(b, info))))
    if r >= 1 and perm[-1] == r - 1:
        variants.append(Variant("rows", lambda b, info, lo, hi: generic(b, info, lo, hi, True),
                                all_unit_inner, items=outer))
    variants.append(Variant("generic", generic, items=outer))
    return emit_kernel(module, symbol, sig, analyse, variants,
                       parallel_work(spec, "transpose", "transpose"))


def block_swap(perm):
    """(p, k) when `perm` keeps the axes before p and puts the block of axes k.. before the
    block p..k-1 ([0, 2, 1], [1, 2, 0], [2, 0, 1], [0, 3, 1, 2]...): on compact arrays a batch
    of 2-D transposes [M, N] -> [N, M], M the product of x's extents p..k-1 and N of k..;
    else None."""
    r = len(perm)
    p = next((d for d in range(r) if perm[d] != d), r)
    if p == r:
        return None
    k = perm[p]
    return (p, k) if list(perm[p:]) == list(range(k, r)) + list(range(p, k)) else None


def _swap_view(p, k, b, info):
    """(batches, M, N) of `block_swap`'s view of x."""
    ext = info.x.ext
    return product(b, ext[:p]), product(b, ext[p:k]), product(b, ext[k:])


def _tile_columns(b, view):
    """Items of the tiled transpose: batches x column tiles of x (TILE rows of the output)."""
    batches, _, n = view
    return b.mul(batches, b.sdiv(b.add(n, const(I64, TILE - 1)), const(I64, TILE)))


# the tiled transpose's loops: already blocked by hand (LLVM's vectoriser and unroller would only
# add compile time)
_PLAIN = {"vectorize": False, "unroll": False}


def _transpose_tiled(b, info, view, lo, hi):
    """x viewed [batches, M, N] -> [batches, N, M], compact, items [lo, hi) of `_tile_columns`:
    TILE x TILE tiles down one column tile of x. Inside a tile, blocks of L x L elements (L the
    native vector's lanes; 4- and 8-byte dtypes) are L vector loads, an in-register transpose
    and L vector stores (`_transpose_block`), walked down the tile's columns so that each
    output row's TILE elements are written one after the other (across the rows first, output
    rows a multiple of 4 KiB apart all fell into one L1 set: 1.6x slower at 1024 x 256); the
    tile's right and bottom edges, and 1-byte dtypes, move element by element (the stores
    contiguous, the strided loads in cache)."""
    x, out = info.x, info.out
    _, m, n = view
    mn = b.mul(m, n)
    tiles_m = b.sdiv(b.add(m, const(I64, TILE - 1)), const(I64, TILE))
    tiles_n = b.sdiv(b.add(n, const(I64, TILE - 1)), const(I64, TILE))
    lanes = vector_lanes(ITEMSIZE[x.dtype] * 8) if ITEMSIZE[x.dtype] >= 4 else 1

    def per_item(t):
        base = b.mul(b.sdiv(t, tiles_n), mn)
        j0 = b.mul(b.srem(t, tiles_n), const(I64, TILE))
        jlen = smin(b, const(I64, TILE), b.sub(n, j0))
        jvec = b.sub(jlen, b.srem(jlen, const(I64, lanes)))

        def elements(i0, i_lo, i_hi, j_lo, j_hi):
            def per_col(jj):
                j = b.add(j0, jj)
                dst_row = b.add(base, b.mul(j, m))

                def per_elem(ii):
                    i = b.add(i0, ii)
                    copy_element(b, out, b.add(dst_row, i), x, b.add(base, add_mul(b, j, i, n)))
                for_range(b, i_lo, i_hi, per_elem, **_PLAIN)
            for_range(b, j_lo, j_hi, per_col, **_PLAIN)

        def per_tile(ti):
            i0 = b.mul(ti, const(I64, TILE))
            ilen = smin(b, const(I64, TILE), b.sub(m, i0))
            ivec = const(I64, 0)
            if lanes > 1:
                ivec = b.sub(ilen, b.srem(ilen, const(I64, lanes)))

                def per_block_column(jj):     # down the tile: an output row's blocks in a row
                    j = b.add(j0, jj)

                    def per_block(ii):
                        i = b.add(i0, ii)
                        _transpose_block(b, x, b.add(base, add_mul(b, j, i, n)), n, out,
                                         b.add(base, add_mul(b, i, j, m)), m, lanes)
                    for_range(b, 0, ivec, per_block, step=lanes, **_PLAIN)
                for_range(b, 0, jvec, per_block_column, step=lanes, **_PLAIN)
                elements(i0, 0, ivec, jvec, jlen)           # right edge of the blocks
            elements(i0, ivec, ilen, 0, jlen)               # bottom rows, the whole width
        for_range(b, 0, tiles_m, per_tile, **_PLAIN)
    for_range(b, lo, hi, per_item, **_PLAIN)


def _transpose_block(b, x, src, n, out, dst, m, lanes):
    """out[dst + c*m + a] = x[src + a*n + c] for a, c < lanes: `lanes` vector loads, an
    in-register transpose (`transpose_vectors`), `lanes` vector stores."""
    vty = ir.VectorType(x.ty, lanes)
    rows = [load(b, x.data, b.add(src, b.mul(const(I64, a), n)), vty) for a in range(lanes)]
    for c, v in enumerate(transpose_vectors(b, rows)):
        store(b, v, out.data, b.add(dst, b.mul(const(I64, c), m)))


family("transpose", check_transpose, emit_transpose)


# ---------------------------------------------------------------------------------------------
# concatenate (the tuple argument arrives as N inputs) and split (N outputs)


def check_concatenate(spec, inputs, outputs):
    check_sig("concatenate", inputs, outputs, None, 1)
    if not inputs:
        raise KernelError("concatenate: needs at least one input")
    same_dtype("concatenate", inputs + outputs)
    if len({rank for _, rank in inputs + outputs}) != 1 or outputs[0][1] == 0:
        raise KernelError("concatenate: all arrays need the same rank >= 1")
    normalize_axis("concatenate", spec.get("axis", 0), outputs[0][1])


def emit_concatenate(module, symbol, spec, sig):
    r = sig[-1][1]
    axis = normalize_axis("concatenate", spec.get("axis", 0), r)

    def analyse(b, arrays):
        *xs, out = arrays
        offsets, total = [], const(I64, 0)
        for k, x in enumerate(xs):
            for d in range(r):
                if d != axis:
                    check_equal(b, x.ext[d], out.ext[d], k, d)
            offsets.append(total)
            total = b.add(total, x.ext[axis])
        check_equal(b, out.ext[axis], total, len(xs), axis)
        return Info(xs=xs, out=out, offsets=offsets, arrays=arrays)

    def blocks(b, info):
        """Compact: per outer index, one memcpy of each input's whole block."""
        out = info.out
        outer = product(b, out.ext[:axis])
        inner = product(b, out.ext[axis + 1:])
        out_block = b.mul(out.ext[axis], inner)

        def per_outer(o):
            for x, off in zip(info.xs, info.offsets):
                size = b.mul(x.ext[axis], inner)
                memcpy(b, out, add_mul(b, b.mul(off, inner), o, out_block), x, b.mul(o, size), size)
        for_range(b, 0, outer, per_outer)

    def strided(b, info):
        out = info.out
        for x, off in zip(info.xs, info.offsets):
            copy_nest(b, x.ext, out, b.mul(off, out.strides[axis]), out.strides,
                      x, const(I64, 0), x.strides)

    return emit_kernel(module, symbol, sig, analyse,
                       [Variant("blocks", blocks, all_compact), Variant("strided", strided)])


family("concatenate", check_concatenate, emit_concatenate)


def slice_bounds(b, n, begin, end, step):
    """(start, length) of Python's `range(n)[begin:end:step]` for static begin/end/step and
    run-time n (slice.indices: negative values count from the end, then clamp)."""
    step = max(-_BIG, min(_BIG, step))
    zero = const(I64, 0)
    lower, upper = (const(I64, -1), b.sub(n, const(I64, 1))) if step < 0 else (zero, n)

    def bound(v, default):
        if v is None:
            return default
        v = max(-_BIG, min(_BIG, v))
        if v < 0:
            return smax(b, b.add(n, const(I64, v)), lower)
        return smin(b, const(I64, v), upper)

    start = bound(begin, upper if step < 0 else lower)
    stop = bound(end, lower if step < 0 else upper)
    span = b.sub(stop, start) if step > 0 else b.sub(start, stop)
    length = b.add(b.sdiv(b.sub(span, const(I64, 1)), const(I64, abs(step))), const(I64, 1))
    return start, b.select(icmp(b, ">", span, 0), length, zero)


def split_sections(spec, n_out):
    sections = spec["indices_or_sections"]
    if isinstance(sections, int) and not isinstance(sections, bool):
        if sections <= 0 or sections != n_out:
            raise KernelError(f"split: {sections} sections for {n_out} outputs")
        return sections
    if not isinstance(sections, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in sections):
        raise KernelError(f"split: indices_or_sections must be an int or a list of ints, "
                          f"got {sections!r}")
    if len(sections) + 1 != n_out:
        raise KernelError(f"split: {len(sections)} split points for {n_out} outputs")
    return list(sections)


def check_split(spec, inputs, outputs):
    check_sig("split", inputs, outputs, 1, None)
    same_dtype("split", inputs + outputs)
    r = inputs[0][1]
    if r == 0 or any(rank != r for _, rank in outputs):
        raise KernelError("split: input and outputs need the same rank >= 1")
    normalize_axis("split", spec.get("axis", 0), r)
    split_sections(spec, len(outputs))


def emit_split(module, symbol, spec, sig):
    r = sig[0][1]
    axis = normalize_axis("split", spec.get("axis", 0), r)
    sections = split_sections(spec, len(sig) - 1)

    def analyse(b, arrays):
        x, *outs = arrays
        dim = x.ext[axis]
        if isinstance(sections, int):
            check(b, icmp(b, "==", b.srem(dim, const(I64, sections)), 0),
                  ERR_SHAPE | 0 << 8 | axis << 16)
            size = b.sdiv(dim, const(I64, sections))
            parts = [(b.mul(size, const(I64, j)), size) for j in range(sections)]
        else:
            bounds = [0, *sections, None]
            # numpy.split takes x[lo:hi] along the axis: Python slice clamping, negatives too
            parts = [slice_bounds(b, dim, lo, hi, 1) for lo, hi in zip(bounds, bounds[1:])]
        for j, (out, (_, length)) in enumerate(zip(outs, parts)):
            for d in range(r):
                check_equal(b, out.ext[d], length if d == axis else x.ext[d], j + 1, d)
        return Info(x=x, outs=outs, starts=[s for s, _ in parts], arrays=arrays)

    def blocks(b, info):
        x = info.x
        outer = product(b, x.ext[:axis])
        inner = product(b, x.ext[axis + 1:])
        x_block = b.mul(x.ext[axis], inner)

        def per_outer(o):
            for out, start in zip(info.outs, info.starts):
                size = b.mul(out.ext[axis], inner)
                memcpy(b, out, b.mul(o, size), x, add_mul(b, b.mul(start, inner), o, x_block), size)
        for_range(b, 0, outer, per_outer)

    def strided(b, info):
        x = info.x
        for out, start in zip(info.outs, info.starts):
            copy_nest(b, out.ext, out, const(I64, 0), out.strides,
                      x, b.mul(start, x.strides[axis]), x.strides)

    return emit_kernel(module, symbol, sig, analyse,
                       [Variant("blocks", blocks, all_compact), Variant("strided", strided)])


family("split", check_split, emit_split)


# ---------------------------------------------------------------------------------------------
# strided_slice


def slice_params(spec, rank):
    """[(axis, begin, end, step)] with Relay/numpy semantics, validated at build time."""
    begin, end = list(spec.get("begin") or []), list(spec.get("end") or [])
    strides = list(spec.get("strides") or [])
    axes = spec.get("axes")
    if axes is None:
        axes = list(range(max(len(begin), len(end))))
    elif len(begin) != len(axes) or len(end) != len(axes):
        raise KernelError("strided_slice: begin, end and axes need the same length")
    out = []
    for i, a in enumerate(axes):
        a = normalize_axis("strided_slice", a, rank)
        lo = begin[i] if i < len(begin) else None
        hi = end[i] if i < len(end) else None
        step = strides[i] if i < len(strides) else 1
        for v in (lo, hi, step):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise KernelError(f"strided_slice: begin, end and strides must be ints, got {v!r}")
        if step is None or step == 0:
            raise KernelError("strided_slice: stride must not be zero")
        out.append((a, lo, hi, step))
    if len({a for a, *_ in out}) != len(out):
        raise KernelError(f"strided_slice: repeated axis in {axes}")
    return out


def check_strided_slice(spec, inputs, outputs):
    if spec.get("op") == "dyn.strided_slice":
        return check_dyn_strided_slice(spec, inputs, outputs)
    check_sig("strided_slice", inputs, outputs, 1, 1)
    same_dtype("strided_slice", inputs + outputs)
    if inputs[0][1] != outputs[0][1]:
        raise KernelError("strided_slice: input and output ranks differ")
    slice_params(spec, inputs[0][1])


def emit_strided_slice(module, symbol, spec, sig):
    if spec.get("op") == "dyn.strided_slice":
        return emit_dyn_strided_slice(module, symbol, spec, sig)
    r = sig[0][1]
    params = {a: (lo, hi, step) for a, lo, hi, step in slice_params(spec, r)}
    inner_step = params.get(r - 1, (None, None, 1))[2] if r else None

    def analyse(b, arrays):
        x, out = arrays
        offset, strides = const(I64, 0), []
        for d in range(r):
            if d in params:
                lo, hi, step = params[d]
                start, length = slice_bounds(b, x.ext[d], lo, hi, step)
                offset = add_mul(b, offset, start, x.strides[d])
                strides.append(b.mul(x.strides[d], const(I64, max(-_BIG, min(_BIG, step)))))
            else:
                length = x.ext[d]
                strides.append(x.strides[d])
            check_equal(b, out.ext[d], length, 1, d)
        return Info(x=x, out=out, offset=offset, src_strides=strides, arrays=arrays)

    def body(b, info, rows=False):
        copy_nest(b, info.out.ext, info.out, const(I64, 0), info.out.strides,
                  info.x, info.offset, info.src_strides, rows=rows)

    variants = [Variant("strided", body)]
    if inner_step == 1:
        variants.insert(0, Variant("rows", lambda b, info: body(b, info, rows=True),
                                   all_unit_inner))
    return emit_kernel(module, symbol, sig, analyse, variants)


def dyn_slice_axes(spec, rank):
    axes = spec.get("axes")
    if axes is None:
        return list(range(rank))
    if not isinstance(axes, (list, tuple)):
        raise KernelError(f"dyn.strided_slice: axes must be a list of ints, got {axes!r}")
    out = [normalize_axis("dyn.strided_slice", a, rank) for a in axes]
    if len(set(out)) != len(out):
        raise KernelError(f"dyn.strided_slice: repeated axis in {axes}")
    return out


def check_dyn_strided_slice(spec, inputs, outputs):
    op = "dyn.strided_slice"
    check_sig(op, inputs, outputs, 4, 1)
    same_dtype(op, [inputs[0], outputs[0]])
    if inputs[0][1] != outputs[0][1]:
        raise KernelError(f"{op}: input and output ranks differ")
    for (dt, rank), what in zip(inputs[1:], ("begin", "end", "strides")):
        if rank != 1 or dt not in ("int32", "int64"):
            raise KernelError(f"{op}: {what} must be a 1-D int32/int64 tensor, got {dt} rank {rank}")
    dyn_slice_axes(spec, inputs[0][1])


def dyn_slice_bounds(b, n, lo, hi, step):
    """(start, length) of Python's `range(n)[lo:hi:step]`, all run-time i64 (step != 0, |step|
    <= _BIG): slice_bounds with the sign of the step chosen at run time."""
    zero, one = const(I64, 0), const(I64, 1)
    neg = icmp(b, "<", step, 0)
    lower = b.select(neg, const(I64, -1), zero)
    upper = b.select(neg, b.sub(n, one), n)

    def bound(v):
        return b.select(icmp(b, "<", v, 0), smax(b, b.add(n, v), lower), smin(b, v, upper))

    start, stop = bound(lo), bound(hi)
    span = b.select(neg, b.sub(start, stop), b.sub(stop, start))
    mag = b.select(neg, b.sub(zero, step), step)
    length = b.add(b.sdiv(b.sub(span, one), mag), one)
    return start, b.select(icmp(b, ">", span, 0), length, zero)


def emit_dyn_strided_slice(module, symbol, spec, sig):
    r = sig[0][1]
    axes = dyn_slice_axes(spec, r)
    n = len(axes)

    def read(b, a, i):
        v = b.load(element_ptr(b, a, b.mul(const(I64, i), a.strides[0])), typ=a.ty)
        return b.sext(v, I64) if v.type != I64 else v

    def analyse(b, arrays):
        x, begin, end, steps, out = arrays
        for k, a in enumerate((begin, end, steps), start=1):
            check_equal(b, a.ext[0], n, k, 0)
        params = {}
        for i, d in enumerate(axes):
            lo, hi, step = read(b, begin, i), read(b, end, i), read(b, steps, i)
            check(b, icmp(b, "!=", step, 0), ERR_VALUE | 3 << 8 | i << 16)
            step = smax(b, smin(b, step, const(I64, _BIG)), const(I64, -_BIG))
            params[d] = (lo, hi, step)
        offset, strides = const(I64, 0), []
        for d in range(r):
            if d in params:
                lo, hi, step = params[d]
                start, length = dyn_slice_bounds(b, x.ext[d], lo, hi, step)
                offset = add_mul(b, offset, start, x.strides[d])
                strides.append(b.mul(x.strides[d], step))
            else:
                length = x.ext[d]
                strides.append(x.strides[d])
            check_equal(b, out.ext[d], length, 4, d)
        return Info(x=x, out=out, offset=offset, src_strides=strides, arrays=[x, out])

    def rows_fit(b, info):
        """The output's rows are contiguous and so are the source rows they come from."""
        out = info.out
        inner = b.or_(icmp(b, "<=", out.ext[-1], 1),
                      b.and_(icmp(b, "==", out.strides[-1], 1),
                             icmp(b, "==", info.src_strides[-1], 1)))
        return b.or_(icmp(b, "==", out.count, 0), inner)

    def body(b, info, rows=False):
        copy_nest(b, info.out.ext, info.out, const(I64, 0), info.out.strides,
                  info.x, info.offset, info.src_strides, rows=rows)

    variants = [Variant("strided", body)]
    if r:
        variants.insert(0, Variant("rows", lambda b, info: body(b, info, rows=True), rows_fit))

    def checked(b, arrays):
        for k, a in enumerate(arrays):
            not_null = b.icmp_unsigned("!=", a.data, ir.Constant(PTR, None))
            check(b, b.or_(icmp(b, "==", a.count, 0), not_null), ERR_NULL | k << 8)
        return analyse(b, arrays)

    for v in variants:
        fn, b = new_function(module, variant_symbol(symbol, v.name))
        info = checked(b, arrays_of(b, prologue(b, *fn.args, sig), sig))
        if v.requires is not None:
            check(b, v.requires(b, info), ERR_LAYOUT)
        v.body(b, info)
        b.ret(const(I32, 0))
    # the dispatcher validates values and shapes too (same error codes) to choose on the steps
    choices = [(v.name, v.requires) for v in variants[:-1]] + [(variants[-1].name, None)]
    return emit_dispatcher(module, symbol, sig, choices,
                           lambda b, raw: checked(b, arrays_of(b, raw, sig)))


family("strided_slice", check_strided_slice, emit_strided_slice)


# ---------------------------------------------------------------------------------------------
# take


def check_take(spec, inputs, outputs):
    check_sig("take", inputs, outputs, 2, 1)
    (ddt, dr), (idt, ir_), (odt, orank) = inputs[0], inputs[1], outputs[0]
    if ddt != odt or idt not in ("int32", "int64"):
        raise KernelError(f"take: data {ddt}, indices {idt}, output {odt} do not fit")
    if spec.get("mode", "clip") not in TAKE_MODES:
        raise KernelError(f"take: mode must be one of {TAKE_MODES}, got {spec.get('mode')!r}")
    axis = spec.get("axis")
    if axis is None:
        if orank != ir_:
            raise KernelError("take: with axis=None the output rank is the indices' rank")
    else:
        normalize_axis("take", axis, dr)
        if orank != dr - 1 + ir_:
            raise KernelError("take: output rank must be data rank - 1 + indices rank")


# take: one memcpy per inner block beats the element loop for small blocks only (measured on
# 4M float32: memcpy 1.3 ms vs loop 4.5 ms at 32 elements, 1.3 vs 0.54 ms at 512)
ROWS_RANGE = (4, 128)


def emit_take(module, symbol, spec, sig):
    (_, dr), (_, ri) = sig[0], sig[1]
    axis = None if spec.get("axis") is None else normalize_axis("take", spec["axis"], dr)
    mode = spec.get("mode", "clip")

    def analyse(b, arrays):
        data, idx, out = arrays
        if axis is None:
            n, outer, inner = data.count, const(I64, 1), const(I64, 1)
            for d in range(ri):
                check_equal(b, out.ext[d], idx.ext[d], 2, d)
        else:
            n = data.ext[axis]
            outer, inner = product(b, data.ext[:axis]), product(b, data.ext[axis + 1:])
            expected = data.ext[:axis] + idx.ext + data.ext[axis + 1:]
            for d, e in enumerate(expected):
                check_equal(b, out.ext[d], e, 2, d)
        # an empty axis has no element to clip or wrap to
        check(b, b.or_(icmp(b, ">", n, 0), icmp(b, "==", idx.count, 0)),
              ERR_SHAPE | 0 << 8 | (axis or 0) << 16)
        return Info(data=data, idx=idx, out=out, n=n, outer=outer, inner=inner, arrays=arrays)

    def fix(b, info, i):
        """clip: into [0, n-1] (negatives clip to 0, as numpy); wrap: Python-style i mod n;
        raise: negatives from the end, anything outside [-n, n) ERR_VALUE (the indices)."""
        n = info.n
        if i.type != I64:
            i = b.sext(i, I64)
        if mode == "wrap":
            r = b.srem(i, n)
            return b.select(icmp(b, "<", r, 0), b.add(r, n), r)
        if mode == "raise":
            r = b.select(icmp(b, "<", i, 0), b.add(i, n), i)
            check(b, b.and_(icmp(b, ">=", r, 0), icmp(b, "<", r, n)), ERR_VALUE | 1 << 8)
            return r
        return smax(b, smin(b, i, b.sub(n, const(I64, 1))), const(I64, 0))

    def load_index(b, info, offset):
        return fix(b, info, b.load(element_ptr(b, info.idx, offset), typ=info.idx.ty))

    def compact(b, info, rows):
        """data viewed as [outer, n, inner], out as [outer, count(indices), inner]."""
        data, out, inner = info.data, info.out, info.inner
        j_count = info.idx.count

        def per_outer(p):
            def per_index(j):
                k = load_index(b, info, j)
                src = b.mul(add_mul(b, k, p, info.n), inner)
                dst = b.mul(add_mul(b, j, p, j_count), inner)
                if rows:
                    memcpy(b, out, dst, data, src, inner)
                else:
                    for_range(b, 0, inner, lambda q: copy_element(b, out, b.add(dst, q),
                                                                data, b.add(src, q)))
            for_range(b, 0, j_count, per_index)
        for_range(b, 0, info.outer, per_outer)

    def strided(b, info):
        data, idx, out = info.data, info.idx, info.out
        pre = 0 if axis is None else axis

        def nest(d, oo, do, io):
            if d == pre + ri:
                k = load_index(b, info, io)
                if axis is None:
                    do = b.add(do, _unravel(b, data, k))
                else:
                    do = add_mul(b, do, k, data.strides[axis])
            if d == out.rank:
                copy_element(b, out, oo, data, do)
                return
            if d < pre:
                ds, is_ = data.strides[d], None
            elif d < pre + ri:
                ds, is_ = None, idx.strides[d - pre]
            else:
                ds, is_ = data.strides[d - ri + 1], None
            for_range(b, 0, out.ext[d], lambda i: nest(
                d + 1, add_mul(b, oo, i, out.strides[d]),
                do if ds is None else add_mul(b, do, i, ds),
                io if is_ is None else add_mul(b, io, i, is_)))

        zero = const(I64, 0)
        nest(0, zero, zero, zero)

    def prefer_rows(b, info):
        inner = product(b, info.arrays[0].ext[axis + 1:])
        return all_of(b, [all_compact(b, info), icmp(b, ">=", inner, ROWS_RANGE[0]),
                          icmp(b, "<", inner, ROWS_RANGE[1])])

    variants = [Variant("gather", lambda b, info: compact(b, info, False), all_compact),
                Variant("strided", strided)]
    if axis is not None and axis < dr - 1:
        variants.insert(0, Variant("rows", lambda b, info: compact(b, info, True), all_compact,
                                   prefer_rows))
    return emit_kernel(module, symbol, sig, analyse, variants)


def _unravel(b, a, flat):
    """Element offset of row-major flat index `flat` in array `a` (any strides)."""
    offset, rest = const(I64, 0), flat
    for e, s in zip(reversed(a.ext), reversed(a.strides)):
        q = b.udiv(rest, e)
        offset = add_mul(b, offset, b.sub(rest, b.mul(q, e)), s)
        rest = q
    return offset


family("take", check_take, emit_take)


# ---------------------------------------------------------------------------------------------
# broadcast_to


def check_broadcast_to(spec, inputs, outputs):
    check_sig("broadcast_to", inputs, outputs, 1, 1)
    same_dtype("broadcast_to", inputs + outputs)
    shape = spec.get("shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != outputs[0][1]:
        raise KernelError(f"broadcast_to: shape {shape!r} does not fit output rank {outputs[0][1]}")
    if inputs[0][1] > outputs[0][1]:
        raise KernelError("broadcast_to: the input rank exceeds the output rank")


def emit_broadcast_to(module, symbol, spec, sig):
    shape = [int(d) for d in spec["shape"]]
    rx, ro = sig[0][1], sig[1][1]

    def analyse(b, arrays):
        x, out = arrays
        for d, e in enumerate(shape):
            check_equal(b, out.ext[d], e, 1, d)
        strides = [const(I64, 0)] * (ro - rx)
        for j in range(rx):
            e = x.ext[j]
            o = out.ext[ro - rx + j]
            check(b, b.or_(icmp(b, "==", e, o), icmp(b, "==", e, 1)), ERR_BROADCAST | j << 16)
            strides.append(b.select(icmp(b, "==", e, 1), const(I64, 0), x.strides[j]))
        return Info(x=x, out=out, src_strides=strides, arrays=arrays)

    def body(b, info, rows=False):
        copy_nest(b, info.out.ext, info.out, const(I64, 0), info.out.strides,
                  info.x, const(I64, 0), info.src_strides, rows=rows)

    def rows_fit(b, info):
        x, out = info.arrays
        return b.and_(all_unit_inner(b, info), icmp(b, "==", x.ext[-1], out.ext[-1]))

    variants = [Variant("strided", body)]
    if rx >= 1:
        variants.insert(0, Variant("rows", lambda b, info: body(b, info, rows=True), rows_fit))
    return emit_kernel(module, symbol, sig, analyse, variants)


family("broadcast_to", check_broadcast_to, emit_broadcast_to)
