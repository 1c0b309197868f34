"""The tests' numpy reference kernels vs direct numpy: they write into preallocated outputs, accept
non-contiguous inputs, follow the kernel contract's integer rules, and never broadcast a result
silently into a wrong-shaped output. Tolerance: exact for integers, rtol 1e-6 for floats."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.compiler.op import OPS
from tests.numpy_reference import REFERENCE_KERNELS
from tests.strategies import arrays, broadcastable_pair, examples
from dynvm.vm.errors import ShapeError

I32 = np.iinfo(np.int32)


def run(name, inputs, out_shape, out_dtype, attrs=None):
    out = np.full(out_shape, 99, out_dtype)
    REFERENCE_KERNELS[name](inputs, [out], attrs or {})
    return out


def noncontiguous(a):
    """The same values as `a` in a strided (every other element) layout."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a.copy()
    big = np.empty(tuple(2 * d for d in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def test_every_op_with_a_kernel_has_a_numpy_reference():
    for name, opdef in OPS.items():
        if opdef.kernel == "compiled":
            assert name in REFERENCE_KERNELS, name


FLOAT_BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
                "divide": np.divide, "maximum": np.maximum, "minimum": np.minimum}


@settings(max_examples=examples(40))
@given(pair=broadcastable_pair(), name=st.sampled_from(sorted(FLOAT_BINARY)),
       dtype=st.sampled_from(["float32", "float64"]), strided=st.booleans())
def test_float_binary_kernels_broadcast_like_numpy(pair, name, dtype, strided):
    x, y = arrays(pair[0], dtype, 0), arrays(pair[1], dtype, 1)
    if strided:
        x, y = noncontiguous(x), noncontiguous(y)
    expected = FLOAT_BINARY[name](x, y)
    np.testing.assert_allclose(run(name, [x, y], expected.shape, dtype), expected, rtol=1e-6)


@settings(max_examples=examples(30))
@given(pair=broadcastable_pair(), name=st.sampled_from(["less", "greater", "less_equal", "greater_equal", "equal"]))
def test_comparisons_give_bool(pair, name):
    x, y = arrays(pair[0], "int64", 0), arrays(pair[1], "int64", 1)
    expected = getattr(np, name)(x, y)
    np.testing.assert_array_equal(run(name, [x, y], expected.shape, np.bool_), expected)


def test_logical_and():
    x = np.array([True, True, False, False])
    y = np.array([True, False, True, False])
    np.testing.assert_array_equal(run("logical_and", [x, y], (4,), bool), x & y)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_divide_truncates_and_never_traps(dtype):
    info = np.iinfo(dtype)
    x = np.array([7, -7, 7, -7, 5, 0, info.min, info.min], dtype)
    y = np.array([2, 2, -2, -2, 0, 0, -1, 1], dtype)
    expected = np.array([3, -3, -3, 3, 0, 0, info.min, info.min], dtype)
    np.testing.assert_array_equal(run("divide", [x, y], (8,), dtype), expected)


def test_integer_power_with_negative_exponent_truncates():
    x = np.array([2, 3, 1, -1, -1, 0, 5], np.int64)
    y = np.array([3, -1, -5, -3, -2, -1, 0], np.int64)
    np.testing.assert_array_equal(run("power", [x, y], (7,), np.int64), [8, 0, 1, -1, 1, 0, 1])


def test_float_power_and_divide_by_zero_follow_ieee():
    x, y = np.array([2.0, 1.0, -1.0, 0.0], np.float32), np.array([0.5, 0.0, 0.0, 0.0], np.float32)
    out = run("divide", [x, y], (4,), np.float32)
    assert out[0] == 4.0 and np.isposinf(out[1]) and np.isneginf(out[2]) and np.isnan(out[3])
    np.testing.assert_allclose(run("power", [x, y], (4,), np.float32), np.power(x, y))


UNARY = {"negative": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh,
         "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "relu": lambda v: np.maximum(v, 0)}


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 5), (2, 1, 7)])
def test_unary_float_kernels(name, shape):
    x = np.abs(arrays(shape, "float32", 3)) + 0.1
    x = noncontiguous(x) if shape else x
    np.testing.assert_allclose(run(name, [x], shape, np.float32), UNARY[name](x), rtol=1e-6)


def test_sigmoid_saturates_without_nan():
    out = run("sigmoid", [np.array([-1000.0, 0.0, 1000.0], np.float32)], (3,), np.float32)
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0])


def test_relu_and_negative_on_integers_keep_dtype():
    x = np.array([-3, 0, 4], np.int32)
    np.testing.assert_array_equal(run("relu", [x], (3,), np.int32), [0, 0, 4])
    np.testing.assert_array_equal(run("negative", [x], (3,), np.int32), [3, 0, -4])


def test_where_and_cast():
    c = np.array([[True], [False]])
    x, y = np.array([1.0, 2.0], np.float32), np.float32(-1.0) * np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(run("where", [c, x, y], (2, 2), np.float32),
                                  np.where(c, x, y))
    out = run("cast", [np.array([1.9, -1.9, 0.0])], (3,), np.int32, {"dtype": "int32"})
    np.testing.assert_array_equal(out, [1, -1, 0])
    out = run("cast", [np.array([0, 2, -1])], (3,), np.bool_, {"dtype": "bool"})
    np.testing.assert_array_equal(out, [False, True, True])


def test_elementwise_result_that_does_not_fit_the_output_is_shape_error():
    with pytest.raises(ShapeError, match="cannot broadcast result"):
        run("add", [np.ones(3), np.ones(3)], (4,), np.float64)


def test_kernels_write_into_the_given_output_even_if_strided():
    big = np.zeros((4, 6), np.float32)
    out = big[::2, ::2]
    REFERENCE_KERNELS["transpose"]([np.arange(6, dtype=np.float32).reshape(3, 2)], [out], {"axes": None})
    np.testing.assert_array_equal(big[::2, ::2], np.arange(6).reshape(3, 2).T)
    assert big[1].sum() == 0


def test_non_elementwise_result_of_wrong_shape_is_shape_error():
    with pytest.raises(ShapeError, match="result has shape"):
        run("transpose", [np.zeros((2, 3))], (2, 3), np.float64, {"axes": None})


def test_concatenate_takes_the_tuple_flattened():
    a, b, c = np.ones((2, 1)), np.zeros((2, 0)), noncontiguous(np.arange(4.0).reshape(2, 2))
    np.testing.assert_array_equal(run("concatenate", [a, b, c], (2, 3), np.float64, {"axis": -1}),
                                  np.concatenate([a, b, c], axis=1))


def test_split_writes_every_output():
    x = np.arange(10)
    outs = [np.empty(s, np.int64) for s in [(3,), (4,), (3,)]]
    REFERENCE_KERNELS["split"]([x], outs, {"indices_or_sections": [3, 7], "axis": 0})
    for out, ref in zip(outs, np.split(x, [3, 7])):
        np.testing.assert_array_equal(out, ref)


def test_strided_slice_negative_steps_and_clamping():
    x = np.arange(24).reshape(4, 6)
    attrs = {"begin": [10, -1], "end": [-100, 0], "strides": [-1, -2], "axes": None}
    ref = x[10:-100:-1, -1:0:-2]
    np.testing.assert_array_equal(run("strided_slice", [x], ref.shape, np.int64, attrs), ref)


@pytest.mark.parametrize("mode", ["clip", "wrap"])
def test_take_out_of_range_indices_clip_or_wrap(mode):
    x = np.arange(12.0).reshape(3, 4)
    idx = np.array([[-5, 0], [3, 100]], np.int32)
    ref = np.take(x, idx, axis=1, mode=mode)
    out = run("take", [x, idx], ref.shape, np.float64, {"axis": 1, "mode": mode})
    np.testing.assert_array_equal(out, ref)
    ref = np.take(x.ravel(), idx, mode=mode)
    np.testing.assert_array_equal(run("take", [x, idx], (2, 2), np.float64,
                                      {"axis": None, "mode": mode}), ref)


def test_take_from_empty_axis_is_shape_error():
    with pytest.raises(ShapeError, match="empty axis"):
        run("take", [np.zeros((0,)), np.array([1])], (1,), np.float64, {"axis": 0, "mode": "wrap"})


def test_broadcast_to_and_its_mismatch():
    x = np.array([[1], [2]], np.int32)
    np.testing.assert_array_equal(run("broadcast_to", [x], (3, 2, 4), np.int32,
                                      {"shape": [3, 2, 4]}), np.broadcast_to(x, (3, 2, 4)))
    with pytest.raises(ShapeError, match="cannot broadcast"):
        run("broadcast_to", [np.zeros(3)], (4,), np.float64, {"shape": [4]})


@pytest.mark.parametrize("name", ["zeros", "ones", "dyn.zeros", "dyn.ones"])
def test_fills(name):
    inputs = [np.array([2, 3])] if name.startswith("dyn") else []
    out = run(name, inputs, (2, 3), np.int32, {"shape": [2, 3], "dtype": "int32"})
    np.testing.assert_array_equal(out, np.full((2, 3), 1 if "ones" in name else 0))


def test_full_casts_the_fill_value_to_the_output_dtype():
    out = run("full", [np.array(2.7)], (2,), np.int64, {"shape": [2], "dtype": "int64"})
    np.testing.assert_array_equal(out, [2, 2])
    out = run("dyn.full", [np.array(True), np.array([3])], (3,), np.float32, {"dtype": "float32"})
    np.testing.assert_array_equal(out, [1.0, 1.0, 1.0])


def test_arange_fills_the_preallocated_length():
    args = [np.array(v, np.int32) for v in (10, -3, -4)]
    np.testing.assert_array_equal(run("arange", args, (4,), np.int64, {"dtype": "int64"}),
                                  np.arange(10, -3, -4))
    args = [np.array(v, np.float32) for v in (0.0, 1.0, 0.1)]
    np.testing.assert_allclose(run("arange", args, (10,), np.float32, {"dtype": "float32"}),
                               np.arange(0, 1, np.float32(0.1)), rtol=1e-6, atol=1e-7)


def test_argwhere_and_shape_of():
    c = np.array([[0, 2], [3, 0]], np.float32)
    np.testing.assert_array_equal(run("argwhere", [c], (2, 2), np.int64), np.argwhere(c))
    np.testing.assert_array_equal(run("shape_of", [np.zeros((4, 0, 2))], (3,), np.int64), [4, 0, 2])


def test_reshape_family_references_relabel_dims():
    x = noncontiguous(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(run("reshape", [x], (3, 2), np.float64, {"newshape": [3, -1]}),
                                  x.reshape(3, 2))
    np.testing.assert_array_equal(run("dyn.reshape", [x, np.array([0, 1, -1])], (2, 1, 3),
                                      np.float64), x.reshape(2, 1, 3))
    with pytest.raises(ShapeError, match="elements"):
        run("squeeze", [x], (5,), np.float64, {"axis": None})


def test_reductions_cast_to_the_output_dtype():
    x = np.array([[I32.max, 1], [-7, 2]], np.int32)
    attrs = {"axis": 1, "keepdims": False, "exclude": False}
    np.testing.assert_array_equal(run("sum", [x], (2,), np.int64, attrs), [I32.max + 1, -5])
    np.testing.assert_array_equal(run("mean", [x], (2,), np.int32, attrs), [I32.max // 2 + 1, -2])
    np.testing.assert_array_equal(run("max", [noncontiguous(x)], (2,), np.int32, attrs), [I32.max, 2])
    np.testing.assert_array_equal(run("argmax", [x], (2,), np.int64, attrs), [0, 1])


def test_float_mean_of_nothing_is_nan():
    attrs = {"axis": 0, "keepdims": True, "exclude": False}
    assert np.isnan(run("mean", [np.zeros((0, 2))], (1, 2), np.float32, attrs)).all()


def test_matrix_products():
    rng = np.random.default_rng(0)
    d, w = rng.standard_normal((2, 3, 5)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(run("dense", [d, w], (2, 3, 4), np.float32), d @ w.T, rtol=1e-5)
    a, b = rng.integers(-5, 5, (3, 4)), rng.integers(-5, 5, (4, 2))
    np.testing.assert_array_equal(run("matmul", [a, b], (3, 2), np.int64), a @ b)
    a, b = rng.standard_normal((1, 3, 4)), rng.standard_normal((2, 5, 4))
    np.testing.assert_allclose(run("batch_matmul", [a, b], (2, 3, 5), np.float64,
                                   {"transpose_a": False, "transpose_b": True}),
                               a @ np.swapaxes(b, 1, 2), rtol=1e-12)


def test_softmax_is_stable_for_large_inputs():
    x = np.array([[1000.0, 1000.0], [-1000.0, 0.0]], np.float32)
    out = run("softmax", [x], (2, 2), np.float32, {"axis": -1})
    np.testing.assert_allclose(out, [[0.5, 0.5], [0.0, 1.0]], atol=1e-7)


def test_layer_norm_matches_the_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    g, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    out = run("layer_norm", [x, g, b], (3, 4), np.float32, {"axis": 0, "epsilon": 1e-3})
    ref = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) * g[:, None] + b[:, None]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
