"""set_row (kernels/update.py): the kernel, its variants and its shape function agree with the
numpy reference on hypothesis-drawn shapes (size-0 and size-1 dims, any layout, indices out of
range clamp); an empty first axis is ERR_SHAPE / ShapeError; the output may be the data itself
(the in-place update of a native loop)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm import shape_funcs
from dynvm.kernels.abi import ERR_SHAPE
from tests.kernels.support import with_layout
from tests.kernels.test_transform import (DIM, LAYOUTS, cached, check_all_variants, kind,
                                          native_table, random_array, reference)
from dynvm.vm.errors import ShapeError
from tests.strategies import examples

CASES = [("float32", 3, "int64"), ("int64", 2, "int32"), ("bool", 1, "int64")]


@cached
def kernels():
    return native_table({(dt, rank, it): ("set_row", {"op": "set_row"},
                                          [[dt, rank], [it, 0], [dt, rank - 1]], [[dt, rank]])
                         for dt, rank, it in CASES})


@pytest.mark.parametrize("dtype,rank,index_dtype", CASES)
@settings(max_examples=examples(20))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), index=st.integers(-3, 8))
def test_kernel_matches_numpy(dtype, rank, index_dtype, data, seed, index):
    rng = np.random.default_rng(seed)
    shape = (data.draw(st.integers(1, 6)),) + tuple(data.draw(DIM) for _ in range(rank - 1))
    x = with_layout(random_array(rng, shape, dtype), data.draw(st.sampled_from(LAYOUTS)))
    row = with_layout(random_array(rng, shape[1:], dtype), data.draw(st.sampled_from(LAYOUTS)))
    ins = [x, np.array(index, index_dtype), row]
    want = reference("set_row", {}, ins)[0]
    expected = x.copy()
    expected[min(max(index, 0), shape[0] - 1)] = row
    np.testing.assert_array_equal(want, expected)
    check_all_variants(kernels()[(dtype, rank, index_dtype)], "set_row", {}, ins,
                       data.draw(st.sampled_from(LAYOUTS)), compact=False)


def test_in_place_when_the_output_is_the_data():
    k = kernels()[("float32", 3, "int64")]
    y = np.zeros((4, 2, 3), np.float32)
    for t in range(4):
        assert k([y, np.array(t), np.full((2, 3), t + 1, np.float32), y]) == 0
    np.testing.assert_array_equal(y[:, 0, 0], [1, 2, 3, 4])


def test_empty_first_axis_and_mismatched_row():
    k = kernels()[("float32", 3, "int64")]
    empty = np.zeros((0, 2, 3), np.float32)
    assert kind(k([empty, np.array(0), np.zeros((2, 3), np.float32), empty.copy()])) == ERR_SHAPE
    with pytest.raises(ShapeError, match="no row to replace"):
        shape_funcs.lookup("set_row").fn([empty, np.array(0), np.zeros((2, 3))], {})
    x = np.zeros((2, 2, 3), np.float32)
    assert kind(k([x, np.array(0), np.zeros((3, 2), np.float32), x.copy()])) == ERR_SHAPE
    with pytest.raises(ShapeError, match="does not fit a row"):
        shape_funcs.lookup("set_row").fn([x, np.array(0), np.zeros((3, 2))], {})
