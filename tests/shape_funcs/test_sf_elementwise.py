"""Elementwise shape functions: numpy broadcasting of the input shapes, checked against numpy."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from tests.shape_funcs.helpers import run_op
from tests.strategies import arrays, broadcastable_pair, examples, laid_out, layouts, shapes
from dynvm.shape_funcs import lookup
from dynvm.vm.errors import ShapeError

BINARY = ["add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "fmod"]
COMPARE = ["less", "greater", "equal"]
UNARY = {"negative": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh,
         "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.maximum(x, 0)}


NUMPY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
         "power": np.power, "maximum": np.maximum, "minimum": np.minimum, "less": np.less,
         "greater": np.greater, "equal": np.equal, "logical_and": np.logical_and}


@example(pair=((0, 3), (3,)), name="add", swap=False, layout="broadcast")
@example(pair=((1,), (17,)), name="multiply", swap=True, layout="reversed")
@example(pair=((2, 17), (17,)), name="maximum", swap=False, layout="step")
@settings(max_examples=examples(60))
@given(pair=broadcastable_pair(), name=st.sampled_from(sorted(NUMPY)), swap=st.booleans(),
       layout=layouts())
def test_binary_shape_is_numpy_broadcast(pair, name, swap, layout):
    a, b = pair[::-1] if swap else pair
    dtype = "bool" if name == "logical_and" else "float32"
    x, y = arrays(a, dtype, 0, layout), arrays(b, dtype, 1, layout)
    if name in ("power", "divide"):
        x, y = np.abs(x) + 0.5, np.abs(y) + 0.5
    out_dtype = "bool" if name in COMPARE + ["logical_and"] else dtype
    shapes_, outs = run_op(name, [x, y], {}, [out_dtype])
    assert shapes_ == [np.broadcast_shapes(a, b)]
    np.testing.assert_allclose(outs[0], NUMPY[name](x, y), rtol=1e-6)


@settings(max_examples=examples(30))
@given(shape=shapes(), name=st.sampled_from(sorted(UNARY)), layout=layouts())
def test_unary_shape_is_input_shape(shape, name, layout):
    x = laid_out(np.abs(arrays(shape, "float64", 2)) + 0.5, layout)
    shapes_, outs = run_op(name, [x], {}, ["float64"])
    assert shapes_ == [shape]
    np.testing.assert_allclose(outs[0], UNARY[name](x), rtol=1e-12)


@settings(max_examples=examples(30))
@given(pair=broadcastable_pair(), cond_first=st.booleans(), layout=layouts())
def test_where_broadcasts_all_three(pair, cond_first, layout):
    a, b = pair
    c = a if cond_first else b
    cond, x, y = (arrays(s, dt, seed, layout) for s, dt, seed in
                  ((c, "bool", 0), (a, "int32", 1), (b, "int32", 2)))
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
