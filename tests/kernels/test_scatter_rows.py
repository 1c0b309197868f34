"""scatter_rows (kernels/update.py): every reduction and dtype against the numpy reference on
hypothesis-drawn shapes (size-0 and size-1 dims, repeated and negative positions, any layout);
a position out of range is ERR_VALUE, mismatched extents ERR_SHAPE / ShapeError; the output
may be the data itself."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm import shape_funcs
from dynvm.kernels.abi import ERR_SHAPE, ERR_VALUE
from dynvm.vm.errors import ShapeError
from tests.kernels.support import with_layout
from tests.kernels.test_transform import (DIM, LAYOUTS, cached, check_all_variants, kind,
                                          native_table, random_array)
from tests.strategies import examples

CASES = [("float32", "none"), ("float32", "add"), ("float64", "mul"), ("float32", "max"),
         ("int64", "min"), ("int32", "add"), ("bool", "none")]


@cached
def kernels():
    return native_table({(dt, red): ("scatter_rows", {"reduction": red},
                                     [[dt, 2], ["int64", 1], [dt, 2]], [[dt, 2]])
                         for dt, red in CASES})


@pytest.mark.parametrize("dtype,reduction", CASES)
@settings(max_examples=examples(15))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_kernel_matches_numpy(dtype, reduction, data, seed):
    rng = np.random.default_rng(seed)
    rows, width, n = data.draw(st.integers(1, 6)), data.draw(DIM), data.draw(DIM)
    x = with_layout(random_array(rng, (rows, width), dtype), data.draw(st.sampled_from(LAYOUTS)))
    updates = with_layout(random_array(rng, (n, width), dtype), data.draw(st.sampled_from(LAYOUTS)))
    positions = rng.integers(-rows, rows, size=n).astype(np.int64)   # repeats when n > rows
    if dtype.startswith("float") and n and width:
        updates[0, 0] = np.nan           # max/min propagate NaN as numpy's maximum/minimum
    attrs = {"reduction": reduction}
    check_all_variants(kernels()[(dtype, reduction)], "scatter_rows", attrs, [x, positions, updates],
                       data.draw(st.sampled_from(LAYOUTS)), compact=False)


def test_the_last_write_wins_and_reductions_accumulate_in_order():
    positions = np.array([1, -3, 1, 0], np.int64)
    updates = np.arange(8, dtype=np.float32).reshape(4, 2) + 1
    for reduction, want in (("none", [[7, 8], [5, 6], [0, 0]]),
                            ("add", [[10, 12], [6, 8], [0, 0]])):
        out = np.zeros((3, 2), np.float32)
        assert kernels()[("float32", reduction)]([np.zeros((3, 2), np.float32), positions, updates, out]) == 0
        np.testing.assert_array_equal(out, want)


def test_in_place_when_the_output_is_the_data():
    x = np.ones((3, 2), np.float32)
    k = kernels()[("float32", "add")]
    assert k([x, np.array([2, 2], np.int64), np.ones((2, 2), np.float32), x]) == 0
    np.testing.assert_array_equal(x, [[1, 1], [1, 1], [3, 3]])


def test_positions_out_of_range_and_mismatched_extents():
    k = kernels()[("float32", "none")]
    x, updates = np.zeros((3, 2), np.float32), np.ones((1, 2), np.float32)
    for p in (3, -4):
        rc = k([x, np.array([p], np.int64), updates, x.copy()])
        assert kind(rc) == ERR_VALUE and rc >> 8 & 0xFF == 1
    assert kind(k([x, np.array([0], np.int64), np.ones((1, 3), np.float32), x.copy()])) == ERR_SHAPE
    with pytest.raises(ShapeError, match="updates of shape"):
        shape_funcs.lookup("scatter_rows").fn([x, np.zeros(2, np.int64), np.ones((1, 2))], {})
