"""cumulative (kernels/cumulative.py): sums and products along every axis, exclusive and reverse,
against the numpy reference on hypothesis-drawn shapes (size-0 and size-1 dims, any layout);
the output may be the input itself; mismatched extents are ERR_SHAPE."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.kernels.abi import ERR_SHAPE
from tests.kernels.support import with_layout
from tests.kernels.test_transform import (DIM, LAYOUTS, cached, check_all_variants, kind,
                                          native_table, random_array)
from tests.strategies import examples

CASES = [("float32", 2, 1, "sum", False, False), ("float64", 3, 0, "prod", True, False),
         ("int64", 1, 0, "sum", True, True), ("int32", 3, -1, "prod", False, True),
         ("float32", 3, 1, "sum", False, True)]


def attrs(case):
    _, _, axis, mode, exclusive, reverse = case
    return {"axis": axis, "mode": mode, "exclusive": exclusive, "reverse": reverse}


@cached
def kernels():
    return native_table({case: ("cumulative", attrs(case), [[case[0], case[1]]], [[case[0], case[1]]])
                         for case in CASES})


@pytest.mark.parametrize("case", CASES, ids=str)
@settings(max_examples=examples(15))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_kernel_matches_numpy(case, data, seed):
    dtype, rank = case[:2]
    x = random_array(np.random.default_rng(seed), tuple(data.draw(DIM) for _ in range(rank)), dtype)
    if case[3] == "prod" and dtype.startswith("int"):
        x = x % 3 - 1        # products that stay in range
    x = with_layout(x, data.draw(st.sampled_from(LAYOUTS)))
    check_all_variants(kernels()[case], "cumulative", attrs(case), [x],
                       data.draw(st.sampled_from(LAYOUTS)), compact=False)


def test_the_running_sum_matches_numpys_cumsum_and_may_be_in_place():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    k = kernels()[CASES[0]]
    assert k([x, x]) == 0
    np.testing.assert_array_equal(x, np.cumsum(np.arange(12, dtype=np.float32).reshape(3, 4), axis=1))
    assert kind(k([x, np.zeros((3, 5), np.float32)])) == ERR_SHAPE
