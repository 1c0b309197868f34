"""LLVM IR for fused elementwise expressions over run-time shapes with numpy broadcasting.

A kernel is built for fixed ranks and dtypes; extents are read from the DLTensors at run time.
Each expression yields two native functions (variants):

- "contiguous": one flat loop over the output's element count. Valid when every input has the
  output's element count and every array is compact row-major (sizes-1 dims ignored). The loop
  body is unit-stride, so LLVM vectorises it.
- "strided": a loop nest over the output extents; each input gets an effective stride of 0 in a
  dim where its extent is 1 (numpy broadcasting, right-aligned ranks).

Both functions first check every argument (count, ndim, dtype code/bits/lanes, NULL pointers,
broadcast compatibility, and for "contiguous" the layout) and return an error code instead of
touching memory they were not promised. Error codes: `kind | arg << 8 | dim << 16`.

Semantics worth knowing:
- maximum/minimum on floats propagate NaN from either operand, like numpy.
- integer divide truncates toward zero; x / 0 == 0 and INT_MIN / -1 == INT_MIN (no trap).
- integer power uses exponentiation by squaring (wrapping); a negative exponent gives the
  truncated real result: 1 for base 1, +-1 for base -1, 0 otherwise (numpy raises instead).
- float -> int cast saturates (NaN -> 0) via llvm.fptosi.sat; numpy's result for out-of-range
  values is undefined, so only in-range values are comparable.
- bool is i8 (0/1) in memory; any non-zero byte reads as True. add/maximum on bool is `or`,
  multiply/minimum is `and`, as in numpy.
"""
from llvmlite import ir

from kernels.llvm_util import (
    const,
    intrinsic,
    get_function,
    check,
    loop,
    prologue,
    element_count,
    load_strides,
    check_data,
    new_function,
    return_zero_if,
    REG_TYPE,
    MEM_TYPE,
    I1,
    I8,
    I32,
    I64,
    F32,
    F64,
    ERR_BROADCAST,
    ERR_LAYOUT)
from vm.dtypes import DTYPES
from vm.errors import KernelError

UNARY = ("negative", "exp", "log", "sqrt", "tanh", "sigmoid", "relu")
ARITH = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power")
COMPARE = ("less", "greater", "equal", "logical_and")
FLOAT_ONLY = ("exp", "log", "sqrt", "tanh", "sigmoid")
NOT_BOOL = ("negative", "subtract", "divide", "power")


def is_float(dtype):
    return dtype in ("float32", "float64")


def is_int(dtype):
    return dtype in ("int32", "int64")


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
# expression emission


class _ExprEmitter:
    """Emits one element's computation; identical subexpressions are emitted once."""

    def __init__(self, b, in_dtypes, load_input):
        self.b = b
        self.module = b.module
        self.in_dtypes = in_dtypes
        self.load_input = load_input
        self.memo = {}

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
            return self._cast(value, dtype, args[1]), args[1]
        if head == "where":
            cond = self._truth(*self.emit(args[0]))
            (a, dt), (c, _) = self.emit(args[1]), self.emit(args[2])
            return self.b.select(cond, a, c), dt
        operands = [self.emit(a) for a in args]
        dtype = operands[0][1]
        values = [v for v, _ in operands]
        if head in UNARY:
            return self._unary(head, values[0], dtype), dtype
        if head in COMPARE:
            return self._compare(head, values[0], values[1], dtype), "bool"
        return self._arith(head, values[0], values[1], dtype), dtype

    def _constant(self, value, dtype):
        ty = REG_TYPE[dtype]
        if is_float(dtype):
            return const(ty, float(value))
        if dtype == "bool":
            return const(I1, int(bool(value)))
        return const(ty, int(value))

    def _truth(self, value, dtype):
        """numpy truthiness: non-zero (NaN counts as true)."""
        if dtype == "bool":
            return value
        if is_float(dtype):
            return self.b.fcmp_unordered("!=", value, const(value.type, 0.0))
        return self.b.icmp_signed("!=", value, const(value.type, 0))

    def _cast(self, value, src, dst):
        b, ty = self.b, REG_TYPE[dst]
        if src == dst:
            return value
        if dst == "bool":
            return self._truth(value, src)
        if src == "bool":
            return b.uitofp(value, ty) if is_float(dst) else b.zext(value, ty)
        if is_float(src) and is_float(dst):
            return b.fpext(value, ty) if ty == F64 else b.fptrunc(value, ty)
        if is_int(src) and is_int(dst):
            return b.sext(value, ty) if ty.width > value.type.width else b.trunc(value, ty)
        if is_int(src):
            return b.sitofp(value, ty)
        sat = get_function(self.module, f"llvm.fptosi.sat.i{ty.width}.{_fname(value.type)}",
                            ir.FunctionType(ty, [value.type]))
        return b.call(sat, [value])

    def _unary(self, head, x, dtype):
        b, ty = self.b, x.type
        if head == "negative":
            return b.fneg(x) if is_float(dtype) else b.sub(const(ty, 0), x)
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
            return b.and_(self._truth(x, dtype), self._truth(y, dtype))
        op = {"less": "<", "greater": ">", "equal": "=="}[head]
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
        return self._int_arith(head, x, y)

    def _float_arith(self, head, x, y):
        b = self.b
        simple = {"add": b.fadd, "subtract": b.fsub, "multiply": b.fmul, "divide": b.fdiv}
        if head in simple:
            return simple[head](x, y)
        if head == "power":
            return b.call(intrinsic(self.module, "llvm.pow", x.type), [x, y])
        # maximum/minimum: x if x is NaN, else the larger/smaller (y when y is NaN)
        pick_x = b.fcmp_ordered(">" if head == "maximum" else "<", x, y)
        x_nan = b.fcmp_unordered("uno", x, x)
        return b.select(b.or_(pick_x, x_nan), x, y)

    def _int_arith(self, head, x, y):
        b, ty = self.b, x.type
        simple = {"add": b.add, "subtract": b.sub, "multiply": b.mul}
        if head in simple:
            return simple[head](x, y)
        if head == "maximum":
            return b.select(b.icmp_signed(">", x, y), x, y)
        if head == "minimum":
            return b.select(b.icmp_signed("<", x, y), x, y)
        if head == "power":
            return b.call(_ipow_function(self.module, ty), [x, y])
        # divide: truncating, x/0 -> 0, INT_MIN/-1 -> INT_MIN (x/1)
        zero = b.icmp_signed("==", y, const(ty, 0))
        int_min = const(ty, -(1 << (ty.width - 1)))
        overflow = b.and_(b.icmp_signed("==", x, int_min), b.icmp_signed("==", y, const(ty, -1)))
        safe = b.select(b.or_(zero, overflow), const(ty, 1), y)
        return b.select(zero, const(ty, 0), b.sdiv(x, safe))


def _fname(ty):
    return "f32" if ty == F32 else "f64"


def _freeze(expr):
    if isinstance(expr, (list, tuple)):
        return tuple(_freeze(e) for e in expr)
    return (type(expr).__name__, expr)


# ---------------------------------------------------------------------------------------------
# kernel functions


def _check_broadcast(b, arrays):
    """Each input extent must equal the output's (right-aligned) or be 1."""
    out_ext = arrays[-1][1]
    r = len(out_ext)
    for k, (_, ext, _) in enumerate(arrays[:-1]):
        for j, e in enumerate(ext):
            o = out_ext[r - len(ext) + j]
            ok = b.or_(b.icmp_signed("==", e, o), b.icmp_signed("==", e, const(I64, 1)))
            check(b, ok, ERR_BROADCAST | k << 8 | j << 16)


def _emit_body(b, sig, expr, arrays, offsets):
    """Load inputs at `offsets`, compute `expr`, store to the output."""
    in_dtypes = [dt for dt, _ in sig[:-1]]

    def load_input(i):
        ty = MEM_TYPE[in_dtypes[i]]
        v = b.load(b.gep(arrays[i][0], [offsets[i]], inbounds=True, source_etype=ty), typ=ty)
        return b.icmp_unsigned("!=", v, const(I8, 0)) if in_dtypes[i] == "bool" else v

    value, _ = _ExprEmitter(b, in_dtypes, load_input).emit(expr)
    out_dtype = sig[-1][0]
    if out_dtype == "bool":
        value = b.zext(value, I8)
    b.store(value, b.gep(arrays[-1][0], [offsets[-1]], inbounds=True,
                         source_etype=MEM_TYPE[out_dtype]))


def _emit_contiguous(module, symbol, sig, expr):
    fn, b = new_function(module, symbol)
    arrays = prologue(b, *fn.args, sig)
    _check_broadcast(b, arrays)
    n = element_count(b, arrays[-1][1])
    return_zero_if(b, b.icmp_signed("==", n, const(I64, 0)))
    for k, (_, ext, strides) in enumerate(arrays):
        check(b, b.icmp_signed("==", element_count(b, ext), n), ERR_LAYOUT | k << 8)
        _check_compact(b, k, ext, strides)
    check_data(b, arrays)
    loop(b, n, lambda i: _emit_body(b, sig, expr, arrays, [i] * len(arrays)))
    b.ret(const(I32, 0))


def _check_compact(b, k, ext, strides_ptr):
    """Strides must be compact row-major except in extent-1 dims (NULL strides are compact)."""
    if not ext:
        return
    strides = load_strides(b, ext, strides_ptr)
    expected = const(I64, 1)
    ok = const(I1, 1)
    for e, s in zip(reversed(ext), reversed(strides)):
        dim_ok = b.or_(b.icmp_signed("==", e, const(I64, 1)), b.icmp_signed("==", s, expected))
        ok = b.and_(ok, dim_ok)
        expected = b.mul(expected, e)
    check(b, ok, ERR_LAYOUT | k << 8)


def _emit_strided(module, symbol, sig, expr):
    fn, b = new_function(module, symbol)
    arrays = prologue(b, *fn.args, sig)
    _check_broadcast(b, arrays)
    out_ext = arrays[-1][1]
    r = len(out_ext)
    return_zero_if(b, b.icmp_signed("==", element_count(b, out_ext), const(I64, 0)))
    check_data(b, arrays)
    eff = [_effective_strides(b, ext, strides, r) for _, ext, strides in arrays]

    def nest(d, offsets):
        if d == r:
            _emit_body(b, sig, expr, arrays, offsets)
            return
        loop(b, out_ext[d], lambda i: nest(d + 1, [
            off if s[d] is None else b.add(off, b.mul(i, s[d])) for off, s in zip(offsets, eff)]))

    nest(0, [const(I64, 0)] * len(arrays))
    b.ret(const(I32, 0))


def _effective_strides(b, ext, strides_ptr, r):
    """Per output dim: None where the array has no such dim, 0 where its extent is 1."""
    strides = load_strides(b, ext, strides_ptr)
    eff = [None] * (r - len(ext))
    for e, s in zip(ext, strides):
        eff.append(b.select(b.icmp_signed("==", e, const(I64, 1)), const(I64, 0), s))
    return eff


VARIANTS = (("contiguous", _emit_contiguous), ("strided", _emit_strided))


def emit_elementwise(module, base_symbol, expr, inputs, output):
    """Add the variant functions of one elementwise kernel to `module`.

    `inputs` is [(dtype, rank)...], `output` (dtype, rank). Returns [{"name", "symbol"}...].
    """
    sig = [tuple(x) for x in inputs] + [tuple(output)]
    variants = []
    for name, emit in VARIANTS:
        symbol = f"{base_symbol}_{name}"
        emit(module, symbol, sig, expr)
        variants.append({"name": name, "symbol": symbol})
    return variants
