"""Unique's four outputs (Y, indices, inverse_indices, counts) with sorted=1 and sorted=0
against numpy (np.unique; sorted=0 reorders by first occurrence), on a dynamic-length input
(length 0 and 1 included)."""
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


def compiled(ordered):
    node = helper.make_node("Unique", ["x"], OUTS, sorted=ordered)
    outs = [helper.make_tensor_value_info(n, M.F if n == "y" else M.I64, None) for n in OUTS]
    m = M.model([node], [helper.make_tensor_value_info("x", M.F, [None, 2])], outs, check=False)
    return VirtualMachine(build(from_onnx(m)))


VMS = {ordered: compiled(ordered) for ordered in (0, 1)}


def reference(x, ordered):
    y, first, inverse, counts = np.unique(x.reshape(-1), return_index=True, return_inverse=True,
                                          return_counts=True)
    if not ordered:
        order = np.argsort(first, kind="stable")
        y, first, counts = y[order], first[order], counts[order]
        inverse = np.argsort(order)[inverse]
    return y, first, inverse.reshape(-1), counts


@settings(max_examples=examples(20), deadline=None)
@given(rows=st.sampled_from([0, 1, 2, 5, 9]), ordered=st.sampled_from([0, 1]),
       seed=st.integers(0, 2**31))
def test_unique_outputs_match_numpy(rows, ordered, seed):
    x = np.random.default_rng(seed).integers(-3, 4, (rows, 2)).astype(np.float32)
    got = VMS[ordered].invoke("main", x)
    for g, w, name in zip(got, reference(x, ordered), OUTS):
        np.testing.assert_array_equal(g, w, err_msg=name)
        assert g.dtype == w.dtype, name
