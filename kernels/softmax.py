"""The "softmax" and "layer_norm" kernel families (float32/float64, any axis).

softmax spec {"op": "softmax", "axis": int}: y = e / sum(e) with e = exp(x - max(x)) along the
axis (exp is kernels/llvm_math.exp_nonpositive, inline and vectorised: the max subtraction
keeps its argument <= 0; e below e**-87 in float32 is 0). NaN/inf behave as in numpy (the
tests' oracle): a row holding NaN or +inf, or only -inf, becomes NaN (the max ignores NaN, the
exp sum spreads it). The division is a multiplication by 1/sum (<= 1 ulp more).
layer_norm spec {"op": "layer_norm", "axis": int, "epsilon": float}, inputs x, gamma, beta
(1-D, length = x's axis extent, else ERR_SHAPE): y = (x - mean) / sqrt(var + eps) * gamma + beta
with the two-pass variance, accumulated in the input dtype with many partial sums (the
reference uses float64; float32 results agree to ~1e-6 relative to the row's scale).

The axis is normalised at build time; a run-time shape is seen as outer x n x inner (n the axis
extent). Variants (each validates its own arguments):
- "last": inner == 1 and compact arrays: every row is contiguous; each pass runs over the row
  in native vectors (4 accumulators for the reductions).
- "columns" (axis not last): compact arrays; vectors span `lanes` neighbouring lines of the inner
  extent, each pass walks the axis with stride `inner`.
- "generic": scalar lines over the real strides of every array (any layout).
The dispatcher picks "last" when inner == 1, "columns" when inner >= one vector, else generic.
"""
from llvmlite import ir

from dynvm.kernels import llvm_math as lm
from dynvm.kernels.abi import ERR_LAYOUT, ERR_NULL, ERR_SHAPE
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol
from dynvm.kernels.llvm_util import (I1, I32, I64, PTR, REG_TYPE, check, const, for_nest, for_range,
                                     intrinsic, is_compact, load, load_strides, new_function,
                                     parallel_work, product, prologue, return_zero_if, splat,
                                     split_for, store, vector_fold, vector_type)
from dynvm.shape_funcs.common import normalize_axis

TOP_TESTED = {"rotated": False}   # the loop shape these kernels are tuned with (for_range)
from dynvm.vm.errors import DynVMError, KernelError


def _axis(spec, rank):
    return normalize_axis(spec["op"], spec.get("axis", -1), rank)


def check_spec(spec, inputs, outputs):
    op = spec.get("op")
    if op not in ("softmax", "layer_norm"):
        raise KernelError(f"softmax family: unknown op {op!r}")
    n_in = 1 if op == "softmax" else 3
    if len(inputs) != n_in or len(outputs) != 1:
        raise KernelError(f"{op}: expected {n_in} input(s) and 1 output")
    dtype, rank = inputs[0]
    if dtype not in ("float32", "float64"):
        raise KernelError(f"{op}: needs float32 or float64, got {dtype}")
    if list(outputs[0]) != [dtype, rank]:
        raise KernelError(f"{op}: output must be {[dtype, rank]}, got {outputs[0]}")
    if op == "layer_norm" and any(list(t) != [dtype, 1] for t in inputs[1:]):
        raise KernelError(f"layer_norm: gamma and beta must be 1-D {dtype}")
    if rank == 0:
        raise KernelError(f"{op}: needs rank >= 1")
    try:
        _axis(spec, rank)
    except DynVMError as e:
        raise KernelError(f"{op}: {e}") from None
    if op == "layer_norm" and not isinstance(spec.get("epsilon", 1e-5), (int, float)):
        raise KernelError("layer_norm: epsilon must be a number")
    parallel_work(spec, op, op)


# ---------------------------------------------------------------------------------------------
# one pass structure, two vector shapes


class Line:
    """Loads/stores along the axis for a group of `lanes` lines (scalars when lanes == 1).

    at(k) is the element offset of position k of the first line (the other lanes are the
    following elements in memory when lanes > 1)."""

    def __init__(self, b, elem, lanes, x, y, x_at, y_at, params=None):
        self.b, self.elem, self.lanes = b, elem, lanes
        self.x, self.y, self.x_at, self.y_at = x, y, x_at, y_at
        self.params = params  # layer_norm: (gamma data, gamma stride, beta data, beta stride)

    def load(self, k):
        return load(self.b, self.x, self.x_at(k), vector_type(self.elem, self.lanes))

    def store(self, k, v):
        store(self.b, v, self.y, self.y_at(k))

    def param(self, which, k):
        data, stride = self.params[2 * which], self.params[2 * which + 1]
        return splat(self.b, load(self.b, data, self.b.mul(k, stride), self.elem), self.lanes)


def _max(b, a, c):
    """max(a, c) ignoring a NaN c (one maxps). softmax needs no NaN-propagating max: a NaN
    anywhere in a line makes its exp and so its sum NaN, which spreads to the whole line."""
    return b.select(b.fcmp_ordered(">", c, a), c, a)


def _across(b, op, line, n, eps):
    """softmax/layer_norm of `line.lanes` independent lines, walking the axis k = 0..n-1."""
    ty = vector_type(line.elem, line.lanes)
    one = const(ty, 1.0)
    if op == "softmax":
        _, (mx,) = for_range(b, 0, n, lambda k, a: [_max(b, a[0], line.load(k))],
                             carried=[const(ty, float("-inf"))], **TOP_TESTED)

        def exp_pass(k, a):
            e = lm.exp_nonpositive(b, b.fsub(line.load(k), mx))
            line.store(k, e)
            return [b.fadd(a[0], e)]

        _, (total,) = for_range(b, 0, n, exp_pass, carried=[const(ty, 0.0)], **TOP_TESTED)
        scale = b.fdiv(one, total)
        for_range(b, 0, n, lambda k: line.store(k, b.fmul(load_out(b, line, k), scale)),
                  **TOP_TESTED)
        return
    nf = splat(b, b.sitofp(n, line.elem), line.lanes)
    _, (total,) = for_range(b, 0, n, lambda k, a: [b.fadd(a[0], line.load(k))],
                            carried=[const(ty, 0.0)], **TOP_TESTED)
    mean = b.fdiv(total, nf)

    def var_pass(k, a):
        d = b.fsub(line.load(k), mean)
        return [lm.fma(b, d, d, a[0])]

    _, (sq,) = for_range(b, 0, n, var_pass, carried=[const(ty, 0.0)], **TOP_TESTED)
    rstd = _rstd(b, b.fdiv(sq, nf), eps, ty)

    def out_pass(k):
        xhat = b.fmul(b.fsub(line.load(k), mean), rstd)
        line.store(k, lm.fma(b, xhat, line.param(0, k), line.param(1, k)))

    for_range(b, 0, n, out_pass, **TOP_TESTED)


def load_out(b, line, k):
    return load(b, line.y, line.y_at(k), vector_type(line.elem, line.lanes))


def _rstd(b, var, eps, ty):
    sqrt = intrinsic(b.module, "llvm.sqrt", ty)
    return b.fdiv(const(ty, 1.0), b.call(sqrt, [b.fadd(var, const(ty, float(eps)))]))


def _along(b, op, elem, x, y, n, eps, params):
    """softmax/layer_norm of one contiguous row x[0:n] -> y[0:n] (pointers to the row)."""
    lanes = lm.vector_lanes(elem)

    def vec(v, l):
        return splat(b, v, l)

    def param(which, j, l):
        return load(b, params[which], j, vector_type(elem, l))

    def fold(init, body, merge):
        return vector_fold(b, n, lanes, init, body, merge)

    def add(a, c):
        return [b.fadd(a[0], c[0])]

    def zero(l):
        return [const(vector_type(elem, l), 0.0)]

    if op == "softmax":
        (mx,) = fold(lambda l: [const(vector_type(elem, l), float("-inf"))],
                     lambda j, l, a: [_max(b, a[0], load(b, x, j, vector_type(elem, l)))],
                     lambda a, c: [_max(b, a[0], c[0])])

        def exp_body(j, l, a):
            e = lm.exp_nonpositive(b, b.fsub(load(b, x, j, vector_type(elem, l)), vec(mx, l)))
            store(b, e, y, j)
            return [b.fadd(a[0], e)]

        (total,) = fold(zero, exp_body, add)
        scale = b.fdiv(const(elem, 1.0), total)
        fold(lambda l: [], lambda j, l, a: (store(
            b, b.fmul(load(b, y, j, vector_type(elem, l)), vec(scale, l)), y, j), [])[1],
            lambda a, c: [])
        return
    nf = b.sitofp(n, elem)
    (total,) = fold(zero, lambda j, l, a: [b.fadd(a[0], load(b, x, j, vector_type(elem, l)))], add)
    mean = b.fdiv(total, nf)

    def var_body(j, l, a):
        d = b.fsub(load(b, x, j, vector_type(elem, l)), vec(mean, l))
        return [lm.fma(b, d, d, a[0])]

    (sq,) = fold(zero, var_body, add)
    rstd = _rstd(b, b.fdiv(sq, nf), eps, elem)

    def out_body(j, l, a):
        xhat = b.fmul(b.fsub(load(b, x, j, vector_type(elem, l)), vec(mean, l)), vec(rstd, l))
        store(b, lm.fma(b, xhat, param(0, j, l), param(1, j, l)), y, j)
        return []

    fold(lambda l: [], out_body, lambda a, c: [])


# ---------------------------------------------------------------------------------------------
# variants


def _start(module, symbol, spec, sig):
    """Prologue + shape checks; returns (b, arrays, axis, (outer, n, inner)) or returns 0 early
    for empty tensors."""
    fn, b = new_function(module, symbol)
    arrays = prologue(b, *fn.args, sig)
    x_ext, y_ext = arrays[0][1], arrays[-1][1]
    axis = _axis(spec, len(x_ext))
    for j, (e, o) in enumerate(zip(x_ext, y_ext)):
        check(b, b.icmp_signed("==", e, o), ERR_SHAPE | (len(sig) - 1) << 8 | j << 16)
    n = x_ext[axis]
    for k in (1, 2) if spec["op"] == "layer_norm" else ():
        check(b, b.icmp_signed("==", arrays[k][1][0], n), ERR_SHAPE | k << 8)
    return_zero_if(b, b.icmp_signed("==", product(b, x_ext), const(I64, 0)))
    for k, (data, _, _) in enumerate(arrays):
        check(b, b.icmp_unsigned("!=", data, ir.Constant(PTR, None)), ERR_NULL | k << 8)
    outer = product(b, x_ext[:axis])
    inner = product(b, x_ext[axis + 1:])
    return b, arrays, axis, (outer, n, inner)


def _all_compact(b, arrays):
    ok = const(I1, 1)
    for _, ext, strides in arrays:
        ok = b.and_(ok, is_compact(b, ext, load_strides(b, ext, strides)))
    return ok


def _worth(b, spec, outer, n, inner):
    """i1: the tensor is large enough for the kernel threads (its family's PARALLEL_WORK,
    in elements)."""
    size = b.mul(b.mul(outer, n), inner)
    return b.icmp_unsigned(">=", size, const(I64, parallel_work(spec, spec["op"], spec["op"])))


def _eps(spec):
    return float(spec.get("epsilon", 1e-5))


def _emit_last(module, symbol, spec, sig):
    b, arrays, axis, (outer, n, inner) = _start(module, symbol, spec, sig)
    check(b, b.and_(_all_compact(b, arrays), b.icmp_signed("==", inner, const(I64, 1))), ERR_LAYOUT)
    elem = REG_TYPE[sig[0][0]]
    x, y = arrays[0][0], arrays[-1][0]
    params = [arrays[1][0], arrays[2][0]] if spec["op"] == "layer_norm" else None

    def rows(b, values, lo, hi):
        x, y, n, params = values

        def row(o):
            off = b.mul(o, n)
            xr = b.gep(x, [off], inbounds=True, source_etype=elem)
            yr = b.gep(y, [off], inbounds=True, source_etype=elem)
            _along(b, spec["op"], elem, xr, yr, n, _eps(spec), params)

        for_range(b, lo, hi, row, **TOP_TESTED)

    split_for(b, [x, y, n, params], outer, rows, _worth(b, spec, outer, n, inner))
    b.ret(const(I32, 0))


def _emit_columns(module, symbol, spec, sig):
    b, arrays, axis, (outer, n, inner) = _start(module, symbol, spec, sig)
    check(b, _all_compact(b, arrays), ERR_LAYOUT)
    elem = REG_TYPE[sig[0][0]]
    x, y = arrays[0][0], arrays[-1][0]
    params = None
    if spec["op"] == "layer_norm":
        params = (arrays[1][0], const(I64, 1), arrays[2][0], const(I64, 1))
    lanes = lm.vector_lanes(elem)

    def outers(b, values, lo, hi):
        x, y, n, inner, params = values

        def per_outer(o):
            base = b.mul(o, b.mul(n, inner))
            c = const(I64, 0)
            for width in (lanes, 1):
                def chunk(c, width=width):
                    def at(k):
                        return b.add(b.add(base, c), b.mul(k, inner))
                    _across(b, spec["op"], Line(b, elem, width, x, y, at, at, params), n,
                            _eps(spec))
                c, _ = for_range(b, c, b.sub(inner, const(I64, width - 1)), chunk, step=width,
                                 **TOP_TESTED)

        for_range(b, lo, hi, per_outer, **TOP_TESTED)

    split_for(b, [x, y, n, inner, params], outer, outers, _worth(b, spec, outer, n, inner))
    b.ret(const(I32, 0))


def _emit_generic(module, symbol, spec, sig):
    b, arrays, axis, (outer, n, inner) = _start(module, symbol, spec, sig)
    elem = REG_TYPE[sig[0][0]]
    strides = [load_strides(b, ext, st) for _, ext, st in arrays]
    x, y = arrays[0], arrays[-1]
    xs, ys = strides[0], strides[-1]
    params = None
    if spec["op"] == "layer_norm":
        params = (arrays[1][0], strides[1][0], arrays[2][0], strides[2][0])
    dims = [(x[1][a], [xs[a], ys[a]]) for a in range(len(x[1])) if a != axis]

    def line(offs):
        x_off, y_off = offs
        ln = Line(b, elem, 1, x[0], y[0], lambda k: b.add(x_off, b.mul(k, xs[axis])),
                  lambda k: b.add(y_off, b.mul(k, ys[axis])), params)
        _across(b, spec["op"], ln, n, _eps(spec))

    for_nest(b, dims, [const(I64, 0), const(I64, 0)], line, **TOP_TESTED)
    b.ret(const(I32, 0))


def emit(module, symbol, spec, inputs, outputs):
    sig = [tuple(t) for t in inputs] + [tuple(outputs[0])]
    rank = sig[0][1]
    axis = _axis(spec, rank)
    names = ["last"] + (["columns"] if axis < rank - 1 else []) + ["generic"]
    emitters = {"last": _emit_last, "columns": _emit_columns, "generic": _emit_generic}
    for name in names:
        emitters[name](module, variant_symbol(symbol, name), spec, sig)
    lanes = lm.vector_lanes(REG_TYPE[sig[0][0]])

    def prepare(b, arrays):
        return _all_compact(b, arrays), product(b, arrays[0][1][axis + 1:])

    choices = [("last", lambda b, ctx: b.and_(ctx[0], b.icmp_signed("==", ctx[1], const(I64, 1))))]
    if "columns" in names:
        choices.append(("columns", lambda b, ctx: b.and_(
            ctx[0], b.icmp_signed(">=", ctx[1], const(I64, lanes)))))
    choices.append(("generic", None))
    return emit_dispatcher(module, symbol, sig, choices, prepare)


SOFTMAX = register(Family("softmax", check_spec, emit))
LAYER_NORM = register(Family("layer_norm", check_spec, emit))
