"""Kernel families of the creation and data-dependent ops: fill (zeros, ones, full and their
dyn. forms), arange and argwhere.

Their output extents come from the op's type or its shape function; the kernels re-check them:
a static `shape` attr or a run-time shape tensor must equal the output's extents, argwhere counts
the non-zero elements while writing and never writes a row past the output's first extent (a
condition that changed after the shape function ran gives ERR_SHAPE, not a buffer overrun).
Scalar inputs convert to the output dtype exactly like numpy's `astype` (the elementwise cast).
"""
from __future__ import annotations

from dynvm.kernels.abi import ERR_SHAPE, ERR_VALUE
from dynvm.kernels.llvm_util import (F64, I64, REG_TYPE, add_mul, cast, check, check_equal, const,
                                     for_nest, for_range, icmp, if_then, is_float, to_mem, to_reg,
                                     truth)
from dynvm.kernels.transform import (Info, Variant, check_sig, compact, element_ptr, emit_kernel,
                                     family)
from dynvm.vm.errors import KernelError

FILL_OPS = ("zeros", "ones", "full", "dyn.zeros", "dyn.ones", "dyn.full")


def load_value(b, a, offset=None):
    """Element `offset` (default 0) of `a` as a register value (bool -> i1)."""
    return to_reg(b, b.load(element_ptr(b, a, offset or const(I64, 0)), typ=a.ty), a.dtype)


def store_value(b, a, offset, value):
    b.store(to_mem(b, value, a.dtype), element_ptr(b, a, offset))


# ---------------------------------------------------------------------------------------------
# fill: zeros / ones / full, static or run-time shape


def _fill_inputs(op):
    """Which inputs an op has: (has fill_value, has shape tensor)."""
    return op.endswith("full"), op.startswith("dyn.")


def check_fill(spec, inputs, outputs):
    op = spec.get("op")
    if op not in FILL_OPS:
        raise KernelError(f"fill: unknown op {op!r}; expected one of {FILL_OPS}")
    has_fill, has_shape = _fill_inputs(op)
    check_sig(op, inputs, outputs, int(has_fill) + int(has_shape), 1)
    rank = outputs[0][1]
    if has_fill and inputs[0][1] != 0:
        raise KernelError(f"{op}: fill_value must be a scalar")
    if has_shape:
        dtype, srank = inputs[-1]
        if srank != 1 or dtype not in ("int32", "int64"):
            raise KernelError(f"{op}: the shape must be a 1-D int tensor")
    else:
        shape = spec.get("shape")
        if not isinstance(shape, (list, tuple)) or len(shape) != rank:
            raise KernelError(f"{op}: shape {shape!r} does not fit output rank {rank}")


def emit_fill(module, symbol, spec, sig):
    op = spec["op"]
    has_fill, has_shape = _fill_inputs(op)
    out_dtype, rank = sig[-1]

    def analyse(b, arrays):
        out = arrays[-1]
        if has_shape:
            shape = arrays[-2]
            check_equal(b, shape.ext[0], rank, len(arrays) - 2, 0)
            for d in range(rank):
                v = load_value(b, shape, const(I64, d))
                v = b.sext(v, I64) if v.type != I64 else v
                check_equal(b, out.ext[d], v, len(arrays) - 1, d)
        else:
            for d, e in enumerate(spec["shape"]):
                check_equal(b, out.ext[d], int(e), len(arrays) - 1, d)
        if has_fill:
            value = cast(b, load_value(b, arrays[0]), arrays[0].dtype, out_dtype)
        else:
            value = _constant(out_dtype, 0 if op.endswith("zeros") else 1)
        return Info(out=out, value=value, arrays=[out])

    def contiguous(b, info):
        for_range(b, 0, info.out.count, lambda i: store_value(b, info.out, i, info.value))

    def strided(b, info):
        out = info.out
        for_nest(b, [(e, [s]) for e, s in zip(out.ext, out.strides)], [const(I64, 0)],
                 lambda offsets: store_value(b, out, offsets[0], info.value))

    return emit_kernel(module, symbol, sig, analyse, [
        Variant("contiguous", contiguous, lambda b, info: compact(b, info.out)),
        Variant("strided", strided)])


def _constant(dtype, value):
    ty = REG_TYPE[dtype]
    return const(ty, float(value) if is_float(dtype) else int(value))


family("fill", check_fill, emit_fill)


# ---------------------------------------------------------------------------------------------
# arange


def check_arange(spec, inputs, outputs):
    check_sig("arange", inputs, outputs, 3, 1)
    dtype, rank = outputs[0]
    if rank != 1 or dtype == "bool":
        raise KernelError(f"arange: output must be a 1-D numeric tensor, got {dtype} rank {rank}")
    if any(r != 0 or dt == "bool" for dt, r in inputs):
        raise KernelError("arange: start, stop and step must be numeric scalars")


def emit_arange(module, symbol, spec, sig):
    out_dtype = sig[-1][0]

    def analyse(b, arrays):
        *scalars, out = arrays
        values = []
        for k, a in enumerate(scalars):
            v = load_value(b, a)
            if is_float(a.dtype):   # numpy's reference rejects inf/nan before casting
                finite = b.fcmp_ordered("<", b.call(_fabs(b, v.type), [v]),
                                        const(v.type, float("inf")))
                check(b, finite, ERR_VALUE | k << 8)
            values.append(cast(b, v, a.dtype, out_dtype))
        start, _, step = values
        zero = const(step.type, 0.0 if is_float(out_dtype) else 0)
        nonzero = (b.fcmp_unordered("!=", step, zero) if is_float(out_dtype)
                   else b.icmp_signed("!=", step, zero))
        check(b, nonzero, ERR_VALUE | 2 << 8)
        return Info(out=out, start=start, step=step, arrays=[out])

    def body(b, info):
        """int: start + step * i wrapping in the dtype; float: computed in float64 (numpy's
        reference does start + step * arange(n, float64)), then rounded once to the dtype."""
        out, ty = info.out, REG_TYPE[out_dtype]

        def element(i):
            if is_float(out_dtype):
                start, step = (v if v.type == F64 else b.fpext(v, F64)
                               for v in (info.start, info.step))
                v = b.fadd(start, b.fmul(step, b.sitofp(i, F64)))
                v = v if ty == F64 else b.fptrunc(v, ty)
            else:
                k = i if ty == I64 else b.trunc(i, ty)
                v = b.add(info.start, b.mul(info.step, k))
            store_value(b, out, b.mul(i, out.strides[0]), v)
        for_range(b, 0, out.ext[0], element)

    return emit_kernel(module, symbol, sig, analyse, [Variant("loop", body)])


def _fabs(b, ty):
    return b.module.declare_intrinsic("llvm.fabs", [ty])


family("arange", check_arange, emit_arange)


# ---------------------------------------------------------------------------------------------
# argwhere


def check_argwhere(spec, inputs, outputs):
    check_sig("argwhere", inputs, outputs, 1, 1)
    if tuple(outputs[0]) != ("int64", 2):
        raise KernelError(f"argwhere: output must be int64 rank 2, got {outputs[0]}")


def emit_argwhere(module, symbol, spec, sig):
    dtype, rank = sig[0]

    def analyse(b, arrays):
        cond, out = arrays
        check_equal(b, out.ext[1], rank, 1, 1)
        return Info(cond=cond, out=out, arrays=arrays)

    def body(b, info):
        """One pass in row-major order; a row is written only below out.ext[0]."""
        cond, out = info.cond, info.out
        fn = b.function
        saved = b.block
        b.position_at_start(fn.entry_basic_block)
        counter = b.alloca(I64, name="count")
        b.position_at_end(saved)
        b.store(const(I64, 0), counter)
        rows = out.ext[0]

        def hit(index):
            n = b.load(counter, typ=I64)
            check(b, icmp(b, "<", n, rows), ERR_SHAPE | 1 << 8)
            row = b.mul(n, out.strides[0])
            for d, i in enumerate(index):
                b.store(i, element_ptr(b, out, add_mul(b, row, const(I64, d), out.strides[1])))
            b.store(b.add(n, const(I64, 1)), counter)

        def nest(d, off, index):
            if d == rank:
                if_then(b, truth(b, load_value(b, cond, off), dtype), lambda: hit(index))
            else:
                for_range(b, 0, cond.ext[d], lambda i: nest(d + 1, add_mul(b, off, i, cond.strides[d]),
                                                         index + [i]))
        nest(0, const(I64, 0), [])
        check(b, icmp(b, "==", b.load(counter, typ=I64), rows), ERR_SHAPE | 1 << 8)

    return emit_kernel(module, symbol, sig, analyse, [Variant("strided", body)])


family("argwhere", check_argwhere, emit_argwhere)
