"""nn shape functions vs numpy (tolerance: rtol 1e-5 for float32 products)."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.shape_funcs import lookup
from tests.shape_funcs.helpers import check_op
from tests.strategies import DIM, arrays, examples, laid_out, layouts, shapes
from dynvm.vm.errors import ShapeError

SETTINGS = settings(max_examples=examples(40))


@SETTINGS
@given(lead=shapes(max_rank=2), k=DIM, units=DIM)
def test_dense_matches_numpy(lead, k, units):
    data, weight = arrays(lead + (k,), "float32", 0), arrays((units, k), "float32", 1)
    check_op("dense", [data, weight], {}, data @ weight.T, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(m=DIM, k=DIM, n=DIM)
def test_matmul_matches_numpy(m, k, n):
    a, b = arrays((m, k), "float64", 0), arrays((k, n), "float64", 1)
    check_op("matmul", [a, b], {}, a @ b)
    a, b = arrays((m, k), "int64", 0), arrays((k, n), "int64", 1)
    check_op("matmul", [a, b], {}, a @ b)


@SETTINGS
@given(batch=st.sampled_from([(1, 1), (1, 3), (3, 1), (2, 2), (0, 0)]), m=DIM, k=DIM, n=DIM,
       ta=st.booleans(), tb=st.booleans())
def test_batch_matmul_matches_numpy(batch, m, k, n, ta, tb):
    a = arrays((batch[0], k, m) if ta else (batch[0], m, k), "float32", 0)
    b = arrays((batch[1], n, k) if tb else (batch[1], k, n), "float32", 1)
    ref = np.matmul(np.swapaxes(a, 1, 2) if ta else a, np.swapaxes(b, 1, 2) if tb else b)
    check_op("batch_matmul", [a, b], {"transpose_a": ta, "transpose_b": tb}, ref,
             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, shapes_, attrs, phrase", [
    ("dense", [(2, 3), (4, 5)], {}, "reduction dims"),
    ("matmul", [(2, 3), (4, 5)], {}, "reduction dims"),
    ("batch_matmul", [(2, 3, 4), (2, 5, 3)], {"transpose_b": True}, "reduction dims"),
    ("batch_matmul", [(2, 3, 4), (3, 5, 4)], {"transpose_b": True}, "cannot broadcast"),
    ("layer_norm", [(2, 3), (4,), (3,)], {"axis": -1}, "gamma length"),
])
def test_nn_mismatch_is_shape_error(name, shapes_, attrs, phrase):
    with pytest.raises(ShapeError, match=phrase):
        lookup(name).fn([np.zeros(s) for s in shapes_], attrs)


@SETTINGS
@given(shape=shapes(min_rank=1), data=st.data(), layout=layouts())
def test_softmax_matches_numpy(shape, data, layout):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = laid_out(arrays(shape, "float32", 0) * 10, layout)
    e = np.exp(x.astype(np.float64) - (x.max(axis=axis, keepdims=True) if x.size else 0))
    check_op("softmax", [x], {"axis": axis}, e / e.sum(axis=axis, keepdims=True),
             rtol=1e-5, atol=1e-6)


@SETTINGS
@given(shape=shapes(min_rank=1), data=st.data(), layout=layouts())
def test_layer_norm_matches_numpy(shape, data, layout):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = arrays(shape, "float64", 0, layout)
    gamma, beta = arrays((shape[axis],), "float64", 1), arrays((shape[axis],), "float64", 2)
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # an empty axis gives nan (no elements)
        mean = x.mean(axis=axis, keepdims=True)
        var = x.var(axis=axis, keepdims=True)
    ref = (x - mean) / np.sqrt(var + 1e-5) * gamma.reshape(bshape) + beta.reshape(bshape)
    check_op("layer_norm", [x, gamma, beta], {"axis": axis, "epsilon": 1e-5}, ref,
             rtol=1e-9, atol=1e-9)
