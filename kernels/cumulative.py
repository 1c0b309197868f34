"""Kernel family "cumulative": running sums or products along one axis (ONNX's CumSum and
CumProd).

Signature: input x (T numeric, rank r >= 1), output out (T, r) with x's extents (else
ERR_SHAPE); attrs axis, mode ("sum" or "prod"), exclusive, reverse. Element u of a line along
the axis combines the line's elements up to u (before u when exclusive; from the line's end when
reverse) one after another, so an element's rounding does not depend on the line's length or on
any thread count. One variant, `generic`, over any strides: a loop nest over the other axes and
one sequential pass per line. out may be x itself (each element is read before it is written).
"""
from __future__ import annotations

from dynvm.kernels.family import Family, register
from dynvm.kernels.llvm_util import (I32, I64, MEM_TYPE, check_equal, const, for_nest, for_range,
                                     is_float, load, load_strides, new_function, prologue, store)
from dynvm.kernels.sort import single_variant
from dynvm.shape_funcs.reduce import CUMULATIVE_MODES
from dynvm.vm.errors import KernelError

DTYPES = ("float32", "float64", "int32", "int64")


def check_cumulative(spec, inputs, outputs):
    if len(inputs) != 1 or len(outputs) != 1:
        raise KernelError(f"cumulative: expected 1 input and 1 output, got {len(inputs)} and "
                          f"{len(outputs)}")
    (dtype, rank), = inputs
    axis = spec.get("axis") if isinstance(spec, dict) else None
    if dtype not in DTYPES or rank < 1 or list(outputs[0]) != [dtype, rank] \
            or spec.get("mode") not in CUMULATIVE_MODES or not isinstance(axis, int) \
            or not -rank <= axis < rank:
        raise KernelError(f"cumulative: needs a numeric input of rank >= 1, an output like it, a "
                          f"mode of {CUMULATIVE_MODES} and an axis in range, got {inputs} -> "
                          f"{outputs}, {spec}")


def emit_cumulative(module, symbol, spec, inputs, outputs):
    check_cumulative(spec, inputs, outputs)
    sig = [tuple(x) for x in inputs + outputs]
    dtype, rank = sig[0]
    ty, axis = MEM_TYPE[dtype], spec["axis"] % rank
    floats = is_float(dtype)

    def variant(module, name, sig):
        fn, b = new_function(module, name)
        (x, ext, x_str), (out, out_ext, out_str) = prologue(b, *fn.args, sig)
        x_str, out_str = load_strides(b, ext, x_str), load_strides(b, out_ext, out_str)
        for d in range(rank):
            check_equal(b, out_ext[d], ext[d], 1, d)
        n = ext[axis]
        combine = {("sum", True): b.fadd, ("sum", False): b.add, ("prod", True): b.fmul,
                   ("prod", False): b.mul}[spec["mode"], floats]
        identity = const(ty, (0.0 if floats else 0) if spec["mode"] == "sum" else (1.0 if floats else 1))

        def line(offsets):
            def step(k, carried):
                acc = carried[0]
                i = b.sub(b.sub(n, const(I64, 1)), k) if spec.get("reverse") else k
                value = load(b, x, b.add(offsets[0], b.mul(i, x_str[axis])), ty)
                total = combine(acc, value)
                store(b, acc if spec.get("exclusive") else total, out,
                      b.add(offsets[1], b.mul(i, out_str[axis])))
                return [total]
            for_range(b, 0, n, step, carried=[identity], vectorize=False)
        others = [(ext[d], [x_str[d], out_str[d]]) for d in range(rank) if d != axis]
        for_nest(b, others, [const(I64, 0), const(I64, 0)], line)
        b.ret(const(I32, 0))
    return single_variant(module, symbol, sig, variant)


register(Family("cumulative", check_cumulative, emit_cumulative))
