"""Vectorisable transcendental functions as inline LLVM IR: exp, log, tanh, sigmoid.

libm calls (what `llvm.exp` lowers to) stop the loop vectoriser and cost a call per element;
these are straight-line IR (range reduction + polynomial, selects instead of branches), so they
work on float32/float64 scalars and on LLVM vectors of any width alike: `exp(b, x)` with `x` of
type `float`, `double`, `<16 x float>`, ... returns a value of the same type.

Accuracy (tests/kernels/test_llvm_math.py measures it against numpy over the whole range, with
subnormals, +-inf and NaN): float32 exp/log within 2 ulp, tanh/sigmoid within 4 ulp
(max relative error < 5e-7); float64 within 4 ulp (< 1e-15). Special values follow C99:
exp(-inf) = 0, exp(+inf) = inf, results that overflow are inf, results below the smallest
subnormal are 0 (subnormal results are rounded once, correctly scaled); log(0) = -inf,
log(x < 0) = NaN, log(inf) = inf; NaN in, NaN out everywhere. No fast-math flags are used, so
the IR means exactly what it says.

Helpers for building vector code (`splat`, `vector_type`, `vector_lanes`, `fma`, `intrinsic`)
are public: the reduce and softmax families use them too.
"""
import math

from llvmlite import ir

F32, F64 = ir.FloatType(), ir.DoubleType()
I32, I64 = ir.IntType(32), ir.IntType(64)


# ---------------------------------------------------------------------------------------------
# types and constants


def element_type(ty):
    """The scalar type of a scalar or vector type."""
    return ty.element if isinstance(ty, ir.VectorType) else ty


def with_element(ty, elem):
    """`ty`'s shape (scalar or vector of the same count) with element type `elem`."""
    return ir.VectorType(elem, ty.count) if isinstance(ty, ir.VectorType) else elem


def splat(ty, value):
    """A constant of scalar or vector type `ty` with every lane `value`."""
    return ir.Constant(ty, value)


def vector_type(elem, lanes):
    """`<lanes x elem>`, or `elem` itself for one lane."""
    return elem if lanes == 1 else ir.VectorType(elem, lanes)


def vector_lanes(elem, features=None):
    """Lanes of `elem` in one native vector register of the host (or of `features`):
    64 bytes with avx512f, 32 with avx, else 16."""
    if features is None:
        from kernels import codelib
        features = codelib.host_target()["features"]
    flags = set(features.split(","))
    width = 64 if "+avx512f" in flags else 32 if "+avx" in flags else 16
    return width * 8 // (32 if elem == F32 else 64 if elem == F64 else elem.width)


def _type_suffix(ty):
    elem = element_type(ty)
    name = "f32" if elem == F32 else "f64" if elem == F64 else f"i{elem.width}"
    return f"v{ty.count}{name}" if isinstance(ty, ir.VectorType) else name


def intrinsic(module, name, ty, nargs=1):
    """Declare the overloaded intrinsic `name.<ty>` taking `nargs` args of `ty` (vectors too)."""
    full = f"{name}.{_type_suffix(ty)}"
    existing = module.globals.get(full)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ty, [ty] * nargs), name=full)


def fma(b, x, y, z):
    """x * y + z, rounded once (llvm.fma: one instruction with FMA, libm-free either way)."""
    return b.call(intrinsic(b.module, "llvm.fma", x.type, 3), [x, y, z])


def _poly(b, x, coeffs):
    """Horner: coeffs[0] * x**(n-1) + ... + coeffs[-1], with fma."""
    ty = x.type
    acc = splat(ty, coeffs[0])
    for c in coeffs[1:]:
        acc = fma(b, acc, x, splat(ty, c))
    return acc


def _is_f32(ty):
    return element_type(ty) == F32


def _int_like(ty):
    return with_element(ty, I32 if _is_f32(ty) else I64)


def _keep_nan(b, x, result):
    """NaN inputs give themselves (quiet NaN), whatever the lanes computed."""
    return b.select(b.fcmp_unordered("uno", x, x), x, result)


def _pow2(b, n, ty):
    """2.0**n for integer n (same shape as `ty`) in the normal exponent range, by bit assembly."""
    ity = _int_like(ty)
    mant, bias = (23, 127) if _is_f32(ty) else (52, 1023)
    return b.bitcast(b.shl(b.add(n, splat(ity, bias)), splat(ity, mant)), ty)


# ---------------------------------------------------------------------------------------------
# exp

# float32: Cephes expf minimax polynomial for e**r - 1 - r on |r| <= ln2/2
_EXP_F32 = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
            1.6666665459e-1, 5.0000001201e-1)
# float64: Taylor series to r**13 (truncation < 5e-18 relative on |r| <= ln2/2)
_EXP_F64 = tuple(1.0 / math.factorial(k) for k in range(13, 1, -1))
_LN2_HI_F32, _LN2_LO_F32 = 0.693359375, -2.12194440e-4
_LN2_HI_F64 = 6.93147180369123816490e-01
_LN2_LO_F64 = 1.90821492927058770002e-10
# clamps: beyond them the result is inf / 0 anyway; they keep n in range of the 2-step scaling
_EXP_RANGE = {True: (-104.0, 89.0), False: (-746.0, 710.0)}


def exp(b, x):
    """e**x: n = round(x / ln2), r = x - n ln2 (Cody-Waite, two fmas), e**r by polynomial,
    times 2**n applied in two halves so subnormal results round once and overflow gives inf."""
    ty = x.type
    f32 = _is_f32(ty)
    lo, hi = _EXP_RANGE[f32]
    xc = b.select(b.fcmp_unordered("<", x, splat(ty, lo)), splat(ty, lo), x)  # NaN -> lo
    xc = b.select(b.fcmp_ordered(">", xc, splat(ty, hi)), splat(ty, hi), xc)
    nf = b.call(intrinsic(b.module, "llvm.rint", ty), [b.fmul(xc, splat(ty, 1 / math.log(2)))])
    hi_c, lo_c = (_LN2_HI_F32, _LN2_LO_F32) if f32 else (_LN2_HI_F64, _LN2_LO_F64)
    r = fma(b, b.fneg(nf), splat(ty, hi_c), xc)
    r = fma(b, b.fneg(nf), splat(ty, lo_c), r)
    if f32:
        p = fma(b, _poly(b, r, _EXP_F32), b.fmul(r, r), b.fadd(r, splat(ty, 1.0)))
    else:
        p = fma(b, _poly(b, r, _EXP_F64 + (1.0,)), r, splat(ty, 1.0))
    ity = _int_like(ty)
    n = b.fptosi(nf, ity)
    n1 = b.ashr(n, splat(ity, 1))
    n2 = b.sub(n, n1)
    result = b.fmul(b.fmul(p, _pow2(b, n1, ty)), _pow2(b, n2, ty))
    return _keep_nan(b, x, result)


# ---------------------------------------------------------------------------------------------
# log

_SQRT2 = math.sqrt(2.0)


def log(b, x):
    """Natural log: x = m * 2**e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) with
    s = (m-1)/(m+1) as an odd series in s; subnormals are scaled up first."""
    ty = x.type
    f32 = _is_f32(ty)
    ity = _int_like(ty)
    mant, bias, tiny, scale_bits = (23, 127, 2.0 ** -126, 25) if f32 else (52, 1023, 2.0 ** -1022, 54)
    sub = b.fcmp_ordered("<", x, splat(ty, tiny))
    xs = b.select(sub, b.fmul(x, splat(ty, 2.0 ** scale_bits)), x)
    bits = b.bitcast(xs, ity)
    e = b.sub(b.lshr(bits, splat(ity, mant)), splat(ity, bias))
    e = b.select(sub, b.sub(e, splat(ity, scale_bits)), e)
    m_bits = b.or_(b.and_(bits, splat(ity, (1 << mant) - 1)), splat(ity, bias << mant))
    m = b.bitcast(m_bits, ty)                                        # [1, 2)
    big = b.fcmp_ordered(">=", m, splat(ty, _SQRT2))
    m = b.select(big, b.fmul(m, splat(ty, 0.5)), m)
    e = b.select(big, b.add(e, splat(ity, 1)), e)
    f = b.fsub(m, splat(ty, 1.0))                                    # exact (Sterbenz)
    s = b.fdiv(f, b.fadd(f, splat(ty, 2.0)))
    z = b.fmul(s, s)
    terms = 5 if f32 else 11                                         # 2/3, 2/5, ... 2/(2k+1)
    series = _poly(b, z, tuple(2.0 / (2 * k + 1) for k in range(terms, 0, -1)))
    log_m = fma(b, b.fmul(s, z), series, b.fadd(s, s))
    ef = b.sitofp(e, ty)
    hi_c, lo_c = (_LN2_HI_F32, _LN2_LO_F32) if f32 else (_LN2_HI_F64, _LN2_LO_F64)
    result = fma(b, ef, splat(ty, hi_c), fma(b, ef, splat(ty, lo_c), log_m))
    result = b.select(b.fcmp_ordered("==", x, splat(ty, math.inf)), x, result)
    result = b.select(b.fcmp_ordered("==", x, splat(ty, 0.0)), splat(ty, -math.inf), result)
    result = b.select(b.fcmp_ordered("<", x, splat(ty, 0.0)), splat(ty, math.nan), result)
    return _keep_nan(b, x, result)


# ---------------------------------------------------------------------------------------------
# tanh and sigmoid

# |x| < 0.625: float32 Cephes tanhf polynomial in x**2; float64 Cephes rational P(z)/Q(z)
_TANH_F32 = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
             -3.33332819422e-1)
_TANH_P64 = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH_Q64 = (1.0, 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


def tanh(b, x):
    """|x| < 0.625: odd polynomial/rational; else sign(x) (1 - 2 / (e**(2|x|) + 1)), which
    saturates to +-1 cleanly when e**(2|x|) overflows."""
    ty = x.type
    ax = b.call(intrinsic(b.module, "llvm.fabs", ty), [x])
    e2 = exp(b, b.fadd(ax, ax))
    large = b.fsub(splat(ty, 1.0), b.fdiv(splat(ty, 2.0), b.fadd(e2, splat(ty, 1.0))))
    large = b.select(b.fcmp_ordered("<", x, splat(ty, 0.0)), b.fneg(large), large)
    z = b.fmul(x, x)
    if _is_f32(ty):
        small = fma(b, b.fmul(_poly(b, z, _TANH_F32), z), x, x)
    else:
        ratio = b.fdiv(b.fmul(z, _poly(b, z, _TANH_P64)), _poly(b, z, _TANH_Q64))
        small = fma(b, x, ratio, x)
    result = b.select(b.fcmp_ordered("<", ax, splat(ty, 0.625)), small, large)
    return _keep_nan(b, x, result)


def sigmoid(b, x):
    """t = e**-|x|; 1 / (1 + t) for x >= 0 and t / (1 + t) for x < 0: exp never overflows, so
    results down to the subnormal range keep full relative precision (1 / (1 + e**-x) would
    give 0 from x < -88.7 in float32)."""
    ty = x.type
    ax = b.call(intrinsic(b.module, "llvm.fabs", ty), [x])
    t = exp(b, b.fneg(ax))
    s = b.fdiv(splat(ty, 1.0), b.fadd(splat(ty, 1.0), t))
    return b.select(b.fcmp_ordered("<", x, splat(ty, 0.0)), b.fmul(t, s), s)


FUNCTIONS = {"exp": exp, "log": log, "tanh": tanh, "sigmoid": sigmoid}
