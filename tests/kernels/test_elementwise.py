"""Elementwise kernels agree with numpy for every op, dtype, broadcast and layout.

Tolerances: float32 rtol 1e-5, float64 rtol 1e-12 (transcendentals come from libm, numpy may use
its own SIMD versions), integers and bools exact. NaN positions must agree.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.kernels.support import (LAYOUTS, cached_table, empty_output, input_shape,
                                   kernel_table, output_shape, values, with_layout)
from tests.strategies import examples

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-6, "float64": 1e-14}

UNARY_REF = {
    "negative": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.maximum(x, x.dtype.type(0)),
}
# input ranges that keep results finite except where the test wants NaN (log/sqrt of < 0)
UNARY_RANGE = {"exp": (-20, 20), "log": (-0.5, 50), "sqrt": (-0.5, 50), "sigmoid": (-30, 30)}

ARITH_REF = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
             "maximum": np.maximum, "minimum": np.minimum, "power": np.power, "fmod": np.fmod}
COMPARE_REF = {"less": np.less, "greater": np.greater, "less_equal": np.less_equal,
               "greater_equal": np.greater_equal, "equal": np.equal, "logical_and": np.logical_and}
BOOL_ARITH = ("add", "multiply", "maximum", "minimum")
RANK_PAIRS = ((2, 2), (1, 2), (2, 0))


def assert_matches(got, want):
    dtype = got.dtype.name
    if dtype in RTOL:
        np.testing.assert_allclose(got, want.astype(dtype), rtol=RTOL[dtype], atol=ATOL[dtype],
                                   equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want.astype(dtype))


def binary_expr(op):
    return [op, ["in", 0], ["in", 1]]


@cached_table
def unary_kernels():
    return kernel_table({(op, dt): (op, [op, ["in", 0]], [(dt, 2)], (dt, 2))
                         for op in UNARY_REF for dt in FLOATS}
                        | {("relu", dt): ("relu", ["relu", ["in", 0]], [(dt, 2)], (dt, 2))
                           for dt in INTS}
                        | {("negative", dt): ("neg", ["negative", ["in", 0]], [(dt, 2)], (dt, 2))
                           for dt in INTS})


@cached_table
def binary_kernels(op):
    """All dtypes and rank pairs of one op (one table per op so xdist workers split the work)."""
    out_dtype = (lambda dt: "bool") if op in COMPARE_REF else (lambda dt: dt)
    dtypes = FLOATS + INTS + (("bool",) if op in BOOL_ARITH or op in COMPARE_REF else ())
    return kernel_table({
        (dt, ranks): (op, binary_expr(op), [(dt, ranks[0]), (dt, ranks[1])],
                      (out_dtype(dt), max(ranks)))
        for dt in dtypes for ranks in RANK_PAIRS})


def run(kernel, inputs, out_shape, out_dtype, out_layout="c"):
    out = empty_output(out_shape, out_dtype, out_layout)
    kernel(inputs, [out])
    return out


UNARY_CASES = [(op, dt) for op in UNARY_REF for dt in FLOATS] + [
    (op, dt) for op in ("relu", "negative") for dt in INTS]


@pytest.mark.parametrize("op, dtype", UNARY_CASES)
@settings(max_examples=examples(24))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_unary_op_matches_numpy(op, dtype, data, seed):
    shape = data.draw(output_shape(2))
    layout, out_layout = data.draw(st.sampled_from(LAYOUTS)), data.draw(st.sampled_from(LAYOUTS))
    low, high = UNARY_RANGE.get(op, (-5, 5))
    x = values(np.random.default_rng(seed), shape, dtype, low, high,
               specials=(np.nan, np.inf, -np.inf, 0.0) if dtype in FLOATS else ())
    got = run(unary_kernels()[(op, dtype)], [with_layout(x, layout)], shape, dtype, out_layout)
    with np.errstate(all="ignore"):
        assert_matches(got, UNARY_REF[op](x))


def reference_binary(op, a, b):
    with np.errstate(all="ignore"):
        if op == "divide" and a.dtype.kind == "i":
            return truncating_divide(a, b)
        if op == "power" and a.dtype.kind == "i":
            return np.power(a, np.abs(b))  # the test draws non-negative exponents
        return {**ARITH_REF, **COMPARE_REF, "divide": np.divide}[op](a, b)


def truncating_divide(a, b):
    """C-style division with x/0 -> 0 and INT_MIN/-1 -> INT_MIN (wrapping)."""
    a, b = np.broadcast_arrays(a, b)
    safe = np.where(b == 0, 1, b).astype(a.dtype)
    q = np.floor_divide(a, safe)
    rem = a - q * safe
    q = np.where((rem != 0) & ((a < 0) != (safe < 0)), q + 1, q)
    return np.where(b == 0, 0, q).astype(a.dtype)


def binary_operands(rng, op, dtype, shapes):
    if dtype in FLOATS:
        low, high = (0.1, 3.0) if op == "power" else (-5.0, 5.0)
        specials = (np.nan, 0.0, -0.0) if op in ("maximum", "minimum", "less", "less_equal", "greater_equal", "equal") else (0.0,)
        return [values(rng, s, dtype, low, high, specials) for s in shapes]
    if dtype == "bool":
        return [values(rng, s, dtype) for s in shapes]
    info = np.iinfo(dtype)
    if op == "power":
        base, exponent = values(rng, shapes[0], dtype), values(rng, shapes[1], dtype)
        return [np.asarray(base % 7 - 3), np.asarray(np.abs(exponent) % 12)]
    specials = (0, -1, 1, info.min, info.max)
    return [values(rng, s, dtype, specials=specials) for s in shapes]


@pytest.mark.parametrize("op", list(ARITH_REF) + ["divide"] + list(COMPARE_REF))
@settings(max_examples=examples(25))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_binary_op_matches_numpy_with_broadcasting(op, data, seed):
    ranks = data.draw(st.sampled_from(RANK_PAIRS))
    dtypes = FLOATS + INTS + (("bool",) if op in BOOL_ARITH or op in COMPARE_REF else ())
    dtype = data.draw(st.sampled_from(dtypes))
    out_shape = data.draw(output_shape(max(ranks)))
    shapes = [data.draw(input_shape(out_shape, r)) for r in ranks]
    a, b = binary_operands(np.random.default_rng(seed), op, dtype, shapes)
    layouts = [data.draw(st.sampled_from(LAYOUTS)) for _ in range(3)]
    out_dtype = "bool" if op in COMPARE_REF else dtype
    kernel = binary_kernels(op)[(dtype, ranks)]
    got = run(kernel, [with_layout(a, layouts[0]), with_layout(b, layouts[1])], out_shape,
              out_dtype, layouts[2])
    assert_matches(got, np.broadcast_to(reference_binary(op, a, b), out_shape))


@cached_table
def fused_kernels():
    chain = ["multiply",
             ["tanh", ["add", ["multiply", ["in", 0], ["in", 1]], ["in", 2]]],
             ["sigmoid", ["in", 0]]]
    return kernel_table({
        (dt, ranks): ("fused_chain", chain, [(dt, ranks[0]), (dt, ranks[1]), (dt, ranks[2])],
                      (dt, max(ranks)))
        for dt in FLOATS for ranks in ((4, 4, 4), (3, 2, 1), (0, 3, 0), (2, 4, 3), (1, 1, 1))})


@pytest.mark.parametrize("dtype", FLOATS)
@settings(max_examples=examples(40))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_fused_chain_matches_numpy_over_ranks_0_to_4(dtype, data, seed):
    ranks = data.draw(st.sampled_from(((4, 4, 4), (3, 2, 1), (0, 3, 0), (2, 4, 3), (1, 1, 1))))
    out_shape = data.draw(output_shape(max(ranks)))
    rng = np.random.default_rng(seed)
    xs = [values(rng, data.draw(input_shape(out_shape, r)), dtype) for r in ranks]
    views = [with_layout(x, data.draw(st.sampled_from(LAYOUTS))) for x in xs]
    got = run(fused_kernels()[(dtype, ranks)], views, out_shape, dtype,
              data.draw(st.sampled_from(LAYOUTS)))
    a, b, c = xs
    want = np.tanh(a * b + c) * (1 / (1 + np.exp(-a)))
    assert_matches(got, np.broadcast_to(want, out_shape))


def _gelu_forms(dt):
    """The tanh-GELU 0.5 * x * (1 + tanh(u)), u = 0.79788456 * (x + 0.044715 * x**3), in three
    spellings the emitter computes as x / (1 + e**(-2u))."""
    x = ["in", 0]
    k = lambda v: ["const", v, dt]  # noqa: E731
    u = ["multiply", k(0.7978845608), ["add", x, ["multiply", k(0.044715),
                                                  ["multiply", x, ["multiply", x, x]]]]]
    return {"half_x_first": ["multiply", ["multiply", k(0.5), x], ["add", k(1.0), ["tanh", u]]],
            "x_half_last": ["multiply", ["add", ["tanh", u], k(1.0)], ["multiply", x, k(0.5)]],
            "nested": ["multiply", x, ["multiply", k(0.5), ["add", k(1.0), ["tanh", u]]]]}


@cached_table
def gelu_kernels():
    return kernel_table({(dt, name): ("gelu", expr, [(dt, 2)], (dt, 2))
                         for dt in FLOATS for name, expr in _gelu_forms(dt).items()
                         if dt == "float32" or name == "nested"})


@pytest.mark.parametrize("dtype, form", [("float32", "half_x_first"), ("float32", "x_half_last"),
                                         ("float32", "nested"), ("float64", "nested")])
@settings(max_examples=examples(15))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_tanh_gelu_matches_numpy_in_every_spelling(dtype, form, data, seed):
    shape = data.draw(output_shape(2))
    x = values(np.random.default_rng(seed), shape, dtype, -8, 8,
               specials=(np.nan, np.inf, -np.inf, 0.0))
    layout, out_layout = data.draw(st.sampled_from(LAYOUTS)), data.draw(st.sampled_from(LAYOUTS))
    got = run(gelu_kernels()[(dtype, form)], [with_layout(x, layout)], shape, dtype, out_layout)
    with np.errstate(all="ignore"):
        x64 = x.astype(np.float64)
        want = 0.5 * x64 * (1 + np.tanh(0.7978845608 * (x64 + 0.044715 * x64 ** 3)))
    assert_matches(got, want)


def test_tanh_gate_pattern_is_exactly_half_x_one_plus_tanh():
    from dynvm.kernels.elementwise import _tanh_gate
    forms = _gelu_forms("float32")
    assert _tanh_gate(forms["nested"]) == (["in", 0], forms["nested"][2][2][2][1])
    k = lambda v: ["const", v, "float32"]  # noqa: E731
    t = ["tanh", ["in", 1]]
    for near_miss in (["multiply", ["multiply", k(0.5), ["in", 0]], ["add", k(2.0), t]],
                      ["multiply", ["multiply", k(0.25), ["in", 0]], ["add", k(1.0), t]],
                      ["multiply", ["in", 0], ["add", k(1.0), t]],
                      ["multiply", ["multiply", k(0.5), ["in", 0]], ["add", ["in", 2], t]]):
        assert _tanh_gate(near_miss) is None


def test_flat_vector_variant_runs_for_same_shape_compact_arrays():
    kernel = fused_kernels()[("float32", (1, 1, 1))]
    xs = [np.full(17, 0.5, np.float32) for _ in range(3)]
    out = np.empty(17, np.float32)
    kernel(xs, [out])
    assert kernel.last_variant == "vector"
    kernel([xs[0][::-1], xs[1], xs[2]], [out])
    assert kernel.last_variant == "strided"
    kernel([xs[0][:1], xs[1], xs[2]], [out])
    assert kernel.last_variant == "strided"
    assert kernel.variants == ["scalar", "vector_exact", "vector", "strided"]


def test_size_zero_output_writes_nothing_and_succeeds():
    """The empty output is a view at the start of a sentinel buffer: a kernel that ran its loop
    once (or wrote through the output's address) would overwrite a sentinel."""
    kernel = fused_kernels()[("float64", (3, 2, 1))]
    buffer = np.full((2, 4, 3), 7.0)
    out = buffer[:, :0, :]
    kernel([np.ones((2, 1, 3)), np.ones((0, 3)), np.ones(1)], [out])
    kernel([np.ones((2, 0, 3)), np.ones((0, 3)), np.ones(3)], [out])
    kernel([np.ones((2, 0, 3))[:, :, ::-1], np.ones((0, 6))[:, ::2], np.ones(1)], [out])
    np.testing.assert_array_equal(buffer, 7.0)


DTYPES = FLOATS + INTS + ("bool",)


@cached_table
def cast_kernels():
    return kernel_table({(src, dst): (f"cast_{src}_{dst}", ["cast", ["in", 0], dst], [(src, 1)],
                                      (dst, 1)) for src in DTYPES for dst in DTYPES})


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_cast_matches_numpy_astype(src, dst):
    rng = np.random.default_rng(0)
    x = values(rng, (33,), src, -1e4, 1e4)
    if src in FLOATS:
        x[:5] = [0.0, -0.0, 0.5, -0.75, 2.5]
    got = run(cast_kernels()[(src, dst)], [x], x.shape, dst)
    assert_matches(got, x.astype(dst))


def test_float_to_bool_cast_treats_nan_as_true():
    x = np.array([np.nan, 0.0, -0.0, 1e-30], np.float32)
    got = run(cast_kernels()[("float32", "bool")], [x], x.shape, "bool")
    np.testing.assert_array_equal(got, [True, False, False, True])


@cached_table
def misc_kernels():
    return kernel_table({
        "where": ("where", ["where", ["in", 0], ["in", 1], ["in", 2]],
                  [("bool", 1), ("float32", 2), ("float32", 0)], ("float32", 2)),
        "where_int_cond": ("where_i", ["where", ["in", 0], ["in", 1], ["const", -1, "int64"]],
                           [("int32", 2), ("int64", 2)], ("int64", 2)),
        "axpy": ("axpy", ["add", ["multiply", ["const", 2.0, "float32"], ["in", 0]], ["in", 1]],
                 [("float32", 1), ("float32", 1)], ("float32", 1)),
        "int_pow": ("ipow", ["power", ["in", 0], ["in", 1]], [("int32", 1), ("int32", 1)],
                    ("int32", 1)),
        "int_div": ("idiv", ["divide", ["in", 0], ["in", 1]], [("int64", 1), ("int64", 1)],
                    ("int64", 1)),
        "bool_const": ("bconst", ["logical_and", ["cast", ["in", 0], "bool"], ["const", True, "bool"]],
                       [("float64", 1)], ("bool", 1)),
    })


@settings(max_examples=examples(30))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_where_broadcasts_condition_and_scalar(data, seed):
    out_shape = data.draw(output_shape(2))
    rng = np.random.default_rng(seed)
    c = values(rng, data.draw(input_shape(out_shape, 1)), "bool")
    a = values(rng, data.draw(input_shape(out_shape, 2)), "float32")
    b = values(rng, (), "float32")
    got = run(misc_kernels()["where"], [with_layout(c, "reversed"), with_layout(a, "transpose"), b],
              out_shape, "float32")
    assert_matches(got, np.broadcast_to(np.where(c, a, b), out_shape))


def test_where_uses_truthiness_of_int_condition():
    c = np.array([[0, 3, -1]], np.int32)
    a = np.array([[10, 20, 30]], np.int64)
    got = run(misc_kernels()["where_int_cond"], [c, a], (1, 3), "int64")
    np.testing.assert_array_equal(got, [[-1, 20, 30]])


def test_constant_folds_into_axpy():
    x, y = np.arange(9, dtype=np.float32), np.ones(9, np.float32)
    got = run(misc_kernels()["axpy"], [x, y], (9,), "float32")
    np.testing.assert_array_equal(got, 2 * x + y)


def test_integer_divide_truncates_and_never_traps():
    lo = np.iinfo(np.int64).min
    a = np.array([7, -7, 7, -7, 5, lo, lo, 0], np.int64)
    b = np.array([2, 2, -2, -2, 0, -1, 1, 0], np.int64)
    got = run(misc_kernels()["int_div"], [a, b], a.shape, "int64")
    np.testing.assert_array_equal(got, [3, -3, -3, 3, 0, lo, lo, 0])


def test_integer_power_with_negative_exponent_truncates():
    a = np.array([2, 1, -1, -1, 0, 3, -2, 5], np.int32)
    b = np.array([-1, -5, -3, -2, -1, 0, 3, 13], np.int32)
    got = run(misc_kernels()["int_pow"], [a, b], a.shape, "int32")
    np.testing.assert_array_equal(got, [0, 1, -1, 1, 0, 1, -8, np.int32(5) ** np.int32(13)])


def test_logical_and_with_bool_constant_is_truthiness():
    x = np.array([0.0, np.nan, 2.0, -0.0])
    got = run(misc_kernels()["bool_const"], [x], x.shape, "bool")
    np.testing.assert_array_equal(got, [False, True, True, False])
