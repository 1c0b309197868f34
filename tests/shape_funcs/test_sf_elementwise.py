"""Elementwise shape functions: numpy broadcasting of the input shapes, checked against numpy."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.shape_funcs.helpers import run_op
from tests.strategies import arrays, broadcastable_pair, shapes
from dynvm.shape_funcs import lookup
from dynvm.vm.errors import ShapeError

BINARY = ["add", "subtract", "multiply", "divide", "power", "maximum", "minimum"]
COMPARE = ["less", "greater", "equal"]
UNARY = {"negative": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh,
         "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.maximum(x, 0)}


@settings(max_examples=60, deadline=None)
@given(pair=broadcastable_pair(), name=st.sampled_from(BINARY + COMPARE + ["logical_and"]),
       swap=st.booleans())
def test_binary_shape_is_numpy_broadcast(pair, name, swap):
    a, b = pair[::-1] if swap else pair
    dtype = "bool" if name == "logical_and" else "float32"
    x, y = arrays(a, dtype, 0), arrays(b, dtype, 1)
    out_dtype = "bool" if name in COMPARE + ["logical_and"] else dtype
    shapes_, outs = run_op(name, [x, y], {}, [out_dtype])
    assert shapes_ == [np.broadcast_shapes(a, b)] == [outs[0].shape]


@settings(max_examples=30, deadline=None)
@given(shape=shapes(), name=st.sampled_from(sorted(UNARY)))
def test_unary_shape_is_input_shape(shape, name):
    x = np.abs(arrays(shape, "float64", 2)) + 0.5
    shapes_, outs = run_op(name, [x], {}, ["float64"])
    assert shapes_ == [shape]
    np.testing.assert_allclose(outs[0], UNARY[name](x), rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(pair=broadcastable_pair(), cond_first=st.booleans())
def test_where_broadcasts_all_three(pair, cond_first):
    a, b = pair
    c = a if cond_first else b
    cond, x, y = arrays(c, "bool", 0), arrays(a, "int32", 1), arrays(b, "int32", 2)
    shapes_, outs = run_op("where", [cond, x, y], {}, ["int32"])
    np.testing.assert_array_equal(outs[0], np.where(cond, x, y))


def test_cast_keeps_the_shape():
    shapes_, outs = run_op("cast", [np.array([[1.7, -2.5]])], {"dtype": "int32"}, ["int32"])
    assert shapes_ == [(1, 2)]
    np.testing.assert_array_equal(outs[0], [[1, -2]])


@pytest.mark.parametrize("a, b", [((3,), (4,)), ((2, 3), (3, 2)), ((0,), (2,))])
def test_broadcast_mismatch_is_shape_error(a, b):
    with pytest.raises(ShapeError, match="cannot broadcast shapes"):
        lookup("add").fn([np.zeros(a), np.zeros(b)], {})
