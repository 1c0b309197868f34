"""The "sort" kernel family (kernels/sort.py): sort, argsort, topk and unique agree exactly with
an order written for the tests (tests/references.py) and numpy's unique, and their shape
functions (shape_funcs/vision.py) with the reference's shapes.

Exact comparison (no tolerance): sorting moves values, it computes none. Drawn shapes include
0 and 1 extents, duplicates and NaN, and non-contiguous inputs and outputs. All kernels are
compiled once, in one module; each is called through the dispatcher and its only variant
(`S__generic`, the test hook).
"""
import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import load_kernels
from dynvm.kernels.abi import ERR_SHAPE
from dynvm.shape_funcs import lookup
from tests.kernels.support import raw_call, with_layout
from tests.references import sort_order
from dynvm.vm.errors import KernelError, ShapeError
from tests.strategies import examples

# (key, op, spec attrs, input (dtype, rank))
CASES = [
    ("sort_f32_last", "sort", {"axis": -1, "is_ascend": True}, ("float32", 2)),
    ("sort_f64_mid_desc", "sort", {"axis": 1, "is_ascend": False}, ("float64", 3)),
    ("sort_i32_desc", "sort", {"axis": 0, "is_ascend": False}, ("int32", 1)),
    ("argsort_f32_last", "argsort", {"axis": -1, "is_ascend": True, "dtype": "int64"},
     ("float32", 2)),
    ("argsort_f32_first_desc", "argsort", {"axis": 0, "is_ascend": False, "dtype": "int32"},
     ("float32", 2)),
    ("argsort_i64", "argsort", {"axis": -1, "is_ascend": True, "dtype": "int64"}, ("int64", 1)),
    ("topk_both", "topk", {"k": 3, "axis": -1, "ret_type": "both", "is_ascend": False,
                           "dtype": "int64"}, ("float32", 2)),
    ("topk_values_asc", "topk", {"k": 2, "axis": 0, "ret_type": "values", "is_ascend": True,
                                 "dtype": "int64"}, ("int32", 2)),
    ("topk_all_indices", "topk", {"k": 0, "axis": -1, "ret_type": "indices",
                                  "is_ascend": False, "dtype": "int32"}, ("float64", 1)),
    ("unique_counts", "unique", {"return_counts": True}, ("float32", 1)),
    ("unique_i64", "unique", {"return_counts": False}, ("int64", 1)),
]
CASE = {key: (op, attrs, sig) for key, op, attrs, sig in CASES}


def out_sig(op, attrs, dtype, rank):
    if op == "sort":
        return [(dtype, rank)]
    if op == "argsort":
        return [(attrs["dtype"], rank)]
    if op == "unique":
        return [(dtype, 1)] + ([("int64", 1)] if attrs["return_counts"] else [])
    kinds = {"both": [dtype, attrs["dtype"]], "values": [dtype], "indices": [attrs["dtype"]]}
    return [(dt, rank) for dt in kinds[attrs["ret_type"]]]


@functools.cache
def table():
    kb = KernelBuilder()
    index = {key: kb.add_compiled(op, "sort", {"op": op, **attrs}, [sig],
                                  out_sig(op, attrs, *sig)) for key, op, attrs, sig in CASES}
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}



def reference(key, x):
    """The expected outputs, from tests/references.py's order (numpy's unique for unique)."""
    op, attrs, _ = CASE[key]
    dtypes = [dt for dt, _ in out_sig(op, attrs, x.dtype.name, x.ndim)]
    if op == "unique":
        outs = np.unique(x, return_counts=True) if attrs["return_counts"] else [np.unique(x)]
        return [o.astype(dt) for o, dt in zip(outs, dtypes)]
    axis = attrs["axis"] % x.ndim
    order = sort_order(x, axis, not attrs["is_ascend"])
    if op == "topk":
        k = attrs["k"] if attrs["k"] >= 1 else x.shape[axis]
        order = np.take(order, np.arange(k), axis=axis)
    values = np.take_along_axis(x, order, axis)
    outs = {"sort": [values], "argsort": [order],
            "topk": {"both": [values, order], "values": [values],
                     "indices": [order]}.get(attrs.get("ret_type"))}[op]
    return [o.astype(dt) for o, dt in zip(outs, dtypes)]


def run(key, x, layout="c", variant=None):
    """Kernel outputs (allocated from the shape function, laid out as `layout`)."""
    op, attrs, _ = CASE[key]
    shapes = lookup(op)([x], attrs)
    dtypes = [dt for dt, _ in out_sig(op, attrs, x.dtype.name, x.ndim)]
    outs = [with_layout(np.full(s, 7, dt), layout) for s, dt in zip(shapes, dtypes)]
    assert raw_call(table()[key], [x] + outs, variant) == 0
    return outs


def check(key, x, layout="c"):
    want = reference(key, x)
    for variant in (None, "generic"):
        got = run(key, with_layout(x, layout), layout, variant)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def values(draw, shape, dtype):
    """Few distinct values (many ties), sometimes NaN for floats."""
    size = int(np.prod(shape))
    pool = [-2, -1, 0, 1, 3, 1000]
    floats = np.dtype(dtype).kind == "f"
    if floats:
        pool += [0.5, -0.25, float("inf"), float("-inf"), float("nan")]
    items = draw(st.lists(st.sampled_from(pool), min_size=size, max_size=size))
    return np.array(items, dtype=dtype).reshape(shape)


DIM = st.sampled_from([0, 1, 1, 2, 3, 5, 8, 17])
LAYOUTS = st.sampled_from(["c", "c", "step", "transpose", "reversed"])
SORT_KEYS = [k for k, op, _, _ in CASES if op != "unique"]


@settings(max_examples=examples(60))
@given(st.sampled_from(SORT_KEYS), st.data())
def test_sort_argsort_topk_match_reference_and_shape_function(key, data):
    op, attrs, (dtype, rank) = CASE[key]
    shape = tuple(data.draw(DIM) for _ in range(rank))
    if op == "topk":
        axis = attrs["axis"] % rank
        shape = shape[:axis] + (max(shape[axis], attrs["k"]),) + shape[axis + 1:]
    check(key, values(data.draw, shape, dtype), data.draw(LAYOUTS))


@settings(max_examples=examples(40))
@given(st.sampled_from(["unique_counts", "unique_i64"]), st.integers(0, 40), st.data())
def test_unique_matches_numpy_including_nan_and_empty(key, n, data):
    dtype = CASE[key][2][0]
    check(key, values(data.draw, (n,), dtype), data.draw(st.sampled_from(["c", "step",
                                                                          "reversed"])))


def test_descending_sort_puts_nan_first_and_keeps_ties_in_index_order():
    x = np.array([[1.0, np.nan, 3.0, 1.0, 3.0, np.nan]], np.float32)
    (idx,) = run("argsort_f32_last", x)
    np.testing.assert_array_equal(idx, [[0, 3, 2, 4, 1, 5]])
    (idx,) = run("argsort_f32_first_desc", x.T.copy())
    np.testing.assert_array_equal(idx[:, 0], [1, 5, 2, 4, 0, 3])


def test_topk_takes_largest_first_with_lower_index_on_ties():
    x = np.array([[5, 1, 5, 2, 5]], np.float32)
    values_out, idx = run("topk_both", x)
    np.testing.assert_array_equal(values_out, [[5, 5, 5]])
    np.testing.assert_array_equal(idx, [[0, 2, 4]])


def test_large_rows_sort_like_numpy():
    x = np.random.default_rng(0).standard_normal((3, 5000)).astype(np.float32)
    (got,) = run("sort_f32_last", x)
    np.testing.assert_array_equal(got, np.sort(x, axis=-1))
    (idx,) = run("argsort_f32_last", x)
    np.testing.assert_array_equal(idx, np.argsort(x, axis=-1, kind="stable"))


def test_topk_with_k_larger_than_axis_is_an_error():
    x = np.ones((2, 2), np.float32)
    with pytest.raises(ShapeError, match="k=3 is larger than axis 1"):
        lookup("topk")([x], CASE["topk_both"][1])
    outs = [np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64)]
    assert raw_call(table()["topk_both"], [x] + outs) & 0xFF == ERR_SHAPE
    with pytest.raises(KernelError, match="extents do not fit"):
        table()["topk_both"]([x], outs)


def test_wrong_output_extent_is_rejected_before_writing():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = np.full((2, 4), -9, np.float32)
    assert raw_call(table()["sort_f32_last"], [x, out], "generic") == ERR_SHAPE | 1 << 8 | 1 << 16
    assert (out == -9).all()


def test_unique_output_of_wrong_length_is_an_error_not_an_overflow():
    x = np.array([3, 1, 3, 2], np.int64)
    short = np.full(2, -9, np.int64)
    assert raw_call(table()["unique_i64"], [x, short]) & 0xFF == ERR_SHAPE
    buf = np.full(6, -9, np.int64)
    assert raw_call(table()["unique_i64"], [x, buf[:4]]) & 0xFF == ERR_SHAPE
    assert (buf[4:] == -9).all()


def test_build_rejects_bad_specs():
    kb = KernelBuilder()
    with pytest.raises(KernelError, match="index dtype must be int32 or int64"):
        kb.add_compiled("argsort", "sort", {"op": "argsort", "axis": 0, "is_ascend": True,
                                            "dtype": "float32"},
                        [("float32", 1)], [("float32", 1)])
    with pytest.raises(KernelError, match="out of range"):
        kb.add_compiled("sort", "sort", {"op": "sort", "axis": 2, "is_ascend": True},
                        [("float32", 2)], [("float32", 2)])
    with pytest.raises(KernelError, match="unique: input must be 1-D"):
        kb.add_compiled("unique", "sort", {"op": "unique", "return_counts": False},
                        [("float32", 2)], [("float32", 1)])
