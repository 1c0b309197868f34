"""kernels.llvm_math: exp/log/tanh/sigmoid as inline IR agree with a long-double numpy reference.

Every function is compiled as a scalar loop (1 lane) and as a native-width vector loop with a
scalar tail, in the portable form and (when the host has AVX-512) the fast form (ldexp
scaling, reciprocal estimates for the divisions of tanh/sigmoid on 512-bit vectors), and run over random bit patterns (every binade, subnormals), dense linear sweeps
across the overflow/underflow thresholds and the special values. Tolerance: results in the
normal range within MAX_ULP ulp; results that are 0, +-inf or NaN in the reference must be
exactly that; subnormal results within 1 ulp of the smallest subnormal spacing.
"""
import functools

import cffi
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from llvmlite import ir

from dynvm.kernels import codelib, llvm_math
from dynvm.kernels.llvm_util import vector_type
from tests.strategies import examples

ffi = cffi.FFI()
I64, PTR = ir.IntType(64), ir.PointerType()
ELEM = {"float32": llvm_math.F32, "float64": llvm_math.F64}
MAX_ULP = {"exp": 1, "log": 2, "tanh": 2, "sigmoid": 3}
# the portable form always; the fast form too where the host can run it
MODES = (False, True) if llvm_math.fast_scaling_available() else (False,)
REFERENCE = {"exp": np.exp, "log": np.log, "tanh": np.tanh,
             "sigmoid": lambda x: 1 / (1 + np.exp(-x))}


def _const(v):
    return ir.Constant(I64, v)


def _emit_map(module, name, fn, elem, lanes, arity=1):
    """void name(elem *src..., elem *dst, i64 n): dst = fn(src...) over `arity` sources,
    `lanes` at a time, scalar tail."""
    f = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * (arity + 1) + [I64]),
                    name=name)
    *srcs, dst, n = f.args
    b = ir.IRBuilder(f.append_basic_block("entry"))
    whole = b.mul(b.sdiv(n, _const(lanes)), _const(lanes))
    entry = b.block
    vhead, vbody, shead, sbody, done = (f.append_basic_block(x) for x in
                                        ("vhead", "vbody", "shead", "sbody", "done"))
    b.branch(vhead)
    b.position_at_end(vhead)
    i = b.phi(I64)
    i.add_incoming(_const(0), entry)
    b.cbranch(b.icmp_signed("<", i, whole), vbody, shead)
    b.position_at_end(vbody)
    vty = vector_type(elem, lanes)
    vs = [b.load(b.gep(src, [i], source_etype=elem), typ=vty, align=4) for src in srcs]
    b.store(fn(b, *vs), b.gep(dst, [i], source_etype=elem), align=4)
    i.add_incoming(b.add(i, _const(lanes)), vbody)
    b.branch(vhead)
    b.position_at_end(shead)
    j = b.phi(I64)
    j.add_incoming(whole, vhead)
    b.cbranch(b.icmp_signed("<", j, n), sbody, done)
    b.position_at_end(sbody)
    ss = [b.load(b.gep(src, [j], source_etype=elem), typ=elem) for src in srcs]
    b.store(fn(b, *ss), b.gep(dst, [j], source_etype=elem))
    j.add_incoming(b.add(j, _const(1)), sbody)
    b.branch(shead)
    b.position_at_end(done)
    b.ret_void()


def _compiled_maps(module_name, maps):
    """(library, {key: native map}) of `maps`, [(key, fn, elem, lanes, arity)], emitted into
    one module and compiled once."""
    target = codelib.host_target()
    module = ir.Module(module_name)
    module.triple = target["triple"]
    for i, (_, fn, elem, lanes, arity) in enumerate(maps):
        _emit_map(module, f"map_{i}", fn, elem, lanes, arity)
    lib = codelib.CodeLibrary(str(module), codelib.compile_ir(str(module), target), target)
    return lib, {key: ffi.cast(f"void(*)({'void *, ' * (arity + 1)}int64_t)",
                               lib.address(f"map_{i}"))
                 for i, (key, _, _, _, arity) in enumerate(maps)}


@functools.cache
def _library():
    """One module with every (function, dtype, lanes) map, compiled once per test process."""
    return _compiled_maps("llvm_math_test", [
        ((fname, dtype, lanes, fast), functools.partial(fn, fast=fast), elem, lanes, 1)
        for fname, fn in llvm_math.FUNCTIONS.items() for dtype, elem in ELEM.items()
        for lanes in (1, llvm_math.vector_lanes(elem)) for fast in MODES])


def apply(fname, dtype, lanes, x, fast=None):
    """fname over x with `lanes`-wide vectors; fast=None: the form kernels use on this host."""
    fast = llvm_math.fast_scaling_available() if fast is None else fast
    _, fns = _library()
    x = np.ascontiguousarray(x, dtype)
    y = np.full_like(x, 12345)
    if x.size:
        fns[(fname, dtype, lanes, fast)](ffi.from_buffer(x), ffi.from_buffer(y), x.size)
    return y


def lane_counts(dtype):
    return (1, llvm_math.vector_lanes(ELEM[dtype]))


def reference(fname, x):
    with np.errstate(all="ignore"):
        return REFERENCE[fname](x.astype(np.longdouble)).astype(x.dtype)


def assert_close_ulp(got, want, max_ulp):
    """Exact for NaN/0/inf references; else |got - want| <= max_ulp * spacing(want)."""
    dtype = got.dtype
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    exact = ~np.isfinite(want) | (want == 0)
    exact &= ~np.isnan(want)
    np.testing.assert_array_equal(got[exact], want[exact])
    rest = ~exact & ~np.isnan(want)
    err = np.abs(got[rest].astype(np.longdouble) - want[rest])
    spacing = np.maximum(np.spacing(np.abs(want[rest])), np.finfo(dtype).smallest_subnormal)
    ulps = err / spacing
    assert ulps.size == 0 or ulps.max() <= max_ulp, \
        f"max error {ulps.max()} ulp at x-index {np.argmax(ulps)}"


def sweep(dtype, seed=0):
    """Random bit patterns (all binades, both signs), threshold sweeps and special values."""
    rng = np.random.default_rng(seed)
    uint = np.uint32 if dtype == "float32" else np.uint64
    bits = rng.integers(0, np.iinfo(uint).max, size=100_000, dtype=uint).view(dtype)
    info = np.finfo(dtype)
    limits = (-110, 110) if dtype == "float32" else (-760, 760)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, info.tiny, -info.tiny,
                info.smallest_subnormal, info.max, -info.max, 0.625, -0.625,
                np.log(info.max), -np.log(info.max), np.log(info.tiny), np.log(info.smallest_subnormal)]
    return np.concatenate([bits, np.linspace(*limits, 100_001, dtype=dtype),
                           np.linspace(-2, 2, 10_001, dtype=dtype),
                           np.array(specials, dtype)]).astype(dtype)


@pytest.mark.parametrize("fast", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fname", sorted(llvm_math.FUNCTIONS))
def test_function_is_within_ulp_bound_over_the_whole_range(fname, dtype, fast):
    x = sweep(dtype)
    want = reference(fname, x)
    for lanes in lane_counts(dtype):
        assert_close_ulp(apply(fname, dtype, lanes, x, fast), want, MAX_ULP[fname])


@pytest.mark.parametrize("fast", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_special_values_follow_c99(dtype, fast):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, -1.0], dtype)
    apply = functools.partial(globals()["apply"], fast=fast)
    for lanes in lane_counts(dtype):
        np.testing.assert_array_equal(apply("exp", dtype, lanes, x), [np.inf, 0, np.nan, 1, 1, np.exp(-1.0).astype(dtype)])
        np.testing.assert_array_equal(apply("log", dtype, lanes, x)[:5], [np.inf, np.nan, np.nan, -np.inf, -np.inf])
        assert np.isnan(apply("log", dtype, lanes, x)[5])
        np.testing.assert_array_equal(apply("tanh", dtype, lanes, x)[:5], [1, -1, np.nan, 0, -0.0])
        np.testing.assert_array_equal(apply("sigmoid", dtype, lanes, x)[:5], [1, 0, np.nan, 0.5, 0.5])


def test_float32_max_relative_error_is_below_3e_7():
    """The brief's bound, stated as relative error over normal-range results."""
    x = sweep("float32", seed=1)
    for fname in llvm_math.FUNCTIONS:
        want = reference(fname, x)
        got = apply(fname, "float32", llvm_math.vector_lanes(llvm_math.F32), x)
        normal = np.isfinite(want) & (np.abs(want) >= np.finfo(np.float32).tiny)
        rel = np.abs(got[normal].astype(np.float64) - want[normal]) / np.abs(want[normal])
        assert rel.max() < 3e-7, (fname, rel.max())


@settings(max_examples=examples(60))
@given(n=st.integers(0, 40), dtype=st.sampled_from(["float32", "float64"]),
       fname=st.sampled_from(sorted(llvm_math.FUNCTIONS)), seed=st.integers(0, 2**32 - 1),
       fast=st.sampled_from(MODES))
def test_vector_and_scalar_paths_agree_for_any_length(n, dtype, fname, seed, fast):
    """Lengths around the vector width exercise vector body + scalar tail. Identical results,
    except that the fast form's reciprocal estimate (512-bit float32 vectors only) may move a
    tanh/sigmoid result by up to 2 ulp."""
    x = np.random.default_rng(seed).uniform(-30, 30, n).astype(dtype)
    scalar, vector = (apply(fname, dtype, lanes, x, fast) for lanes in lane_counts(dtype))
    if fast and dtype == "float32" and fname in ("tanh", "sigmoid"):
        apart = np.abs(scalar.view(np.int32).astype(np.int64) - vector.view(np.int32))
        assert apart.size == 0 or apart.max() <= 2
    else:
        np.testing.assert_array_equal(scalar, vector)


def test_fast_form_flags_only_wide_float32_divisions():
    """The estimate flags appear on <16 x float> divisions and nowhere else."""
    for ty, flagged in ((vector_type(llvm_math.F32, 16), True), (llvm_math.F32, False),
                        (vector_type(llvm_math.F32, 8), False),
                        (vector_type(llvm_math.F64, 8), False)):
        for fname in ("tanh", "sigmoid"):
            module = ir.Module()
            f = ir.Function(module, ir.FunctionType(ty, [ty]), name="f")
            b = ir.IRBuilder(f.append_basic_block())
            b.ret(llvm_math.FUNCTIONS[fname](b, f.args[0], fast=True))
            text = str(module)
            assert ("fdiv ninf arcp contract" in text) == flagged, (fname, ty)
            assert "fast" not in text and "nnan" not in text and "afn" not in text


def test_vector_lanes_follow_cpu_features():
    assert llvm_math.vector_lanes(llvm_math.F32, "+avx,+avx512f") == 16
    assert llvm_math.vector_lanes(llvm_math.F64, "+avx,-avx512f") == 4
    assert llvm_math.vector_lanes(llvm_math.F32, "+sse2") == 4


# ---------------------------------------------------------------------------------------------
# the kernels' special forms: softmax's exp of x <= 0 and the tanh-GELU's gate

SPECIAL = {"exp_nonpositive": (llvm_math.exp_nonpositive, 1),
           "tanh_gate": (llvm_math.tanh_gate, 2)}


@functools.cache
def _special_library():
    return _compiled_maps("llvm_math_special_test", [
        ((fname, dtype, lanes), fn, elem, lanes, arity)
        for fname, (fn, arity) in SPECIAL.items() for dtype, elem in ELEM.items()
        for lanes in (1, llvm_math.vector_lanes(elem))])


def apply_special(fname, dtype, lanes, *args):
    _, fns = _special_library()
    args = [np.ascontiguousarray(a, dtype) for a in args]
    y = np.full_like(args[0], 12345)
    if y.size:
        fns[(fname, dtype, lanes)](*(ffi.from_buffer(a) for a in args), ffi.from_buffer(y), y.size)
    return y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_nonpositive_is_exp_within_2_ulp_and_0_below_its_range(dtype):
    """Every x <= 0 of the sweep: normal results within 2 ulp of e**x (Estrin's polynomial
    rounds a little differently from exp's Horner); from below -87
    (float32) / -708 (float64) exactly 0 (where exp gives subnormals); NaN stays NaN."""
    x = sweep(dtype)
    x = np.concatenate([x[~(x > 0)], np.array([-np.inf, -0.0, np.nan], dtype)])
    lo = -87.0 if dtype == "float32" else -708.0
    want = reference("exp", x)
    want[x < lo] = 0
    for lanes in lane_counts(dtype):
        got = apply_special("exp_nonpositive", dtype, lanes, x)
        assert_close_ulp(got, want, 2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tanh_gate_is_x_times_half_one_plus_tanh_within_3_ulp(dtype):
    """x (1 + tanh u) / 2 against the exact value over the gate's whole range (u from -50 to
    50, where it saturates on both sides) and the special values; -0 and NaN where the
    literal form gives them (x / inf with x = -inf is NaN, as -inf * 0 is)."""
    rng = np.random.default_rng(3)
    u = np.concatenate([rng.uniform(-50, 50, 40_000), rng.uniform(-2, 2, 40_000),
                        [np.inf, -np.inf, np.nan, 0.0, 3.0, -3.0, 1.0, -np.inf]]).astype(dtype)
    x = np.concatenate([rng.standard_normal(80_000) * 10,
                        [1.0, 2.0, -1.0, np.nan, np.inf, -np.inf, -np.inf, -np.inf]]).astype(dtype)
    with np.errstate(all="ignore"):
        xl, ul = x.astype(np.longdouble), u.astype(np.longdouble)
        want = (xl / (1 + np.exp(-2 * ul))).astype(dtype)
    for lanes in lane_counts(dtype):
        got = apply_special("tanh_gate", dtype, lanes, x, u)
        tiny = np.abs(want) < np.finfo(dtype).tiny * 1e6     # underflowing gates: ~0 either way
        np.testing.assert_allclose(got[tiny], want[tiny], atol=np.finfo(dtype).tiny * 1e7)
        assert_close_ulp(got[~tiny], want[~tiny], 3)
    np.testing.assert_array_equal(got[-8:],
                                  [1, 0, np.nan, np.nan, np.inf, -np.inf, -np.inf, np.nan])
    assert np.signbit(apply_special("tanh_gate", dtype, 1, [-2.0], [-np.inf]))[0]     # -0
