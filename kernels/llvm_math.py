"""Vectorisable transcendental functions as inline LLVM IR: exp, log, tanh, sigmoid.

libm calls (what `llvm.exp` lowers to) stop the loop vectoriser and cost a call per element;
these are straight-line IR (range reduction + polynomial, selects instead of branches), so they
work on float32/float64 scalars and on LLVM vectors of any width alike: `exp(b, x)` with `x` of
type `float`, `double`, `<16 x float>`, ... returns a value of the same type.

Accuracy (tests/kernels/test_llvm_math.py measures it against numpy over the whole range, with
subnormals, +-inf and NaN, and asserts these bounds): float32 exp within 1 ulp, log within 2 ulp,
tanh within 2 ulp, sigmoid within 3 ulp (max relative error < 3e-7); float64 exp within 1 ulp,
log/tanh within 2 ulp, sigmoid within 3 ulp (< 1e-15). Special values follow C99:
exp(-inf) = 0, exp(+inf) = inf, results that overflow are inf, results below the smallest
subnormal are 0 (subnormal results are rounded once, correctly scaled); log(0) = -inf,
log(x < 0) = NaN, log(inf) = inf; NaN in, NaN out everywhere.

Speed: float32 tanh is one expm1-style evaluation and one division, sigmoid one exp and one
division; exp rounds to an integer with the 1.5 * 2**23 trick (no rint/convert) and uses a
degree-6 polynomial. With `fast` (default: `fast_scaling_available()`, i.e. the target has
AVX-512) two target-tuned forms are used: 2**n scaling is `llvm.ldexp` (one vscalefps: a single
rounding, inf on overflow and subnormal results for free) instead of 2**n built by bits in two
halves, and on 512-bit float32 vectors the divisions of tanh/sigmoid (by denominators in
[1, 2], never 0 or inf) carry `ninf arcp contract`, so LLVM emits vrcp14ps + one Newton step
(two fmas) instead of vdivps. That division is not always correctly rounded, so vector and
scalar results of tanh/sigmoid may differ by up to 2 ulp (about 0.1% of inputs); both stay
within the bounds above. No other fast-math flag is used, so the IR otherwise means exactly
what it says. `fast=False` gives the portable form (bit-assembled 2**n, exact fdiv).

Two forms for the kernels' hot loops, with their own contracts: `exp_nonpositive` (softmax's
exp of x - max: 2 ulp, 0 below e**-87) and `tanh_gate` (the tanh-GELU's x (1 + tanh u) / 2 as
x / (1 + e**(-2u)): 3 ulp); both use `_exp_bits` (2**n by bits in one multiply, Estrin's
polynomial) and are not in FUNCTIONS (no elementwise op of their own).

`vector_lanes` (lanes of a native vector) and `fma` are public; the type helpers come from the
IR toolkit (kernels/llvm_util.py).
"""
import functools
import math

from llvmlite import ir

from dynvm.kernels.llvm_util import (F32, F64, I32, I64, const, element_type, intrinsic,
                                     type_suffix, with_element)


# ---------------------------------------------------------------------------------------------
# types and constants


def vector_lanes(elem, features=None):
    """Lanes of `elem` in one native vector register of the host (or of `features`):
    64 bytes with avx512f, 32 with avx, else 16."""
    if features is None:
        from dynvm.kernels import codelib
        features = codelib.host_target()["features"]
    flags = set(features.split(","))
    width = 64 if "+avx512f" in flags else 32 if "+avx" in flags else 16
    return width * 8 // (32 if elem == F32 else 64 if elem == F64 else elem.width)


def fma(b, x, y, z):
    """x * y + z, rounded once (llvm.fma: one instruction with FMA, libm-free either way)."""
    return b.call(intrinsic(b.module, "llvm.fma", x.type, 3), [x, y, z])


def _poly(b, x, coeffs):
    """Horner: coeffs[0] * x**(n-1) + ... + coeffs[-1], with fma."""
    ty = x.type
    acc = const(ty, coeffs[0])
    for c in coeffs[1:]:
        acc = fma(b, acc, x, const(ty, c))
    return acc


def _poly_estrin(b, x, coeffs):
    """The polynomial of `_poly` by Estrin's scheme: pairs c1 x + c0 joined by x**2, those
    pairs by x**4, ...: a dependency chain of about log2(n) fmas instead of n (a few more
    multiplies), so more elements are in flight in a loop that is latency-bound."""
    ty = x.type
    terms = [const(ty, c) for c in reversed(coeffs)]
    power = x
    while len(terms) > 1:
        terms = [fma(b, terms[i + 1], power, terms[i]) if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
        if len(terms) > 1:
            power = b.fmul(power, power)
    return terms[0]


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
    return b.bitcast(b.shl(b.add(n, const(ity, bias)), const(ity, mant)), ty)


# ---------------------------------------------------------------------------------------------
# target-dependent speed-ups (see the module docstring)


@functools.cache
def _host_has_avx512():
    from dynvm.kernels import codelib
    return "+avx512f" in codelib.host_target()["features"].split(",")


def fast_scaling_available():
    """Whether exp/tanh/sigmoid use ldexp scaling and reciprocal estimates by default."""
    return _host_has_avx512()


def _fast(fast):
    return fast_scaling_available() if fast is None else bool(fast)


def _ldexp(b, x, n):
    """x * 2**n rounded once (`n` has i32 lanes): llvm.ldexp, one vscalefps with AVX-512."""
    nty = n.type
    name = f"llvm.ldexp.{type_suffix(x.type)}.{type_suffix(nty)}"
    fn = b.module.globals.get(name)
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(x.type, [x.type, nty]), name=name)
    return b.call(fn, [x, n])


def _estimated_div(b, num, den, fast):
    """num / den for den of magnitude in [1, 2] (finite, never 0). With `fast` on 512-bit
    float32 vectors the division carries `ninf arcp contract`, so LLVM emits vrcp14ps (14-bit
    estimate) refined by one Newton step of two fmas instead of vdivps: about 1 ulp worse than
    a correctly rounded division (the tests' bounds include it). Scalars and narrower vectors
    keep the exact fdiv (their estimate instruction, rcpps, has only 12 bits)."""
    q = b.fdiv(num, den)
    ty = den.type
    if fast and _is_f32(ty) and isinstance(ty, ir.VectorType) and ty.count >= 16:
        q.flags.extend(["ninf", "arcp", "contract"])
    return q


# ---------------------------------------------------------------------------------------------
# exp

# float32: near-minimax (Chebyshev) polynomial for e**r on |r| <= ln2/2, degree 6, coefficients
# rounded to float32: relative error 1.9e-8 (0.16 ulp) before evaluation rounding
_EXP_F32 = (1.394861494190991e-3, 8.375152945518494e-3, 4.1666217148303986e-2,
            1.6666415333747864e-1, 0.5, 1.0, 1.0)
# float64: Taylor series to r**13 (truncation < 5e-18 relative on |r| <= ln2/2)
_EXP_F64 = tuple(1.0 / math.factorial(k) for k in range(13, -1, -1))
_LN2_HI_F32, _LN2_LO_F32 = 0.693359375, -2.12194440e-4
_LN2_HI_F64 = 6.93147180369123816490e-01
_LN2_LO_F64 = 1.90821492927058770002e-10
# clamps: beyond them the result is inf / 0 anyway; they keep n in range of the scaling
_EXP_RANGE = {True: (-104.0, 89.0), False: (-746.0, 710.0)}
# 1.5 * 2**mant: adding it rounds to an integer that then sits in the low mantissa bits
_MAGIC = {True: (1.5 * 2.0 ** 23, 0x4B400000), False: (1.5 * 2.0 ** 52, 0x4338000000000000)}


def _clamp(b, x, lo=None, hi=None):
    """x limited to [lo, hi]; NaN stays NaN (ordered compares)."""
    ty = x.type
    if lo is not None:
        x = b.select(b.fcmp_ordered("<", x, const(ty, lo)), const(ty, lo), x)
    if hi is not None:
        x = b.select(b.fcmp_ordered(">", x, const(ty, hi)), const(ty, hi), x)
    return x


def _reduce(b, x):
    """x = n ln2 + r, |r| <= ln2/2 (+ rounding): -> (k, n, r) with n as int lanes and k the
    float whose low mantissa bits hold n. Rounding to an integer by adding 1.5 * 2**mant (one
    fma, no rint/convert); r by Cody-Waite (two fmas). NaN gives NaN r (n is then arbitrary)."""
    ty = x.type
    f32 = _is_f32(ty)
    magic, magic_bits = _MAGIC[f32]
    k = fma(b, x, const(ty, 1 / math.log(2)), const(ty, magic))
    nf = b.fsub(k, const(ty, magic))
    ity = _int_like(ty)
    n = b.sub(b.bitcast(k, ity), const(ity, magic_bits))
    hi_c, lo_c = (_LN2_HI_F32, _LN2_LO_F32) if f32 else (_LN2_HI_F64, _LN2_LO_F64)
    r = fma(b, b.fneg(nf), const(ty, hi_c), x)
    r = fma(b, b.fneg(nf), const(ty, lo_c), r)
    return k, n, r


def _exp_poly(b, r):
    return _poly(b, r, _EXP_F32 if _is_f32(r.type) else _EXP_F64)


def _scale(b, p, n, fast):
    """p * 2**n for p in [0.7, 1.5) and any clamped n: overflow gives inf, subnormal results
    round once. ldexp when `fast`, else 2**n built by bits in two halves."""
    ty = p.type
    if fast:
        if not _is_f32(ty):
            n = b.trunc(n, with_element(ty, I32))
        return _ldexp(b, p, n)
    ity = _int_like(ty)
    n1 = b.ashr(n, const(ity, 1))
    n2 = b.sub(n, n1)
    return b.fmul(b.fmul(p, _pow2(b, n1, ty)), _pow2(b, n2, ty))


def _scale_normal(b, p, k):
    """p * 2**n when the result is known normal (n in the normal exponent range), from the
    `k` of `_reduce`: shifting its bits left by mant leaves exactly n << mant."""
    ty = p.type
    ity = _int_like(ty)
    mant, bias = (23, 127) if _is_f32(ty) else (52, 1023)
    bits = b.add(b.shl(b.bitcast(k, ity), const(ity, mant)), const(ity, bias << mant))
    return b.fmul(p, b.bitcast(bits, ty))


def exp(b, x, fast=None):
    """e**x: n = round(x / ln2), r = x - n ln2 (Cody-Waite, two fmas), e**r by polynomial,
    times 2**n (`_scale`: rounded once, inf on overflow, subnormals correct)."""
    ty = x.type
    lo, hi = _EXP_RANGE[_is_f32(ty)]
    _, n, r = _reduce(b, _clamp(b, x, lo, hi))      # -inf -> lo -> 0, +inf -> hi -> inf
    return _scale(b, _exp_poly(b, r), n, _fast(fast))  # NaN: r is NaN, so is the result


# `_exp_bits`'s range: from 2**(1 - bias) (a normal number) to 2**(bias + 1), whose bits are inf
_EXP_BITS_RANGE = {True: (-87.0, 88.75), False: (-708.0, 710.0)}


def _exp_bits(b, x):
    """e**x for x in `_EXP_BITS_RANGE` (or NaN), with 2**n built by bits in one multiply (no
    split 2**n, so fewer instructions than `exp`) and the polynomial by Estrin's scheme (a
    shorter dependency chain: softmax ran 6-15% faster than with Horner's). From
    x > 127.5 ln 2 (88.4, float32) the result is inf, a little early (e**88.7 is still
    finite). Outside the range the result is garbage: callers clamp or mask."""
    ty = x.type
    k, _, r = _reduce(b, x)
    return _scale_normal(b, _poly_estrin(b, r, _EXP_F32 if _is_f32(ty) else _EXP_F64), k)


def exp_nonpositive(b, x):
    """e**x for x <= 0 or NaN (softmax's x - max(x)) within 2 ulp (Estrin's polynomial rounds
    differently from `exp`'s Horner), by `_exp_bits`; arguments below its range (-87 in
    float32, -708 in float64, -inf included) give 0, by a select over whatever `_exp_bits`
    made of them (no clamp): an absolute error below the smallest normal number, where `exp`
    gives subnormals. NaN stays NaN; x > 0 is outside the contract."""
    ty = x.type
    flush = b.fcmp_ordered("<", x, const(ty, _EXP_BITS_RANGE[_is_f32(ty)][0]))
    return b.select(flush, const(ty, 0.0), _exp_bits(b, x))


def tanh_gate(b, x, u):
    """x (1 + tanh u) / 2, the tanh-GELU's gate, computed as x / (1 + e**(-2u)) (the same
    function: (1 + tanh u) / 2 = sigmoid(2u)) with `_exp_bits`: one exp and one division
    instead of tanh's exp, division and the cancelling 1 + tanh u, so it is also more
    accurate where tanh u is near -1 (within 3 ulp of the exact value where that is normal).
    Limits as the literal form gives them: e**(-2u) = inf gives x / inf (-0, or NaN for
    x = -inf), e**(-2u) below 1.6e-38 gives x; NaN in either gives NaN."""
    ty = u.type
    e = _exp_bits(b, _clamp(b, b.fmul(u, const(ty, -2.0)), *_EXP_BITS_RANGE[_is_f32(ty)]))
    return b.fdiv(x, b.fadd(e, const(ty, 1.0)))


# ---------------------------------------------------------------------------------------------
# log

_SQRT2 = math.sqrt(2.0)


def log(b, x, fast=None):
    """Natural log (`fast` is accepted for symmetry and has no effect): x = m * 2**e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) with
    s = (m-1)/(m+1) as an odd series in s; subnormals are scaled up first."""
    ty = x.type
    f32 = _is_f32(ty)
    ity = _int_like(ty)
    mant, bias, tiny, scale_bits = (23, 127, 2.0 ** -126, 25) if f32 else (52, 1023, 2.0 ** -1022, 54)
    sub = b.fcmp_ordered("<", x, const(ty, tiny))
    xs = b.select(sub, b.fmul(x, const(ty, 2.0 ** scale_bits)), x)
    bits = b.bitcast(xs, ity)
    e = b.sub(b.lshr(bits, const(ity, mant)), const(ity, bias))
    e = b.select(sub, b.sub(e, const(ity, scale_bits)), e)
    m_bits = b.or_(b.and_(bits, const(ity, (1 << mant) - 1)), const(ity, bias << mant))
    m = b.bitcast(m_bits, ty)                                        # [1, 2)
    big = b.fcmp_ordered(">=", m, const(ty, _SQRT2))
    m = b.select(big, b.fmul(m, const(ty, 0.5)), m)
    e = b.select(big, b.add(e, const(ity, 1)), e)
    f = b.fsub(m, const(ty, 1.0))                                    # exact (Sterbenz)
    s = b.fdiv(f, b.fadd(f, const(ty, 2.0)))
    z = b.fmul(s, s)
    terms = 5 if f32 else 11                                         # 2/3, 2/5, ... 2/(2k+1)
    series = _poly(b, z, tuple(2.0 / (2 * k + 1) for k in range(terms, 0, -1)))
    log_m = fma(b, b.fmul(s, z), series, b.fadd(s, s))
    ef = b.sitofp(e, ty)
    hi_c, lo_c = (_LN2_HI_F32, _LN2_LO_F32) if f32 else (_LN2_HI_F64, _LN2_LO_F64)
    result = fma(b, ef, const(ty, hi_c), fma(b, ef, const(ty, lo_c), log_m))
    result = b.select(b.fcmp_ordered("==", x, const(ty, math.inf)), x, result)
    result = b.select(b.fcmp_ordered("==", x, const(ty, 0.0)), const(ty, -math.inf), result)
    result = b.select(b.fcmp_ordered("<", x, const(ty, 0.0)), const(ty, math.nan), result)
    return _keep_nan(b, x, result)


# ---------------------------------------------------------------------------------------------
# tanh and sigmoid

# float32 (e**r - 1 - r) / r**2 on |r| <= ln2/2, near-minimax degree 4 (relative error of
# r + r**2 q(r) against e**r - 1: 2.4e-8 with the float32 coefficients)
_EXPM1_F32 = (1.3933902373537421e-3, 8.363348431885242e-3, 4.1666463017463684e-2,
              1.6666576266288757e-1, 0.5)
# float64, |x| < 0.625: Cephes rational P(z)/Q(z)
_TANH_P64 = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH_Q64 = (1.0, 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


def tanh(b, x, fast=None):
    """float32: one expm1-style evaluation and one division (see the comments below);
    float64: |x| < 0.625 odd rational, else sign(x) (1 - 2 / (e**(2|x|) + 1)), which saturates
    cleanly when e**(2|x|) overflows."""
    ty = x.type
    fast = _fast(fast)
    ax = b.call(intrinsic(b.module, "llvm.fabs", ty), [x])
    z = b.fmul(x, x)
    if _is_f32(ty):
        # e = e**(-2|x|) = 2**n e**r and m = e - 1 = 2**n (e**r - 1) + (2**n - 1), both from
        # e**r - 1 = r + r**2 q(r) (accurate near 0, so there is no separate polynomial for
        # small |x|). With D = 2 + m = 1 + e, tanh|x| = -m / D for |x| < 0.625 and
        # 1 - 2e / D beyond, where the rounding of D is damped by 2e / D <= 0.45: one division.
        # From |x| = 10 on tanh rounds to 1, so the argument is clamped (2**n stays normal).
        k, _, r = _reduce(b, _clamp(b, b.fmul(ax, const(ty, -2.0)), lo=-20.0))
        em1_r = fma(b, b.fmul(r, r), _poly(b, r, _EXPM1_F32), r)
        two_n = _scale_normal(b, const(ty, 1.0), k)
        m = fma(b, two_n, em1_r, b.fsub(two_n, const(ty, 1.0)))
        e2 = b.fmul(fma(b, two_n, em1_r, two_n), const(ty, 2.0))
        small = b.fcmp_ordered("<", ax, const(ty, 0.625))
        q = _estimated_div(b, b.select(small, m, e2), b.fadd(m, const(ty, 2.0)), fast)
        t = b.fsub(b.select(small, const(ty, 0.0), const(ty, 1.0)), q)
        return b.call(intrinsic(b.module, "llvm.copysign", ty, 2), [t, x])  # NaN stays NaN
    e2 = exp(b, b.fadd(ax, ax), fast)
    large = b.fsub(const(ty, 1.0), b.fdiv(const(ty, 2.0), b.fadd(e2, const(ty, 1.0))))
    large = b.select(b.fcmp_ordered("<", x, const(ty, 0.0)), b.fneg(large), large)
    ratio = b.fdiv(b.fmul(z, _poly(b, z, _TANH_P64)), _poly(b, z, _TANH_Q64))
    small = fma(b, x, ratio, x)
    result = b.select(b.fcmp_ordered("<", ax, const(ty, 0.625)), small, large)
    return _keep_nan(b, x, result)


def sigmoid(b, x, fast=None):
    """t = e**-|x|; 1 / (1 + t) for x >= 0 and t / (1 + t) for x < 0: exp never overflows, so
    results down to the subnormal range keep full relative precision (1 / (1 + e**-x) would
    give 0 from x < -88.7 in float32). NaN propagates through t."""
    ty = x.type
    fast = _fast(fast)
    ax = b.call(intrinsic(b.module, "llvm.fabs", ty), [x])
    lo, _ = _EXP_RANGE[_is_f32(ty)]
    _, n, r = _reduce(b, _clamp(b, b.fneg(ax), lo=lo))
    t = _scale(b, _exp_poly(b, r), n, fast)
    s = _estimated_div(b, const(ty, 1.0), b.fadd(const(ty, 1.0), t), fast)
    return b.select(b.fcmp_ordered("<", x, const(ty, 0.0)), b.fmul(t, s), s)


FUNCTIONS = {"exp": exp, "log": log, "tanh": tanh, "sigmoid": sigmoid}
