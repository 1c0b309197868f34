"""The "softmax" and "layer_norm" kernel families (kernels/softmax.py) agree with the numpy
reference (tests/numpy_reference.py) in every variant ("last", "columns", "generic", called directly)
and through the dispatcher, for every axis position, float32/float64, shapes with 0, 1, prime
and vector-width +-1 extents, NaN/inf rows and non-contiguous arrays.

Tolerances: softmax rtol 1e-5 / atol 1e-7 (float32; exp within 1 ulp, 1/sum multiply) and
1e-12 / 1e-15 (float64). layer_norm: float32 accumulates in float32 while the reference uses
float64, so atol 2e-5 * (1 + |gamma| / sqrt(var + eps) * max|x - mean|) per row; float64 1e-10.
"""
import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.kernels import llvm_math
from tests.numpy_reference import REFERENCE_KERNELS
from dynvm.kernels.family import get_family
from dynvm.kernels.abi import ERR_LAYOUT, ERR_NARGS, ERR_SHAPE
from tests.kernels.test_reduce import NativeTable
from tests.strategies import examples, laid_out, layouts
from dynvm.vm.errors import KernelError

LANES = llvm_math.vector_lanes(llvm_math.F32)
DIMS = st.sampled_from([0, 1, 1, 2, 3, 5, 7, LANES - 1, LANES, LANES + 1, 37])

# (op, dtype, rank, axis)
CASES = [("softmax", "float32", 2, -1), ("softmax", "float64", 2, 1), ("softmax", "float32", 3, 1),
         ("softmax", "float64", 3, 0), ("softmax", "float32", 1, 0), ("softmax", "float32", 4, -2),
         ("layer_norm", "float32", 2, -1), ("layer_norm", "float64", 2, 1),
         ("layer_norm", "float32", 3, 1), ("layer_norm", "float64", 3, 0),
         ("layer_norm", "float64", 1, 0)]


def spec_of(op, axis, epsilon=1e-5):
    return {"op": op, "axis": axis} | ({"epsilon": epsilon} if op == "layer_norm" else {})


def signature(op, dtype, rank):
    inputs = [[dtype, rank]] + ([[dtype, 1], [dtype, 1]] if op == "layer_norm" else [])
    return inputs, [[dtype, rank]]


@functools.cache
def table():
    entries = []
    for case in CASES:
        op, dtype, rank, axis = case
        entries.append((case, op, spec_of(op, axis), *signature(op, dtype, rank)))
    return NativeTable(entries)


def make_inputs(rng, op, dtype, shape, axis, special):
    x = np.asarray(rng.standard_normal(shape) * 5, dtype)
    if special and x.size:
        flat = x.reshape(-1)
        picks = rng.integers(0, x.size, size=min(2, x.size))
        flat[picks] = rng.choice(np.array([np.nan, np.inf, -np.inf, 80.0, -80.0], dtype),
                                 size=len(picks))
    if op == "softmax":
        return [x]
    n = shape[axis]
    return [x, np.asarray(rng.standard_normal(n), dtype), np.asarray(rng.standard_normal(n), dtype)]


def expected(op, inputs, axis):
    want = np.zeros_like(inputs[0])
    REFERENCE_KERNELS[op](inputs, [want], spec_of(op, axis))
    return want


def assert_matches(op, got, want, inputs, axis):
    x = inputs[0]
    f32 = x.dtype == np.float32
    if op == "softmax":
        np.testing.assert_allclose(got, want, rtol=1e-5 if f32 else 1e-12,
                                   atol=1e-7 if f32 else 1e-15, equal_nan=True)
        return
    if not f32 or x.size == 0:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, equal_nan=True)
        return
    with np.errstate(all="ignore"):
        x64 = x.astype(np.float64)
        dev = np.abs(x64 - x64.mean(axis=axis, keepdims=True))
        std = np.sqrt(x64.var(axis=axis, keepdims=True) + 1e-5)
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        gamma = np.abs(inputs[1].astype(np.float64)).reshape(shape)
        scale = 1 + np.max(dev, axis=axis, keepdims=True) * gamma / std
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err[ok] <= 2e-5 * np.broadcast_to(scale, got.shape)[ok] + 1e-6), err.max()


def run_all_variants(case, shape, seed, special, layout="c"):
    """Every variant on data laid out as `layout` (tests/strategies.py; "broadcast" repeats the
    first row through a stride-0 view)."""
    op, dtype, rank, axis = case
    tab = table()
    rng = np.random.default_rng(seed)
    inputs = make_inputs(rng, op, dtype, shape, axis, special)
    inputs[0] = laid_out(inputs[0], layout)
    want = expected(op, inputs, axis)
    inner = int(np.prod(shape[axis % rank + 1:]))
    for variant in [None] + tab.variants(case):
        got = np.full(shape, 55, dtype)
        rc = tab.call(case, inputs + [got], variant)
        if variant == "last" and inner != 1 and got.size:
            assert rc == ERR_LAYOUT
            continue
        if variant in ("last", "columns") and not inputs[0].flags.c_contiguous:
            assert rc == ERR_LAYOUT, (variant, rc)           # compact arrays only
            continue
        assert rc == 0, (variant, rc)
        assert_matches(op, got, want, inputs, axis % rank)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
@settings(max_examples=examples(15))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), special=st.booleans(), layout=layouts())
def test_every_variant_matches_numpy(case, data, seed, special, layout):
    shape = tuple(data.draw(DIMS) for _ in range(case[2]))
    if np.prod(shape) > 5000:
        shape = tuple(min(d, 7) for d in shape)
    run_all_variants(case, shape, seed, special, layout)


def test_wide_rows_take_the_vector_paths():
    tab = table()
    case = ("softmax", "float32", 2, -1)
    run_all_variants(case, (4, 768), 1, False)
    tab.call(case, [np.ones((2, 768), np.float32), np.zeros((2, 768), np.float32)])
    assert tab.last_variant(case) == "last"
    case = ("layer_norm", "float32", 3, 1)
    run_all_variants(case, (2, 50, 3 * LANES + 1), 2, False)
    x = np.ones((2, 5, LANES), np.float32)
    tab.call(case, [x, np.ones(5, np.float32), np.ones(5, np.float32), np.zeros_like(x)])
    assert tab.last_variant(case) == "columns"


def test_softmax_of_rows_with_nan_or_inf_is_nan_like_numpy():
    case = ("softmax", "float32", 2, -1)
    x = np.zeros((4, 2 * LANES + 3), np.float32)
    x[0, 5], x[1, -1], x[2, :] = np.nan, np.inf, -np.inf
    x[3, 7] = 100.0                       # large but finite: exact 1 and 0s, no overflow
    want = expected("softmax", [x], -1)
    for variant in [None, "last", "generic"]:
        got = np.zeros_like(x)
        assert table().call(case, [x, got], variant) == 0
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[3], want[3], atol=1e-7)


def test_non_contiguous_arrays_run_generic():
    case = ("layer_norm", "float64", 2, 1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 40))[::2, ::-2]
    gamma = rng.standard_normal(40)[::2]
    beta = rng.standard_normal(20)
    out = np.zeros((3, 40))[:, ::2]
    assert table().call(case, [x, gamma, beta, out], "last") == ERR_LAYOUT
    assert table().call(case, [x, gamma, beta, out]) == 0
    assert table().last_variant(case) == "generic"
    np.testing.assert_allclose(out, expected("layer_norm", [x, gamma, beta], 1), rtol=1e-10, atol=1e-12)


def test_bad_arguments_give_error_codes():
    tab = table()
    case = ("layer_norm", "float32", 2, -1)
    x = np.ones((3, 4), np.float32)
    g = np.ones(4, np.float32)
    for variant in [None] + tab.variants(case):
        assert tab.call(case, [x, np.ones(5, np.float32), g, np.zeros_like(x)], variant) & 0xFF == ERR_SHAPE
        assert tab.call(case, [x, g, g, np.zeros((3, 5), np.float32)], variant) & 0xFF == ERR_SHAPE
        assert tab.call(case, [x, g, g, np.zeros_like(x)], variant, lambda t, n: (t, 3)) == ERR_NARGS


def test_bad_specs_are_rejected_at_build_time():
    check = get_family("softmax").check
    with pytest.raises(KernelError, match="float32 or float64"):
        check(spec_of("softmax", -1), [["int32", 2]], [["int32", 2]])
    with pytest.raises(KernelError, match="out of range"):
        check(spec_of("softmax", 2), [["float32", 2]], [["float32", 2]])
    with pytest.raises(KernelError, match="gamma and beta"):
        check(spec_of("layer_norm", -1), [["float32", 2], ["float32", 2], ["float32", 1]],
              [["float32", 2]])


def test_compiled_ops_run_through_the_vm():
    """sum/mean/max/argmax/softmax/layer_norm are compiled kernels on the VM path (Any dims)."""
    from dynvm.compiler import build, ir, op
    from dynvm.vm import VirtualMachine
    x = ir.var("x", ir.TensorType((ir.Any(), 24), "float32"))
    g = ir.var("g", ir.TensorType((24,), "float32"))
    b = ir.var("b", ir.TensorType((24,), "float32"))
    outs = [op.softmax(x), op.layer_norm(x, g, b), op.sum(x, axis=[1]), op.mean(x, axis=[0]),
            op.max(x), op.argmax(x, axis=[1], keepdims=True)]
    exe = build(ir.IRModule.from_expr(ir.Function([x, g, b], ir.Tuple(outs))))
    compiled = {k["op"] for k in exe.kernels["kernels"] if k["kind"] == "compiled"}
    assert {"reduce", "softmax", "layer_norm"} <= compiled
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((5, 24)).astype(np.float32)
    gv, bv = rng.standard_normal(24).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    got = VirtualMachine(exe).invoke("main", xv, gv, bv)
    e = np.exp(xv - xv.max(axis=1, keepdims=True))
    mean, var = xv.mean(axis=1, keepdims=True), xv.var(axis=1, keepdims=True)
    wants = [e / e.sum(axis=1, keepdims=True), (xv - mean) / np.sqrt(var + 1e-5) * gv + bv,
             xv.sum(axis=1), xv.mean(axis=0), xv.max(), xv.argmax(axis=1)[:, None]]
    for have, want in zip(got, wants):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)
