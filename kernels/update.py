"""The "set_row" kernel family: out = data with row `index` (axis 0) replaced by `row`.

Signature: inputs data (T, r >= 1), index (int32 or int64, 0-d), row (T, r - 1); output
out (T, r) with data's extents. The index is clamped into [0, n - 1]; n == 0 is ERR_SHAPE (no
row to replace), as are mismatched extents. The output either is `data` itself (the same data
pointer: the in-place update a native loop makes, compiler/codegen/native_loop.py; the copy is
skipped) or does not overlap it; `row` may overlap neither.

Variants (dispatcher order; the last one always fits):
  compact   every array compact: one memmove of data, one of the row
  strided   element by element over any strides
"""
from __future__ import annotations

from llvmlite import ir

from dynvm.kernels.abi import ERR_LAYOUT, ERR_NULL, ERR_SHAPE
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol
from dynvm.kernels.llvm_util import (I1, I32, I64, MEM_TYPE, PTR, all_of, check,
                                     check_equal, const, elem_bytes, elem_ptr, for_nest, icmp,
                                     if_then, is_compact, load, load_strides, new_function,
                                     product, prologue, smax, smin, store)
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
