"""Row updates: the "set_row" and "scatter_rows" kernel families.

set_row: out = data with row `index` (axis 0) replaced by `row`.

Signature: inputs data (T, r >= 1), index (int32 or int64, 0-d), row (T, r - 1); output
out (T, r) with data's extents. The index is clamped into [0, n - 1]; n == 0 is ERR_SHAPE (no
row to replace), as are mismatched extents. The output either is `data` itself (the same data
pointer: the in-place update a native loop makes, compiler/codegen/native_loop.py; the copy is
skipped) or does not overlap it; `row` may overlap neither.

Variants (dispatcher order; the last one always fits):
  compact   every array compact: one memmove of data, one of the row
  strided   element by element over any strides

scatter_rows (attr `reduction`: none, add, mul, max, min): inputs data (T, 2) of (rows, width),
positions (int64, 1) of n, updates (T, 2) of (n, width); output out (T, 2) like data. out is
data with update row k written to (or combined into) row positions[k], for k = 0, 1, ... in
order, so the last write to a row wins and reductions apply one after another; a negative
position counts from the end. A position outside [-rows, rows) is ERR_VALUE (argument 1), and
mismatched extents ERR_SHAPE. Float max/min propagate NaN (numpy's maximum/minimum). One
variant, `rows`, over any strides: the work is one pass over data and one over the updates.
The output either is data itself or does not overlap it.
"""
from __future__ import annotations

from llvmlite import ir

from dynvm.kernels.abi import ERR_LAYOUT, ERR_NULL, ERR_SHAPE, ERR_VALUE
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol
from dynvm.kernels.llvm_util import (I1, I32, I64, MEM_TYPE, PTR, all_of, check,
                                     check_equal, const, elem_bytes, elem_ptr, for_nest,
                                     for_range, icmp, if_then, is_compact, is_float, load,
                                     load_strides, new_function, product, prologue, smax, smin,
                                     store)
from dynvm.shape_funcs.update import SCATTER_REDUCTIONS
from dynvm.vm.errors import KernelError

INDEX_DTYPES = ("int32", "int64")


def check_set_row(spec, inputs, outputs):
    if len(inputs) != 3 or len(outputs) != 1:
        raise KernelError(f"set_row: expected 3 inputs and 1 output, got {len(inputs)} and {len(outputs)}")
    (dt, rank), (it, irank), (rt, rrank) = inputs
    if rank < 1 or irank != 0 or rrank != rank - 1 or it not in INDEX_DTYPES or rt != dt \
            or list(outputs[0]) != [dt, rank]:
        raise KernelError(f"set_row: needs data (T, r >= 1), an int32/int64 0-d index, a row "
                          f"(T, r - 1) and an output like data, got {inputs} -> {outputs}")


class _Arrays:
    """The validated arguments: data pointers, extents, element strides."""

    def __init__(self, b, raw, sig):
        (self.data, self.ext, strides), (self.index, _, _), (self.row, self.row_ext, row_strides), \
            (self.out, self.out_ext, out_strides) = raw
        self.ty = MEM_TYPE[sig[0][0]]
        self.index_ty = MEM_TYPE[sig[1][0]]
        self.strides = load_strides(b, self.ext, strides)
        self.row_strides = load_strides(b, self.row_ext, row_strides)
        self.out_strides = load_strides(b, self.out_ext, out_strides)

    def compact(self, b):
        return all_of(b, [is_compact(b, self.ext, self.strides),
                          is_compact(b, self.row_ext, self.row_strides),
                          is_compact(b, self.out_ext, self.out_strides)])


def _memmove(b, dst, src, count, ty):
    fn = b.module.globals.get("llvm.memmove.p0.p0.i64") or ir.Function(
        b.module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I1]), name="llvm.memmove.p0.p0.i64")
    b.call(fn, [dst, src, b.mul(count, const(I64, elem_bytes(ty))), const(I1, 0)])


def emit_set_row(module, symbol, spec, inputs, outputs):
    check_set_row(spec, inputs, outputs)
    sig = [tuple(x) for x in inputs + outputs]

    def analyse(b, a):
        """Every extent relation, the non-NULL data pointers; returns the clamped row index."""
        for d, e in enumerate(a.ext):
            check_equal(b, a.out_ext[d], e, 3, d)
        for d, e in enumerate(a.row_ext):
            check_equal(b, e, a.ext[d + 1], 2, d)
        n = a.ext[0]
        check(b, icmp(b, ">", n, 0), ERR_SHAPE)
        for k, ptr in enumerate((a.data, a.index, a.row, a.out)):
            check(b, b.icmp_unsigned("!=", ptr, ir.Constant(PTR, None)), ERR_NULL | k << 8)
        k = b.load(a.index, typ=a.index_ty)
        if a.index_ty != I64:
            k = b.sext(k, I64)
        return smax(b, smin(b, k, b.sub(n, const(I64, 1))), const(I64, 0))

    def compact(b, a, k):
        inner = product(b, a.row_ext)
        if_then(b, b.icmp_unsigned("!=", a.out, a.data),
                lambda: _memmove(b, a.out, a.data, b.mul(a.ext[0], inner), a.ty))
        _memmove(b, elem_ptr(b, a.out, b.mul(k, inner), a.ty), a.row, inner, a.ty)

    def strided(b, a, k):
        def copy_data():
            dims = [(e, [so, sd]) for e, so, sd in zip(a.ext, a.out_strides, a.strides)]
            for_nest(b, dims, [const(I64, 0), const(I64, 0)],
                     lambda o: store(b, load(b, a.data, o[1], a.ty), a.out, o[0]))
        if_then(b, b.icmp_unsigned("!=", a.out, a.data), copy_data)
        dims = [(e, [so, sr]) for e, so, sr in zip(a.row_ext, a.out_strides[1:], a.row_strides)]
        for_nest(b, dims, [b.mul(k, a.out_strides[0]), const(I64, 0)],
                 lambda o: store(b, load(b, a.row, o[1], a.ty), a.out, o[0]))

    for name, body, layout in (("compact", compact, True), ("strided", strided, False)):
        fn, b = new_function(module, variant_symbol(symbol, name))
        a = _Arrays(b, prologue(b, *fn.args, sig), sig)
        k = analyse(b, a)
        if layout:
            check(b, a.compact(b), ERR_LAYOUT)
        body(b, a, k)
        b.ret(const(I32, 0))
    return emit_dispatcher(module, symbol, sig, [("compact", lambda b, raw: _Arrays(b, raw, sig).compact(b)),
                                                 ("strided", None)])


register(Family("set_row", check_set_row, emit_set_row))



def check_scatter_rows(spec, inputs, outputs):
    reduction = spec.get("reduction") if isinstance(spec, dict) else None
    if len(inputs) != 3 or len(outputs) != 1:
        raise KernelError(f"scatter_rows: expected 3 inputs and 1 output, got {len(inputs)} and {len(outputs)}")
    (dt, rank), (pt, prank), (ut, urank) = inputs
    if rank != 2 or urank != 2 or (pt, prank) != ("int64", 1) or ut != dt or list(outputs[0]) != [dt, 2] \
            or reduction not in SCATTER_REDUCTIONS or (reduction != "none" and dt == "bool"):
        raise KernelError(f"scatter_rows: needs data (T, 2), int64 positions (1), updates (T, 2), an "
                          f"output like data and a reduction of {SCATTER_REDUCTIONS} (bool: none), "
                          f"got {inputs} -> {outputs}, {spec}")


def _combine(b, reduction, dtype, old, new):
    """The reduction of the row's current element `old` with the update's `new`."""
    if reduction == "none":
        return new
    if is_float(dtype):
        if reduction in ("add", "mul"):
            return (b.fadd if reduction == "add" else b.fmul)(old, new)
        keep_old = b.or_(b.fcmp_unordered("uno", old, old),
                         b.fcmp_ordered(">" if reduction == "max" else "<", old, new))
        return b.select(keep_old, old, new)
    if reduction in ("add", "mul"):
        return (b.add if reduction == "add" else b.mul)(old, new)
    return (smax if reduction == "max" else smin)(b, old, new)


def emit_scatter_rows(module, symbol, spec, inputs, outputs):
    check_scatter_rows(spec, inputs, outputs)
    sig = [tuple(x) for x in inputs + outputs]
    dtype, reduction = sig[0][0], spec["reduction"]
    ty = MEM_TYPE[dtype]
    fn, b = new_function(module, variant_symbol(symbol, "rows"))
    raw = prologue(b, *fn.args, sig)
    (data, ext, d_str), (pos, pos_ext, p_str), (upd, upd_ext, u_str), (out, out_ext, o_str) = raw
    d_str, p_str, u_str, o_str = (load_strides(b, e, s) for e, s in
                                  ((ext, d_str), (pos_ext, p_str), (upd_ext, u_str), (out_ext, o_str)))
    rows, width = ext
    for d in range(2):
        check_equal(b, out_ext[d], ext[d], 3, d)
    check_equal(b, upd_ext[0], pos_ext[0], 2, 0)
    check_equal(b, upd_ext[1], width, 2, 1)

    def copy_data():
        for_nest(b, [(e, [so, sd]) for e, so, sd in zip(ext, o_str, d_str)],
                 [const(I64, 0), const(I64, 0)],
                 lambda o: store(b, load(b, data, o[1], ty), out, o[0]))
    if_then(b, b.icmp_unsigned("!=", out, data), copy_data)

    def update(k):
        p = load(b, pos, b.mul(k, p_str[0]), I64)
        p = b.select(icmp(b, "<", p, 0), b.add(p, rows), p)
        check(b, b.and_(icmp(b, ">=", p, 0), icmp(b, "<", p, rows)), ERR_VALUE | 1 << 8)
        row = b.mul(p, o_str[0])

        def element(offsets):
            at = offsets[0]
            new = load(b, upd, offsets[1], ty)
            store(b, _combine(b, reduction, dtype, load(b, out, at, ty), new), out, at)
        for_nest(b, [(width, [o_str[1], u_str[1]])], [row, b.mul(k, u_str[0])], element)
    for_range(b, 0, pos_ext[0], update, vectorize=False)
    b.ret(const(I32, 0))
    return emit_dispatcher(module, symbol, sig, [("rows", None)])


register(Family("scatter_rows", check_scatter_rows, emit_scatter_rows))
