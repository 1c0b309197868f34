"""LLVM IR for fused elementwise expressions over run-time shapes with numpy broadcasting.

A kernel is built for fixed ranks and dtypes; extents are read from the DLTensors at run time.
This module registers the "elementwise" kernel family (spec {"expr": expr}). Each kernel S has
four variants (native symbols `S__<variant>`) and a dispatcher `S` (see kernels/family.py):

- "scalar": one flat element loop; for fewer elements than one vector (no vector setup).
- "vector": explicit `<W x T>` loads/ops/stores (W = a SIMD register of the widest element,
  e.g. 16 x float32 with AVX-512) plus a scalar tail.
- "vector_exact": the same without the tail, when the element count is a multiple of W.
- "strided": a loop nest with numpy broadcasting and any strides; its innermost loop is
  vectorised when every innermost stride is 0 (broadcast) or 1.
The flat variants need every array compact row-major (extent-1 dims ignored) with the output's
element count. The dispatcher picks, in order: scalar (flat, n < W), vector_exact (flat,
n % W == 0), vector (flat), strided (anything else).

Every function first checks every argument (count, ndim, dtype code/bits/lanes, NULL pointers,
broadcast compatibility, and for the flat variants the layout) and returns an error code instead
of touching memory it was not promised. Error codes: `kind | arg << 8 | dim << 16`.

Semantics worth knowing:
- maximum/minimum on floats propagate NaN from either operand, like numpy.
- the tanh-GELU 0.5 * x * (1 + tanh(u)) (`_tanh_gate`: factors and terms in any order) is
  computed as x / (1 + e**(-2u)) (llvm_math.tanh_gate): the same function, within 3 ulp of its
  exact value, more accurate than the literal form where tanh(u) is near -1.
- integer divide truncates toward zero; x / 0 == 0 and INT_MIN / -1 == INT_MIN (no trap).
- fmod is C's fmod (LLVM's frem on floats: exact); on integers x fmod 0 == 0 and
  INT_MIN fmod -1 == 0 (no trap).
- integer power uses exponentiation by squaring (wrapping); a negative exponent gives the
  truncated real result: 1 for base 1, +-1 for base -1, 0 otherwise (numpy raises instead).
- float -> int cast saturates (NaN -> 0) via llvm.fptosi.sat; numpy's result for out-of-range
  values is undefined, so only in-range values are comparable.
- bool is i8 (0/1) in memory; any non-zero byte reads as True. add/maximum on bool is `or`,
  multiply/minimum is `and`, as in numpy.
"""
from llvmlite import ir

from dynvm.kernels.abi import ERR_BROADCAST, ERR_LAYOUT
from dynvm.kernels.llvm_util import (I1, I32, I64, MEM_TYPE, REG_TYPE, cast, check, check_data,
                                     const, elem_ptr, for_nest, for_range, intrinsic, is_compact,
                                     is_float, load, load_strides, masked_load, new_function,
                                     parallel_work, product, prologue, return_zero_if, splat,
                                     split_for, store, to_mem, to_reg, truth, vector_type)
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol, vector_lanes
from dynvm.vm.dtypes import DTYPES
from dynvm.vm.errors import KernelError

UNARY = ("negative", "exp", "log", "sqrt", "tanh", "sigmoid", "relu")
ARITH = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "fmod")
COMPARE = ("less", "greater", "less_equal", "greater_equal", "equal", "logical_and")
FLOAT_ONLY = ("exp", "log", "sqrt", "tanh", "sigmoid")
NOT_BOOL = ("negative", "subtract", "divide", "power", "fmod")


# ---------------------------------------------------------------------------------------------
# expression checking (pure Python, used by the builder before any IR exists)


def expr_dtype(expr, in_dtypes):
    """Check `expr` against the input dtypes and return its result dtype (KernelError if bad)."""
    if not isinstance(expr, (list, tuple)) or not expr or not isinstance(expr[0], str):
        raise KernelError(f"malformed elementwise expression {expr!r}")
    head, args = expr[0], list(expr[1:])
    if head == "in":
        if len(args) != 1 or type(args[0]) is not int or not 0 <= args[0] < len(in_dtypes):
            raise KernelError(f"expression {expr!r} names a missing input")
        return in_dtypes[args[0]]
    if head == "const":
        if len(args) != 2 or args[1] not in DTYPES or not isinstance(args[0], (int, float, bool)):
            raise KernelError(f"malformed constant {expr!r}")
        return args[1]
    if head == "cast":
        if len(args) != 2 or args[1] not in DTYPES:
            raise KernelError(f"malformed cast {expr!r}")
        expr_dtype(args[0], in_dtypes)
        return args[1]
    operand_count = 1 if head in UNARY else 2 if head in ARITH + COMPARE else 3 if head == "where" else None
    if operand_count is None:
        raise KernelError(f"unknown elementwise op {head!r}")
    if len(args) != operand_count:
        raise KernelError(f"{head} takes {operand_count} operand(s), got {len(args)}")
    dts = [expr_dtype(a, in_dtypes) for a in args]
    return _result_dtype(head, dts)


def _result_dtype(head, dts):
    if head == "where":
        if dts[1] != dts[2]:
            raise KernelError(f"where branches have different dtypes {dts[1]} and {dts[2]}")
        return dts[1]
    if len(dts) == 2 and dts[0] != dts[1]:
        raise KernelError(f"{head} operands have different dtypes {dts[0]} and {dts[1]}")
    if head in COMPARE:
        return "bool"
    if head in FLOAT_ONLY and not is_float(dts[0]):
        raise KernelError(f"{head} needs a float operand, got {dts[0]}")
    if head in NOT_BOOL and dts[0] == "bool":
        raise KernelError(f"{head} is not defined for bool")
    return dts[0]


# ---------------------------------------------------------------------------------------------
# IR helpers


def _ipow_function(module, ty):
    """Internal `ty pow(ty a, ty e)` by squaring; negative e gives the truncated real result."""
    name = f"dynvm.ipow.i{ty.width}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(ty, [ty, ty]), name=name)
    fn.linkage = "internal"
    a, e = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    one, zero, minus1 = const(ty, 1), const(ty, 0), const(ty, -1)
    neg, pos = fn.append_basic_block("neg"), fn.append_basic_block("pos")
    b.cbranch(b.icmp_signed("<", e, zero), neg, pos)
    b.position_at_end(neg)
    odd = b.icmp_signed("!=", b.and_(e, one), zero)
    minus_one_pow = b.select(odd, minus1, one)
    b.ret(b.select(b.icmp_signed("==", a, one), one,
                   b.select(b.icmp_signed("==", a, minus1), minus_one_pow, zero)))
    b.position_at_end(pos)
    loop, done = fn.append_basic_block("loop"), fn.append_basic_block("done")
    b.cbranch(b.icmp_signed("==", e, zero), done, loop)
    b.position_at_end(loop)
    r = b.phi(ty)
    base = b.phi(ty)
    ex = b.phi(ty)
    r.add_incoming(one, pos)
    base.add_incoming(a, pos)
    ex.add_incoming(e, pos)
    r2 = b.select(b.icmp_signed("!=", b.and_(ex, one), zero), b.mul(r, base), r)
    base2 = b.mul(base, base)
    ex2 = b.lshr(ex, one)
    r.add_incoming(r2, loop)
    base.add_incoming(base2, loop)
    ex.add_incoming(ex2, loop)
    b.cbranch(b.icmp_signed("==", ex2, zero), done, loop)
    b.position_at_end(done)
    result = b.phi(ty)
    result.add_incoming(one, pos)
    result.add_incoming(r2, loop)
    b.ret(result)
    return fn


# ---------------------------------------------------------------------------------------------
# expression emission (scalars, or vectors of `lanes` elements: the same code serves both)


def reg_type(dtype, lanes=1):
    """Register type of `dtype`: a scalar, or an LLVM vector `<lanes x T>`."""
    return vector_type(REG_TYPE[dtype], lanes)


def mem_type(dtype, lanes=1):
    return vector_type(MEM_TYPE[dtype], lanes)


def _math_module():
    """kernels/llvm_math.py (vectorisable exp/log/tanh/sigmoid) when available, else None:
    then the libm intrinsics are used, which LLVM scalarises inside vector code."""
    try:
        from dynvm.kernels import llvm_math
    except ImportError:
        return None
    return llvm_math if all(hasattr(llvm_math, f) for f in ("exp", "log", "tanh", "sigmoid")) else None


class _ExprEmitter:
    """Emits one element's (or one vector's) computation; identical subexpressions are emitted once."""

    def __init__(self, b, in_dtypes, load_input, lanes=1):
        self.b = b
        self.module = b.module
        self.in_dtypes = in_dtypes
        self.load_input = load_input
        self.lanes = lanes
        self.memo = {}
        self.math = _math_module()

    def ty(self, dtype):
        return reg_type(dtype, self.lanes)

    def emit(self, expr):
        key = _freeze(expr)
        if key not in self.memo:
            self.memo[key] = self._emit(expr)
        return self.memo[key]

    def _emit(self, expr):
        head, args = expr[0], expr[1:]
        if head == "in":
            return self.load_input(args[0]), self.in_dtypes[args[0]]
        if head == "const":
            return self._constant(args[0], args[1]), args[1]
        if head == "cast":
            value, dtype = self.emit(args[0])
            return cast(self.b, value, dtype, args[1]), args[1]
        if head == "where":
            cond = truth(self.b, *self.emit(args[0]))
            (a, dt), (c, _) = self.emit(args[1]), self.emit(args[2])
            return self.b.select(cond, a, c), dt
        gate = _tanh_gate(expr) if self.math is not None else None
        if gate is not None:
            (x, dtype), (u, _) = self.emit(gate[0]), self.emit(gate[1])
            if is_float(dtype):
                return self.math.tanh_gate(self.b, x, u), dtype
        operands = [self.emit(a) for a in args]
        dtype = operands[0][1]
        values = [v for v, _ in operands]
        if head in UNARY:
            return self._unary(head, values[0], dtype), dtype
        if head in COMPARE:
            return self._compare(head, values[0], values[1], dtype), "bool"
        return self._arith(head, values[0], values[1], dtype), dtype

    def _constant(self, value, dtype):
        ty = self.ty(dtype)
        if is_float(dtype):
            return const(ty, float(value))
        if dtype == "bool":
            return const(ty, int(bool(value)))
        return const(ty, int(value))

    def _unary(self, head, x, dtype):
        b, ty = self.b, x.type
        if head == "negative":
            return b.fneg(x) if is_float(dtype) else b.sub(const(ty, 0), x)
        if head in ("exp", "log", "tanh", "sigmoid") and self.math is not None:
            return getattr(self.math, head)(b, x)
        if head in ("exp", "log", "sqrt", "tanh"):
            return b.call(intrinsic(self.module, "llvm." + head, ty), [x])
        if head == "sigmoid":
            e = b.call(intrinsic(self.module, "llvm.exp", ty), [b.fneg(x)])
            return b.fdiv(const(ty, 1.0), b.fadd(const(ty, 1.0), e))
        # relu: max(x, 0), NaN stays NaN
        if dtype == "bool":
            return x
        if is_float(dtype):
            return b.select(b.fcmp_ordered("<", x, const(ty, 0.0)), const(ty, 0.0), x)
        return b.select(b.icmp_signed("<", x, const(ty, 0)), const(ty, 0), x)

    def _compare(self, head, x, y, dtype):
        b = self.b
        if head == "logical_and":
            return b.and_(truth(self.b, x, dtype), truth(self.b, y, dtype))
        op = {"less": "<", "greater": ">", "less_equal": "<=", "greater_equal": ">=", "equal": "=="}[head]
        if is_float(dtype):
            return b.fcmp_ordered(op, x, y)
        if dtype == "bool":
            return b.icmp_unsigned(op, x, y)
        return b.icmp_signed(op, x, y)

    def _arith(self, head, x, y, dtype):
        b = self.b
        if dtype == "bool":
            return b.or_(x, y) if head in ("add", "maximum") else b.and_(x, y)
        if is_float(dtype):
            return self._float_arith(head, x, y)
        return self._int_arith(head, x, y, dtype)

    def _float_arith(self, head, x, y):
        b = self.b
        simple = {"add": b.fadd, "subtract": b.fsub, "multiply": b.fmul, "divide": b.fdiv,
                  "fmod": b.frem}
        if head in simple:
            return simple[head](x, y)
        if head == "power":
            return b.call(intrinsic(self.module, "llvm.pow", x.type, 2), [x, y])
        # maximum/minimum: x if x is NaN, else the larger/smaller (y when y is NaN)
        pick_x = b.fcmp_ordered(">" if head == "maximum" else "<", x, y)
        x_nan = b.fcmp_unordered("uno", x, x)
        return b.select(b.or_(pick_x, x_nan), x, y)

    def _int_arith(self, head, x, y, dtype):
        b, ty, width = self.b, x.type, REG_TYPE[dtype].width
        simple = {"add": b.add, "subtract": b.sub, "multiply": b.mul}
        if head in simple:
            return simple[head](x, y)
        if head == "maximum":
            return b.select(b.icmp_signed(">", x, y), x, y)
        if head == "minimum":
            return b.select(b.icmp_signed("<", x, y), x, y)
        if head == "power":
            return self._lanewise(_ipow_function(self.module, REG_TYPE[dtype]), x, y)
        # divide / fmod: truncating, x/0 -> 0 (x fmod 0 -> 0), INT_MIN/-1 -> INT_MIN (x/1; the
        # remainder x fmod 1 == 0 is right)
        zero = b.icmp_signed("==", y, const(ty, 0))
        int_min = const(ty, -(1 << (width - 1)))
        overflow = b.and_(b.icmp_signed("==", x, int_min), b.icmp_signed("==", y, const(ty, -1)))
        safe = b.select(b.or_(zero, overflow), const(ty, 1), y)
        result = b.srem(x, safe) if head == "fmod" else b.sdiv(x, safe)
        return b.select(zero, const(ty, 0), result)

    def _lanewise(self, fn, *args):
        """Call the scalar function `fn` on each lane (for the rare ops with no vector form)."""
        b = self.b
        if self.lanes == 1:
            return b.call(fn, list(args))
        out = ir.Constant(args[0].type, ir.Undefined)
        for lane in range(self.lanes):
            i = const(I32, lane)
            out = b.insert_element(out, b.call(fn, [b.extract_element(a, i) for a in args]), i)
        return out


def _tanh_gate(expr):
    """(X, U) when `expr` is X * (1 + tanh(U)) / 2 written as 0.5 * X * (1 + tanh(U)) (the
    tanh-GELU: two nested multiplies, the factors and the add's terms in any order), else None.
    The emitter computes it as llvm_math.tanh_gate: one exp and one division."""
    if expr[0] != "multiply":
        return None
    factors = []
    for f in expr[1:]:
        factors += list(f[1:]) if f[0] == "multiply" else [f]
    if len(factors) != 3:
        return None
    half = [f for f in factors if f[0] == "const" and f[1] == 0.5]
    plus = [f for f in factors if f[0] == "add" and any(t[0] == "tanh" for t in f[1:])
            and any(t[0] == "const" and t[1] == 1.0 for t in f[1:])]
    if not half or not plus:
        return None
    rest = list(factors)
    rest.remove(half[0])
    rest.remove(plus[0])
    tanh = next(t for t in plus[0][1:] if t[0] == "tanh")
    return rest[0], tanh[1]


def emit_expr(b, expr, in_dtypes, load_input, lanes=1):
    """Public entry point (fused epilogues in matmul/conv2d): emit `expr` at `b` -> (value,
    dtype). load_input(i) gives input i in register form (bool as i1), a scalar when lanes == 1,
    else a `<lanes x T>` vector; the result has the same shape."""
    return _ExprEmitter(b, in_dtypes, load_input, lanes).emit(expr)


def _freeze(expr):
    if isinstance(expr, (list, tuple)):
        return tuple(_freeze(e) for e in expr)
    return (type(expr).__name__, expr)


# ---------------------------------------------------------------------------------------------
# kernel functions: one per variant, each validating its own arguments


def _check_broadcast(b, arrays):
    """Each input extent must equal the output's (right-aligned) or be 1."""
    out_ext = arrays[-1][1]
    r = len(out_ext)
    for k, (_, ext, _) in enumerate(arrays[:-1]):
        for j, e in enumerate(ext):
            o = out_ext[r - len(ext) + j]
            ok = b.or_(b.icmp_signed("==", e, o), b.icmp_signed("==", e, const(I64, 1)))
            check(b, ok, ERR_BROADCAST | k << 8 | j << 16)


def _compute_and_store(b, sig, expr, load_input, out_data, out_offset, lanes):
    """Compute `expr` from `load_input(i)` values and store the result at `out_offset`."""
    in_dtypes = [dt for dt, _ in sig[:-1]]
    value, _ = _ExprEmitter(b, in_dtypes, load_input, lanes).emit(expr)
    out_dtype = sig[-1][0]
    store(b, to_mem(b, value, out_dtype), out_data, out_offset)


def _emit_at(b, sig, expr, arrays, offsets, lanes=1):
    """Elements (vectors) at per-array `offsets`, all arrays advancing together."""
    def load_input(i):
        dtype = sig[i][0]
        return to_reg(b, load(b, arrays[i][0], offsets[i], mem_type(dtype, lanes)), dtype)
    _compute_and_store(b, sig, expr, load_input, arrays[-1][0], offsets[-1], lanes)


# Every loop here is marked "do not vectorise, do not unroll": vector code is explicit, the
# scalar loops are tails or strided paths where LLVM's loop vectoriser gains little and costs
# most of the compile time.
NO_AUTO = {"vectorize": False, "unroll": False}


def _compact(b, ext, strides_ptr):
    """Compact strides (callers handle empty arrays: they are never flat with a non-empty
    output, and an empty output returns first)."""
    return is_compact(b, ext, load_strides(b, ext, strides_ptr), empty_ok=False)


def _flat_prologue(module, symbol, sig):
    """Shared start of the flat variants: every array compact with the output's element count."""
    fn, b = new_function(module, symbol)
    arrays = prologue(b, *fn.args, sig)
    _check_broadcast(b, arrays)
    n = product(b, arrays[-1][1])
    return_zero_if(b, b.icmp_signed("==", n, const(I64, 0)))
    for k, (_, ext, strides) in enumerate(arrays):
        check(b, b.icmp_signed("==", product(b, ext), n), ERR_LAYOUT | k << 8)
        check(b, _compact(b, ext, strides), ERR_LAYOUT | k << 8)
    check_data(b, arrays)
    return b, arrays, n


def _split_flat(b, arrays, n, elements, align, threshold):
    """elements(b', arrays', lo, hi) over the flat range [0, n) in chunks of a multiple of
    `align` elements, on the kernel threads from `threshold` elements (the arrays' data
    pointers are all the flat variants read)."""
    def chunk(b, data, lo, hi):
        elements(b, [(d, None, None) for d in data], lo, hi)
    worth = b.icmp_unsigned(">=", n, const(I64, threshold))
    split_for(b, [data for data, _, _ in arrays], n, chunk, worth, align=align)


def _emit_scalar(module, symbol, sig, expr, lanes, threshold):
    """"scalar": one flat element loop, no vector setup (for sizes below one vector)."""
    b, arrays, n = _flat_prologue(module, symbol, sig)
    for_range(b, 0, n, lambda i: _emit_at(b, sig, expr, arrays, [i] * len(arrays)), **NO_AUTO)
    b.ret(const(I32, 0))


def _emit_vector(module, symbol, sig, expr, lanes, threshold):
    """"vector": explicit `<lanes x T>` loads, ops and stores, then a scalar tail (chunks on
    the kernel threads are whole vectors: only the last one has the tail)."""
    b, arrays, n = _flat_prologue(module, symbol, sig)

    def elements(b, arrays, lo, hi):
        main = b.sub(hi, b.urem(b.sub(hi, lo), const(I64, lanes)))
        for_range(b, lo, main, lambda i: _emit_at(b, sig, expr, arrays, [i] * len(arrays), lanes),
                  step=lanes, **NO_AUTO)
        for_range(b, main, hi, lambda i: _emit_at(b, sig, expr, arrays, [i] * len(arrays)),
                  **NO_AUTO)
    _split_flat(b, arrays, n, elements, lanes, threshold)
    b.ret(const(I32, 0))


def _emit_vector_exact(module, symbol, sig, expr, lanes, threshold):
    """"vector_exact": the element count is a multiple of `lanes` (checked), so no tail."""
    b, arrays, n = _flat_prologue(module, symbol, sig)
    check(b, b.icmp_signed("==", b.urem(n, const(I64, lanes)), const(I64, 0)), ERR_LAYOUT)

    def elements(b, arrays, lo, hi):
        for_range(b, lo, hi, lambda i: _emit_at(b, sig, expr, arrays, [i] * len(arrays), lanes),
                  step=lanes, **NO_AUTO)
    _split_flat(b, arrays, n, elements, lanes, threshold)
    b.ret(const(I32, 0))


def _emit_strided(module, symbol, sig, expr, lanes, threshold, perms=None):
    """"strided": a loop nest over the output extents with numpy broadcasting (an input's
    stride is 0 in dims where its extent is 1, any explicit strides allowed). When every
    innermost stride is 0 or 1 the innermost loop is vectorised: stride-1 inputs load a
    vector, stride-0 ones a splat (a masked load whose mask is off).

    `perms` {input: perm}: that input is read transposed (a fused `transpose(x, perm)`): its
    extents and strides are permuted before broadcasting, so no transposed copy is made.

    With rank >= 2 the outermost dim is cut into chunks for the kernel threads (from
    `threshold` output elements); the innermost loop is always whole."""
    fn, b = new_function(module, symbol)
    arrays = _permuted(b, prologue(b, *fn.args, sig), perms or {})
    _check_broadcast(b, arrays)
    out_ext = arrays[-1][1]
    r = len(out_ext)
    return_zero_if(b, b.icmp_signed("==", product(b, out_ext), const(I64, 0)))
    check_data(b, arrays)
    eff = [_effective_strides(b, ext, strides, r) for _, ext, strides in arrays]
    if r == 0:
        _emit_at(b, sig, expr, arrays, [const(I64, 0)] * len(arrays))
        b.ret(const(I32, 0))
        return
    inner = [s[-1] for s in eff]
    fast = const(I1, 1)
    for s in inner:
        if s is not None:
            fast = b.and_(fast, b.icmp_unsigned("<=", s, const(I64, 1)))
    worth = b.icmp_unsigned(">=", product(b, out_ext), const(I64, threshold))
    data = [d for d, _, _ in arrays]
    fast_bb, slow_bb = fn.append_basic_block("inner.unit"), fn.append_basic_block("inner.any")
    b.cbranch(fast, fast_bb, slow_bb)
    for block, emit_inner in ((fast_bb, _inner_unit), (slow_bb, _inner_any)):
        b.position_at_end(block)
        if r == 1:
            emit_inner(b, sig, expr, arrays, out_ext[-1], inner, [const(I64, 0)] * len(arrays),
                       lanes)
        else:
            split_for(b, [data, out_ext, eff], out_ext[0],
                      lambda b, values, lo, hi: _strided_rows(b, sig, expr, lanes, emit_inner,
                                                              *values, lo, hi), worth)
        b.ret(const(I32, 0))


def _strided_rows(b, sig, expr, lanes, emit_inner, data, out_ext, eff, lo, hi):
    """The strided loop nest for outermost indices [lo, hi)."""
    arrays = [(d, None, None) for d in data]
    r = len(out_ext)
    inner = [s[-1] for s in eff]
    outer = [(out_ext[d], [s[d] for s in eff]) for d in range(1, r - 1)]

    def row(i):
        start = [const(I64, 0) if s[0] is None else b.mul(i, s[0]) for s in eff]
        for_nest(b, outer, start,
                 lambda offsets: emit_inner(b, sig, expr, arrays, out_ext[-1], inner, offsets,
                                            lanes), **NO_AUTO)
    for_range(b, lo, hi, row, **NO_AUTO)


def _advance(b, offsets, inner, i):
    return [off if s is None else b.add(off, b.mul(i, s)) for off, s in zip(offsets, inner)]


def _inner_any(b, sig, expr, arrays, m, inner, offsets, lanes):
    for_range(b, 0, m, lambda i: _emit_at(b, sig, expr, arrays, _advance(b, offsets, inner, i)),
              **NO_AUTO)


def _inner_unit(b, sig, expr, arrays, m, inner, offsets, lanes):
    main = b.sub(m, b.urem(m, const(I64, lanes)))

    def vector_body(i):
        at = _advance(b, offsets, inner, i)

        def load_input(k):
            dtype = sig[k][0]
            first = splat(b, load(b, arrays[k][0], at[k], MEM_TYPE[dtype]), lanes)
            if inner[k] is None:
                return to_reg(b, first, dtype)
            unit = splat(b, b.icmp_signed("==", inner[k], const(I64, 1)), lanes)
            ptr = elem_ptr(b, arrays[k][0], at[k], MEM_TYPE[dtype])
            return to_reg(b, masked_load(b, ptr, unit, first), dtype)
        _compute_and_store(b, sig, expr, load_input, arrays[-1][0], at[-1], lanes)

    for_range(b, 0, main, vector_body, step=lanes, **NO_AUTO)
    for_range(b, main, m, lambda i: _emit_at(b, sig, expr, arrays, _advance(b, offsets, inner, i)),
              **NO_AUTO)


def _permuted(b, arrays, perms):
    """arrays with the listed inputs' (extents, strides) permuted; strides become a list."""
    out = list(arrays)
    for k, perm in perms.items():
        data, ext, strides_ptr = arrays[k]
        strides = load_strides(b, ext, strides_ptr)
        out[k] = (data, [ext[p] for p in perm], [strides[p] for p in perm])
    return out


def _effective_strides(b, ext, strides_ptr, r):
    """Per output dim: None where the array has no such dim, 0 where its extent is 1.
    `strides_ptr` may also be a list of already loaded strides (a permuted input)."""
    strides = strides_ptr if isinstance(strides_ptr, list) else load_strides(b, ext, strides_ptr)
    eff = [None] * (r - len(ext))
    for e, s in zip(ext, strides):
        eff.append(b.select(b.icmp_signed("==", e, const(I64, 1)), const(I64, 0), s))
    return eff


# ---------------------------------------------------------------------------------------------
# the family: variants, dispatcher, registration

VARIANTS = {"scalar": _emit_scalar, "vector": _emit_vector, "vector_exact": _emit_vector_exact,
            "strided": _emit_strided}


def lanes_for(sig):
    """Vector lanes of a kernel: a full SIMD register of its widest array element."""
    return vector_lanes(max(DTYPES[dt][2] for dt, _ in sig))


def _dispatch_context(b, arrays):
    """(n, flat): the output's element count and whether the flat variants apply (every array
    compact, no input broadcast; an empty output counts as flat whatever its strides)."""
    n = product(b, arrays[-1][1])
    flat = const(I1, 1)
    for _, ext, strides in arrays:
        flat = b.and_(flat, b.icmp_signed("==", product(b, ext), n))
        flat = b.and_(flat, _compact(b, ext, strides))
    return n, b.or_(flat, b.icmp_signed("==", n, const(I64, 0)))


def dispatch_choices(lanes):
    """The documented choice: flat and n < lanes -> "scalar"; flat and n % lanes == 0 ->
    "vector_exact"; flat -> "vector"; anything else (broadcast, strided) -> "strided"."""
    w = const(I64, lanes)
    return [
        ("scalar", lambda b, c: b.and_(c[1], b.icmp_signed("<", c[0], w))),
        ("vector_exact", lambda b, c: b.and_(c[1], b.icmp_signed("==", b.urem(c[0], w), const(I64, 0)))),
        ("vector", lambda b, c: c[1]),
        ("strided", None),
    ]


def _perms(spec, inputs) -> dict:
    """{input index: permutation} from a spec's optional "perms": [[input, perm], ...]."""
    perms = {}
    for entry in spec.get("perms", []):
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or type(entry[0]) is not int
                or not 0 <= entry[0] < len(inputs)
                or sorted(entry[1]) != list(range(inputs[entry[0]][1]))):
            raise KernelError(f"elementwise perms entry {entry!r:.60} is not [input, permutation]")
        perms[entry[0]] = [int(p) for p in entry[1]]
    return perms


def check_spec(spec, inputs, outputs):
    """Build-time checks of an elementwise spec {"expr": expr, "perms"?: [[input, perm]...]}
    against its signature."""
    if not isinstance(spec, dict) or "expr" not in spec:
        raise KernelError(f"elementwise spec must be {{'expr': ...}}, got {spec!r:.80}")
    _perms(spec, inputs)
    parallel_work(spec, "elementwise", "elementwise")
    if len(outputs) != 1:
        raise KernelError(f"an elementwise kernel has one output, got {len(outputs)}")
    result = expr_dtype(spec["expr"], [dt for dt, _ in inputs])
    if result != outputs[0][0]:
        raise KernelError(f"expression gives {result}, output is {outputs[0][0]}")
    if any(rank > outputs[0][1] for _, rank in inputs):
        raise KernelError("an input has a higher rank than the output")


def emit_elementwise(module, symbol, spec, inputs, outputs):
    """Add the variants `symbol__<v>` and the dispatcher `symbol` to `module`; -> variant names."""
    sig = [tuple(x) for x in inputs] + [tuple(outputs[0])]
    lanes = lanes_for(sig)
    perms = _perms(spec, inputs)
    threshold = parallel_work(spec, "elementwise", "elementwise")
    if perms:       # a transposed input: only the loop nest reads it right
        _emit_strided(module, variant_symbol(symbol, "strided"), sig, spec["expr"], lanes,
                      threshold, perms)
        return emit_dispatcher(module, symbol, sig, [("strided", None)])
    for name, emit in VARIANTS.items():
        emit(module, variant_symbol(symbol, name), sig, spec["expr"], lanes, threshold)
    return emit_dispatcher(module, symbol, sig, dispatch_choices(lanes), prepare=_dispatch_context)


FAMILY = register(Family("elementwise", check_spec, emit_elementwise))
