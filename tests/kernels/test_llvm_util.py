"""kernels.llvm_util, the IR toolkit of the kernel families: loops, branches, masked memory
access and casts, each compiled and run natively against a Python/numpy statement of the same.

Every function below is emitted into one module, compiled once per test process.
"""
import functools

import cffi
import numpy as np
import pytest
from llvmlite import ir

from dynvm.kernels import codelib
from dynvm.kernels.llvm_util import (F32, F64, I1, I32, I64, PTR, c64, cast, const, for_nest,
                                     for_range, if_then, is_compact, load, masked_load,
                                     masked_store, splat, store, tail_mask, vector_type)

ffi = cffi.FFI()
LANES = 8                     # the masked copy's vector width (any width works on any host)
VOID_FN = ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, I64])   # (in, out, a, b, c)
SIGNATURE = "void(*)(void *, void *, int64_t, int64_t, int64_t)"
EMITTERS = {}


def emitter(fn):
    """Register `fn(b, src, dst, a, b_, c)`: it emits the body of the test function `fn`."""
    EMITTERS[fn.__name__] = fn
    return fn


@emitter
def counted(b, src, dst, start, stop, step, rotated=True):
    """dst = [end, sum of i, trips] of for i in range(start, stop, step)."""
    def body(i, acc):
        return [b.add(acc[0], i), b.add(acc[1], c64(1))]
    end, (total, trips) = for_range(b, start, stop, body, step=step, carried=[c64(0), c64(0)],
                                    rotated=rotated)
    for k, v in enumerate((end, total, trips)):
        store(b, v, dst, c64(k))


EMITTERS["counted_top_tested"] = functools.partial(counted, rotated=False)
SHAPES = ("counted", "counted_top_tested")


@emitter
def counted_nonempty(b, src, dst, start, stop, _):
    """The same with nonempty=True (the caller promises start < stop)."""
    end, (total,) = for_range(b, start, stop, lambda i, acc: [b.add(acc[0], i)],
                              carried=[c64(0)], nonempty=True)
    store(b, end, dst, c64(0))
    store(b, total, dst, c64(1))


@emitter
def branches(b, src, dst, x, _, __):
    """dst = [x > 0 ? 2x : x (no else arm), x > 0 ? 1 : -1 (both arms), x < 0 (no values)]."""
    positive = b.icmp_signed(">", x, c64(0))
    (doubled,) = if_then(b, positive, lambda v: [b.mul(v[0], c64(2))], carried=[x])
    (sign,) = if_then(b, positive, lambda v: [c64(1)], lambda v: [c64(-1)], carried=[c64(0)])
    store(b, doubled, dst, c64(0))
    store(b, sign, dst, c64(1))
    store(b, c64(0), dst, c64(2))
    if_then(b, b.icmp_signed("<", x, c64(0)), lambda: store(b, c64(1), dst, c64(2)))


@emitter
def transpose(b, src, dst, m, n, _):
    """dst (n x m) = src (m x n).T through a two-level for_nest; returns the sum in dst[m*n]."""
    dims = [(m, [c64(1), n]), (n, [m, c64(1)])]       # offsets: [dst, src]

    def body(offsets, acc):
        x = load(b, src, offsets[1], I64)
        store(b, x, dst, offsets[0])
        return [b.add(acc[0], x)]
    (total,) = for_nest(b, dims, [c64(0), c64(0)], body, carried=[c64(0)])
    store(b, total, dst, b.mul(m, n))


@emitter
def masked_copy(b, src, dst, n, _, __):
    """Copy src[0:n] to dst in LANES-wide vectors, the last one masked; the masked-off lanes
    of each loaded vector read as -1 (passthru) and are not stored."""
    def chunk(i):
        mask = tail_mask(b, i, n, LANES)
        passthru = splat(b, const(F32, -1.0), LANES)
        v = masked_load(b, b.gep(src, [i], source_etype=F32), mask, passthru)
        masked_store(b, v, b.gep(dst, [i], source_etype=F32), mask)
        store(b, v, dst, b.add(c64(64), i), align=4)       # the whole vector, passthru lanes too
    for_range(b, 0, n, chunk, step=LANES)


@emitter
def cast_f64_i32(b, src, dst, n, _, __):
    for_range(b, 0, n, lambda i: store(b, cast(b, load(b, src, i, F64), "float64", "int32"),
                                       dst, i))


@emitter
def cast_f32_bool(b, src, dst, n, _, __):
    """numpy truthiness stored as bytes (NaN is True)."""
    def body(i):
        t = cast(b, load(b, src, i, F32), "float32", "bool")
        store(b, b.zext(t, ir.IntType(8)), dst, i)
    for_range(b, 0, n, body)


@emitter
def compact(b, src, dst, empty_ok, _, __):
    """src = [e0, e1, s0, s1]: dst[0] = is_compact of that rank-2 layout."""
    ext = [load(b, src, c64(k), I64) for k in (0, 1)]
    strides = [load(b, src, c64(k), I64) for k in (2, 3)]
    yes = if_then(b, b.icmp_signed("!=", empty_ok, c64(0)),
                  lambda v: [is_compact(b, ext, strides)],
                  lambda v: [is_compact(b, ext, strides, empty_ok=False)],
                  carried=[const(I1, 0)])[0]
    store(b, b.zext(yes, I64), dst, c64(0))


@functools.cache
def _library():
    target = codelib.host_target()
    module = ir.Module("llvm_util_test")
    module.triple = target["triple"]
    for name, emit in EMITTERS.items():
        fn = ir.Function(module, VOID_FN, name=name)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        emit(b, *fn.args)
        b.ret_void()
    lib = codelib.CodeLibrary(str(module), codelib.compile_ir(str(module), target), target)
    return lib, {name: ffi.cast(SIGNATURE, lib.address(name)) for name in EMITTERS}


def run(name, src, dst, a=0, b=0, c=0):
    _, fns = _library()
    fns[name](ffi.from_buffer(src), ffi.from_buffer(dst), a, b, c)
    return dst


def counted_loop(shape, start, stop, step):
    return run(shape, np.zeros(1), np.zeros(3, np.int64), start, stop, step)


# ---------------------------------------------------------------------------------------------
# for_range


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("start, stop, step", [(0, 10, 1), (2, 7, 1), (0, 10, 3), (-4, 5, 2),
                                               (0, 1, 1), (6, 7, 5)])
def test_for_range_carries_values_and_ends_at_the_first_index_past_stop(shape, start, stop, step):
    indices = list(range(start, stop, step))
    want = [indices[-1] + step, sum(indices), len(indices)]
    assert counted_loop(shape, start, stop, step).tolist() == want


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("start, stop", [(0, 0), (5, 5), (5, 3), (0, -1)])
def test_for_range_with_zero_trips_returns_start_and_the_initial_values(shape, start, stop):
    assert counted_loop(shape, start, stop, 1).tolist() == [start, 0, 0]


@pytest.mark.parametrize("start, stop", [(0, 1), (3, 4), (0, 9)])
def test_for_range_nonempty_runs_the_same_trips_without_the_first_test(start, stop):
    got = run("counted_nonempty", np.zeros(1), np.zeros(2, np.int64), start, stop)
    assert got.tolist() == [stop, sum(range(start, stop))]


def test_for_range_rejects_a_body_returning_the_wrong_number_of_values():
    fn = ir.Function(ir.Module(), ir.FunctionType(ir.VoidType(), []), name="f")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with pytest.raises(ValueError, match="returned 1 values for 2 carried"):
        for_range(b, 0, 4, lambda i, acc: [i], carried=[c64(0), c64(0)])


def test_loop_hints_become_llvm_loop_metadata_only_when_asked_for():
    def ir_of(**hints):
        module = ir.Module()
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64]), name="f")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        for_range(b, 0, fn.args[0], lambda i: None, **hints)
        b.ret_void()
        return str(module)
    assert "llvm.loop" not in ir_of()
    both = ir_of(vectorize=False, unroll=False)
    assert '!"llvm.loop.vectorize.width", i32 1' in both and "llvm.loop.unroll.disable" in both
    only_unroll = ir_of(unroll=False)
    assert "llvm.loop.unroll.disable" in only_unroll and "vectorize" not in only_unroll


# ---------------------------------------------------------------------------------------------
# if_then, for_nest


@pytest.mark.parametrize("x", [-3, 0, 1, 7])
def test_if_then_merges_values_from_one_or_two_arms(x):
    got = run("branches", np.zeros(1), np.zeros(3, np.int64), x)
    assert got.tolist() == [2 * x if x > 0 else x, 1 if x > 0 else -1, int(x < 0)]


@pytest.mark.parametrize("m, n", [(3, 4), (1, 5), (4, 1), (0, 3), (3, 0)])
def test_for_nest_advances_each_offset_by_its_own_strides(m, n):
    src = np.arange(m * n, dtype=np.int64).reshape(m, n) * 3 + 1
    got = run("transpose", src, np.zeros(m * n + 1, np.int64), m, n)
    np.testing.assert_array_equal(got[:-1].reshape(n, m), src.T)
    assert got[-1] == src.sum()


# ---------------------------------------------------------------------------------------------
# masked memory access


@pytest.mark.parametrize("n", [0, 1, LANES - 1, LANES, LANES + 1, 2 * LANES + 3])
def test_masked_tail_loads_and_stores_touch_only_the_elements_below_n(n):
    src = np.arange(1, 2 * LANES + 4, dtype=np.float32)
    dst = np.full(64 + 3 * LANES, 99.0, np.float32)
    run("masked_copy", src, dst, n)
    np.testing.assert_array_equal(dst[:n], src[:n])
    assert (dst[n:64] == 99.0).all()                 # the masked store wrote nothing past n
    chunks = -(-n // LANES) * LANES
    loaded = dst[64:64 + chunks]
    np.testing.assert_array_equal(loaded[:n], src[:n])
    assert (loaded[n:] == -1.0).all()                # masked-off lanes take the passthru


# ---------------------------------------------------------------------------------------------
# dtype casts and layouts


def test_cast_float_to_int_truncates_and_saturates_with_nan_as_zero():
    x = np.array([-3.7, 2.9, 0.0, np.nan, 1e20, -1e20, np.inf], np.float64)
    got = run("cast_f64_i32", x, np.zeros(x.size, np.int32), x.size)
    assert got.tolist() == [-3, 2, 0, 0, 2**31 - 1, -2**31, 2**31 - 1]


def test_cast_to_bool_is_numpy_truthiness():
    x = np.array([0.0, -0.0, 1.5, np.nan, -np.inf], np.float32)
    got = run("cast_f32_bool", x, np.zeros(x.size, np.uint8), x.size)
    np.testing.assert_array_equal(got.astype(bool), x.astype(bool))


@pytest.mark.parametrize("layout, compact, compact_if_empty_ok", [
    ((3, 4, 4, 1), True, True),
    ((3, 4, 1, 3), False, False),
    ((3, 1, 1, 99), True, True),         # extent-1 dims do not count
    ((0, 4, 99, 99), False, True),       # empty: compact only when empty_ok
])
def test_is_compact_ignores_unit_dims_and_optionally_empty_arrays(layout, compact,
                                                                   compact_if_empty_ok):
    src = np.array(layout, np.int64)
    assert run("compact", src, np.zeros(1, np.int64), 0)[0] == compact
    assert run("compact", src, np.zeros(1, np.int64), 1)[0] == compact_if_empty_ok


def test_splat_of_one_lane_is_the_scalar_itself():
    fn = ir.Function(ir.Module(), ir.FunctionType(ir.VoidType(), [I32]), name="f")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    assert splat(b, fn.args[0], 1) is fn.args[0]
    assert splat(b, fn.args[0], 4).type == vector_type(I32, 4)
