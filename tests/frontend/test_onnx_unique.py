"""Unique's four outputs (Y, indices, inverse_indices, counts) with sorted=1 and sorted=0,
flattened or along an axis, against numpy (np.unique; sorted=0 reorders by first occurrence),
on inputs of dynamic length (0 and 1 included without axis)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("onnx")

from onnx import helper  # noqa: E402

from dynvm.compiler import build  # noqa: E402
from dynvm.frontend.onnx import from_onnx  # noqa: E402
from dynvm.vm import VirtualMachine  # noqa: E402
from tests.frontend import onnx_models as M  # noqa: E402
from tests.strategies import examples  # noqa: E402

OUTS = ["y", "indices", "inverse", "counts"]


def compiled(ordered, **axis):
    node = helper.make_node("Unique", ["x"], OUTS, sorted=ordered, **axis)
    outs = [helper.make_tensor_value_info(n, M.F if n == "y" else M.I64, None) for n in OUTS]
    m = M.model([node], [helper.make_tensor_value_info("x", M.F, [None, 2])], outs, check=False)
    return VirtualMachine(build(from_onnx(m)))


FLAT = compiled(0)      # sorted=1 without axis: ONNX's node cases (the conformance test)
AXIS_VMS = {(1, 0): compiled(1, axis=0), (0, -1): compiled(0, axis=-1)}


def reference(x, ordered, axis=None):
    y, first, inverse, counts = np.unique(x.reshape(-1) if axis is None else x, axis=axis,
                                          return_index=True, return_inverse=True,
                                          return_counts=True)
    if not ordered:
        order = np.argsort(first, kind="stable")
        y, first, counts = np.take(y, order, axis=axis or 0), first[order], counts[order]
        inverse = np.argsort(order)[inverse]
    return y, first, inverse.reshape(-1), counts


@settings(max_examples=examples(20), deadline=None)
@given(rows=st.sampled_from([0, 1, 2, 5, 9]), seed=st.integers(0, 2**31))
def test_unique_in_order_of_first_occurrence_matches_numpy(rows, seed):
    x = np.random.default_rng(seed).integers(-3, 4, (rows, 2)).astype(np.float32)
    got = FLAT.invoke("main", x)
    for g, w, name in zip(got, reference(x, 0), OUTS):
        np.testing.assert_array_equal(g, w, err_msg=name)
        assert g.dtype == w.dtype, name


@settings(max_examples=examples(10), deadline=None)
@given(rows=st.sampled_from([1, 2, 6]), key=st.sampled_from(sorted(AXIS_VMS)),
       seed=st.integers(0, 2**31))
def test_unique_slices_along_an_axis_match_numpy(rows, key, seed):
    """Values from {0, 1}: equal slices are common; slices differing only in a late column
    test the lexicographic order."""
    x = np.random.default_rng(seed).integers(0, 2, (rows, 2)).astype(np.float32)
    ordered, axis = key
    got = AXIS_VMS[key].invoke("main", x)
    for g, w, name in zip(got, reference(x, ordered, axis), OUTS):
        np.testing.assert_array_equal(g, w, err_msg=name)
